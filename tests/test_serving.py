"""`atomskill serve` on loopback: the metadata frame, actions equal to the in-process
policy with several clients batched together, error replies that name the field and keep
every connection usable, the token, limits and timeouts."""

import threading
import time
import urllib.request
import warnings

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from atomskill_jax.serving import codec
from tests import serving_helpers as sh

OPTIONS = {"max_skill_steps": 3}  # skills end every 3 steps: sampling runs in the server


@pytest.fixture(scope="module")
def served(exported_policy_dir):
    from atomskill_jax.serving import policy_source

    return policy_source.from_exported(exported_policy_dir)


def _server(served, **kwargs):
    from atomskill_jax.serving.server import PolicyServer, ServerThread

    kwargs.setdefault("max_batch", 4)
    kwargs.setdefault("options", OPTIONS)
    return ServerThread(PolicyServer(served, port=0, **kwargs))


@pytest.fixture(scope="module")
def server(served):
    with _server(served, max_message_bytes=64 * 1024) as url:
        yield url


def _connect(url, **kwargs):
    with warnings.catch_warnings():  # a raw connection the test closes itself
        warnings.simplefilter("ignore", DeprecationWarning)
        return connect(url, open_timeout=30, **kwargs)


def _raw(url, **kwargs):
    ws = _connect(url, max_size=None, **kwargs)
    meta = codec.decode(ws.recv(timeout=30))
    return ws, meta


def _ask(ws, frame):
    ws.send(frame)
    return codec.decode(ws.recv(timeout=60))


def test_metadata_frame_and_health(server, exported_policy_dir):
    import json
    import os

    ws, meta = _raw(server)
    ws.close()
    manifest = json.load(open(os.path.join(exported_policy_dir, "manifest.json")))
    assert meta["type"] == "metadata" and meta["protocol"] == 1
    assert meta["method"] == "atomskill" and meta["policy"] == "atomskill"
    assert meta["observation"] == {"state": {"dtype": "<f4", "shape": [39]},
                                   "proprio": {"dtype": "<f4", "shape": [4]},
                                   "language_embedding": {"dtype": "<f4", "shape": [384]}}
    assert meta["action"] == {"dim": 4, "space": "action"} and meta["chunk_length"] == 4
    assert meta["execute_steps"] == 1 and meta["control_hz"] == 80.0
    assert meta["params_sha256"] == manifest["files"]["params.safetensors"]
    assert len(meta["statistics_sha256"]) == 64
    assert meta["limits"]["max_message_bytes"] == 64 * 1024
    health = urllib.request.urlopen(server.replace("ws://", "http://") + "/healthz", timeout=10)
    assert health.status == 200 and health.read() == b"ok\n"


def test_clients_batched_together_get_the_in_process_actions(server, exported_policy_dir):
    """Three clients step in lockstep (their requests reach the batcher together); each
    gets the actions the exported policy computes for its episode in this process,
    including skill starts inside the batch."""
    from atomskill_client import PolicyClient

    steps, n = 7, 3
    episodes = [sh.episode(100 + i, steps) for i in range(n)]
    want = sh.reference_actions(exported_policy_dir, episodes, OPTIONS)
    got = np.zeros_like(want)
    replies = [[None] * steps for _ in range(n)]
    barrier = threading.Barrier(n)
    errors = []

    def run(i):
        try:
            with PolicyClient(server, recv_timeout=60) as client:
                client.reset(**sh.task(i))
                for t in range(steps):
                    barrier.wait(timeout=60)
                    replies[i][t] = client.infer(episodes[i][t], timestamp=float(t))
                    got[i, t] = replies[i][t]["actions"][0]
        except Exception as err:  # reported below with its thread
            errors.append((i, repr(err)))
            barrier.abort()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=300)
    assert not errors, errors
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    reply = replies[0][3]
    assert reply["id"] == 5 and reply["timestamp"] == 3.0  # ids: reset 1, infers 2..
    # The step cap of 3 ends the first skill after step 2; step 3 starts the next.
    assert replies[0][2]["skill"] == {"steps": 3, "starting": True}
    assert reply["skill"] == {"steps": 1, "starting": False}
    assert reply["chunk"].shape[1] == 4 and reply["keypose"].shape == (4,)
    assert set(reply["timing"]) == {"queue_ms", "infer_ms", "total_ms"}
    assert reply["timing"]["total_ms"] >= reply["timing"]["infer_ms"] > 0


def test_the_batcher_stacks_concurrent_calls(served):
    """Calls that wait together run as one batch; with batching off, one by one."""
    from atomskill_jax.policies.program import example_inputs
    from atomskill_jax.serving.batcher import Batcher

    for batching, most in ((True, 4), (False, 1)):
        batcher = Batcher(served.functions, served.inputs, max_batch=4, batching=batching)
        gate = threading.Event()
        slow = batcher.functions["decode"]

        def held(*a, _slow=slow):
            gate.wait(10)  # the first call holds the thread while the others queue
            return _slow(*a)

        batcher.functions["decode"] = held
        inputs = example_inputs(served.inputs["decode"], 1)
        results = []
        threads = [threading.Thread(target=lambda: results.append(
            batcher.call("decode", *inputs))) for _ in range(5)]
        for th in threads:
            th.start()
        time.sleep(0.5)
        gate.set()
        for th in threads:
            th.join(timeout=60)
        batcher.close()
        assert len(results) == 5 and batcher.calls == 5
        # First call alone, then the four that queued behind it stacked (or not).
        assert batcher.batches == (2 if batching else 5) and max(
            batcher.sizes) == most


def test_bad_requests_get_error_replies_naming_the_field(server):
    ws, meta = _raw(server)
    obs = sh.episode(0, 1)[0]
    bad = {"missing": ({k: v for k, v in obs.items() if k != "state"}, "observation.state"),
           "extra": (dict(obs, speed=np.zeros(1, np.float32)), "observation.speed"),
           "shape": (dict(obs, state=np.zeros(38, np.float32)), "observation.state"),
           "dtype": (dict(obs, proprio=obs["proprio"].astype(np.float64)), "observation.proprio"),
           "nan": (dict(obs, state=np.full(39, np.nan, np.float32)), "observation.state"),
           "not array": (dict(obs, state=[0.0] * 39), "observation.state")}
    reply = _ask(ws, sh.request("infer", 1, observation=obs))
    assert reply["code"] == "no_episode" and reply["id"] == 1
    assert _ask(ws, sh.request("reset", 2, task=sh.task(0))) == {"type": "reset", "id": 2}
    for i, (name, (observation, field)) in enumerate(bad.items()):
        reply = _ask(ws, sh.request("infer", 10 + i, observation=observation))
        assert reply["type"] == "error" and reply["code"] == "bad_request", name
        assert reply["field"] == field and reply["id"] == 10 + i, (name, reply)
    for frame, field in [(b"\xc1\xff garbage", None), ("a text frame", None),
                         (codec.encode([1, 2]), None),
                         (sh.request("fly", 3), "type"),
                         (sh.request("reset", 4, task={"layout": "x"}), "task.layout"),
                         (sh.request("reset", 5, task={"colour": "red"}), "task.colour"),
                         (codec.encode({"type": "infer", "id": [1], "observation": obs}), "id"),
                         (sh.request("infer", 6, observation=obs, timestamp="now"), "timestamp"),
                         (codec.encode({"type": "infer", "id": 7, "observation": {"state": {
                             "__ndarray__": 1, "dtype": "|O", "shape": [1], "data": b"x"}}}),
                          "observation.state"),
                         (codec.encode({"type": "infer", "id": 8, "observation": {"state": {
                             "__ndarray__": 1, "dtype": "<f4", "shape": [39], "data": b"x"}}}),
                          "observation.state")]:
        reply = _ask(ws, frame)
        assert reply["type"] == "error" and reply["code"] == "bad_request", (frame, reply)
        assert reply["field"] == field, (frame, reply)
        assert "Traceback" not in reply["message"]
    big = sh.request("infer", 9, observation=dict(obs, pad=np.zeros(20_000, np.float32)))
    reply = _ask(ws, big)
    assert reply["code"] == "too_large" and "exceeds the limit of 65536" in reply["message"]
    # After all that, the same connection still serves its episode.
    reply = _ask(ws, sh.request("infer", 11, observation=obs))
    assert reply["type"] == "action" and reply["actions"].shape == (1, 4)
    assert np.isfinite(reply["actions"]).all()
    with pytest.raises(ConnectionClosed) as closed:  # over 4x the limit: closed by websockets
        _ask(ws, sh.request("infer", 12, observation=dict(obs, pad=np.zeros(70_000, np.float32))))
    assert closed.value.rcvd.code == 1009


def test_an_internal_failure_is_an_error_reply_without_traceback(served):
    thread = _server(served)
    with thread as url:
        ws, _ = _raw(url)
        _ask(ws, sh.request("reset", 1, task=sh.task(0)))
        functions = thread.server.batcher.functions
        original = functions["sample_decode"]
        functions["sample_decode"] = lambda *a: 1 / 0
        reply = _ask(ws, sh.request("infer", 2, observation=sh.episode(0, 1)[0]))
        assert reply["code"] == "internal" and "ZeroDivision" not in reply["message"]
        functions["sample_decode"] = original
        reply = _ask(ws, sh.request("infer", 3, observation=sh.episode(0, 1)[0]))
        assert reply["type"] == "action"
        ws.close()


def test_a_token_guards_the_server(served):
    with _server(served, token="s3cret") as url:
        for headers in (None, {"Authorization": "Bearer wrong"}):
            ws = _connect(url, additional_headers=headers)
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=30)
            assert closed.value.rcvd.code == 1008
            assert closed.value.rcvd.reason.startswith("unauthorized: missing or wrong token")
        ws, meta = _raw(url, additional_headers={"Authorization": "Bearer s3cret"})
        assert meta["type"] == "metadata"
        ws.close()


def test_a_silent_client_is_timed_out_and_stalls_nobody(served):
    from atomskill_client import PolicyClient

    with _server(served, idle_timeout=1.5) as url:
        silent, _ = _raw(url)  # connects, never sends, never reads
        start = time.perf_counter()
        with PolicyClient(url) as client:
            client.reset(**sh.task(0))
            for obs in sh.episode(1, 5):
                assert client.infer(obs)["actions"].shape == (1, 4)
        assert time.perf_counter() - start < 1.5  # served while the other one sat there
        with pytest.raises(ConnectionClosed) as closed:
            silent.recv(timeout=30)
        assert closed.value.rcvd.code == 1000 and closed.value.rcvd.reason == "idle timeout"
