"""PolicyClient against the stub server: connecting, requests, errors, reconnecting."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from atomskill_client import (ConnectFailed, ObservationError, PolicyClient, ProtocolError,
                              ServerError, Unauthorized)
from conftest import observation
from stub_server import StubServer, free_port, metadata


def test_metadata_reset_infer_and_increasing_ids(stub, obs):
    server = stub()
    with PolicyClient(server.uri) as client:
        assert client.metadata["action"]["dim"] == 3 and client.metadata["protocol"] == 1
        assert client.reset(task="t", instruction="i", layout=2, seed=7, episode=1) == \
            {"type": "reset", "id": 1}
        first = client.infer(obs, timestamp=12.5)
        second = client.infer(obs)
    assert first["actions"].dtype == np.float32 and first["actions"].shape == (1, 3)
    assert first["chunk"].shape == (3, 3) and first["timestamp"] == 12.5
    np.testing.assert_array_equal(second["actions"], [[100.0] * 3])
    assert [m["id"] for m in server.messages()] == [1, 2, 3]
    assert server.messages("reset")[0]["task"] == {"task": "t", "instruction": "i",
                                                   "layout": 2, "seed": 7, "episode": 1}
    sent = server.messages("infer")[0]
    np.testing.assert_array_equal(sent["observation"]["state"], obs["state"])
    assert sent["timestamp"] == 12.5 and "timestamp" not in server.messages("infer")[1]


def test_retries_until_the_server_appears(obs):
    server = StubServer(port=free_port())
    timer = threading.Timer(0.4, server.start)
    timer.start()
    start = time.monotonic()
    try:
        with PolicyClient(server.uri, retries=30, backoff=0.05) as client:
            waited = time.monotonic() - start
            client.reset()
            assert client.infer(obs)["actions"].shape == (1, 3)
    finally:
        timer.join()
        server.stop()
    assert 0.35 < waited < 3.0


def test_gives_up_naming_the_uri_and_the_last_reason():
    uri = f"ws://127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.raises(ConnectFailed, match=r"%s after 3 tries.*ConnectionRefused" % uri):
        PolicyClient(uri, retries=2, backoff=0.05)
    assert 0.14 < time.monotonic() - start < 2.0  # waited 0.05 + 0.1 (doubling)


def test_unauthorized_is_raised_at_once_and_not_retried(stub, obs):
    server = stub(token="secret")
    for token in (None, "wrong"):
        with pytest.raises(Unauthorized, match="unauthorized: missing or wrong token"):
            PolicyClient(server.uri, token=token, retries=5, backoff=0.5)
    assert server.connections == 2  # one try each, no retry
    with PolicyClient(server.uri, token="secret") as client:
        client.reset()
        assert client.infer(obs)["actions"].shape == (1, 3)


def test_receive_timeout_then_the_late_reply_is_dropped(stub, obs):
    server = stub(delay=0.4)
    with PolicyClient(server.uri, recv_timeout=0.1) as client:
        client.reset()
        with pytest.raises(TimeoutError, match=r"request 2 .*within recv_timeout=0.1 s"):
            client.infer(obs)
        server.delay = 0.0
        client.recv_timeout = 5.0
        reply = client.infer(obs)  # the reply to request 2 comes first and is skipped
    assert reply["id"] == 3
    np.testing.assert_array_equal(reply["actions"], [[100.0] * 3])


def test_error_replies_raise_server_error_and_keep_the_connection(stub, obs):
    server = stub()
    with PolicyClient(server.uri) as client:
        with pytest.raises(RuntimeError, match="before reset"):
            client.infer(obs)
        client.reset()
        server.fail_next = {"code": "bad_request", "field": "observation.state",
                            "message": "shape [4], expected [5]"}
        with pytest.raises(ServerError) as info:
            client.infer(obs)
        assert (info.value.code, info.value.field) == ("bad_request", "observation.state")
        assert "shape [4], expected [5]" in str(info.value)
        assert client.infer(obs)["id"] == 3


def test_a_reply_with_another_id_is_a_protocol_error(stub, obs):
    server = stub()
    with PolicyClient(server.uri) as client:
        client.reset()
        server.wrong_id_next = True
        with pytest.raises(ProtocolError, match="request 2 with a reply for id 999"):
            client.infer(obs)


def test_another_protocol_version_is_refused_without_retrying(stub):
    meta = metadata()
    meta["protocol"] = 2
    server = stub(meta=meta)
    with pytest.raises(ProtocolError, match="speaks protocol 2"):
        PolicyClient(server.uri, retries=3)
    assert server.connections == 1


@pytest.mark.parametrize("change, match", [
    (lambda o: o.pop("state"), r"'state'.*missing \['state'\]"),
    (lambda o: o.update(extra=np.zeros(1)), r"'extra'.*extra \['extra'\]"),
    (lambda o: o.update(state=o["state"].astype(np.float64)), r"'state'.*float64.*<f4"),
    (lambda o: o.update(state=o["state"][None]), r"'state'.*shape \[1, 5\].*\[5\]"),
    (lambda o: o.update(state=o["state"].tolist()), r"'state'.*numpy array.*list"),
    (lambda o: o["state"].__setitem__(3, np.nan), r"'state'.*non-finite.*\[3\]"),
    (lambda o: o.update(language_instruction=b"go"), r"'language_instruction'.*str"),
])
def test_observations_are_checked_before_sending(stub, change, match):
    server = stub()
    with PolicyClient(server.uri) as client:
        client.reset()
        obs = observation()
        change(obs)
        with pytest.raises(ObservationError, match=match):
            client.infer(obs)
    assert server.messages("infer") == []


def test_reconnect_replays_the_last_reset(stub, obs):
    server = stub()
    with PolicyClient(server.uri) as client:
        client.reset(task="t", seed=3)
        client.infer(obs)
        client.reconnect()
        reply = client.infer(obs)  # the stub refuses infer before reset on a connection
    assert server.connections == 2
    second = [m for n, _, m in server.received if n == 2]
    assert [m["type"] for m in second] == ["reset", "infer"]
    assert second[0]["task"]["task"] == "t" and second[0]["task"]["seed"] == 3
    np.testing.assert_array_equal(reply["actions"], [[0.0] * 3])  # a fresh episode state


def test_an_idle_close_is_reconnected_once_automatically(stub, obs):
    server = stub()
    with PolicyClient(server.uri) as client:
        client.reset(task="t")
        server.close_next = (1000, "idle timeout")
        reply = client.infer(obs)
        assert client.reconnects == 1
        server.close_next = (1011, "server failed")
        with pytest.raises(ConnectionError, match=r"code 1011.*server failed"):
            client.infer(obs)
    assert reply["type"] == "action" and server.connections == 2
