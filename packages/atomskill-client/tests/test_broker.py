"""ActionBroker: prefetching, late replies, underrun modes.

Most tests run on a fake clock: the broker's `sleep` advances it, and a fake client
answers each request once the fake time reaches its send time plus its latency, so
which tick sees which reply is exact. Two tests use the stub server in real time.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from atomskill_client import ActionBroker, PolicyClient, ServerError
from stub_server import metadata

A = 2  # action dim of the fake client


class FakeTime:
    """The broker's clock and sleep. `sleep` advances the time, then waits (in real
    time) until the worker has taken every request and delivered the replies due."""

    def __init__(self):
        self.now = 0.0
        self.cond = threading.Condition()
        self.client = None
        self.broker = None

    def clock(self) -> float:
        return self.now

    def release_all(self) -> None:
        """Lets every request in flight finish (before closing the broker)."""
        with self.cond:
            self.now = float("inf")
            self.cond.notify_all()

    def sleep(self, seconds: float) -> None:
        with self.cond:
            self.now += seconds
            self.cond.notify_all()
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            stats = self.broker.stats
            due = sum(1 for ready in self.client.ready_at if ready <= self.now + 1e-9)
            if len(self.client.ready_at) == stats.requests and stats.replies >= due:
                return
            time.sleep(0.001)
        raise AssertionError("the broker's worker did not deliver the replies due")


class FakeClient:
    """Request k (0, 1, ...) is answered `latency[k]` seconds after it was sent, with
    actions[i] = 100 k + i and chunk[j] = 100 k + n + j."""

    def __init__(self, fake: FakeTime, n: int, h: int, latency, hz: float = 10.0,
                 errors=None):
        self.metadata = metadata(action_dim=A, execute_steps=n, chunk_length=n + h,
                                 control_hz=hz)
        self.fake, self.n, self.h = fake, n, h
        self.latency = latency  # k -> seconds
        self.errors = errors or {}
        self.ready_at = []
        self.observations = []
        self.resets = []
        fake.client = self

    def reset(self, **task):
        self.resets.append(task)

    def infer(self, observation, timestamp=None):
        k = len(self.ready_at)
        self.ready_at.append(timestamp + self.latency(k))
        self.observations.append(observation)
        with self.fake.cond:
            while self.fake.now + 1e-9 < self.ready_at[k]:
                self.fake.cond.wait(timeout=0.5)
        if k in self.errors:
            raise self.errors[k]
        plan = np.repeat((100.0 * k + np.arange(self.n + self.h))[:, None], A, axis=1)
        return {"type": "action", "actions": plan[:self.n], "chunk": plan[self.n:]}


def make(n, h, latency, prefetch_steps=1, on_underrun="chunk", errors=None):
    fake = FakeTime()
    client = FakeClient(fake, n, h, latency, errors=errors)
    ticks = []  # get_observation is called with the broker's tick count so far

    def get_observation():
        ticks.append(broker.stats.steps)
        return {"tick": ticks[-1]}

    broker = ActionBroker(client, get_observation, prefetch_steps=prefetch_steps,
                          on_underrun=on_underrun, clock=fake.clock, sleep=fake.sleep)
    fake.broker = broker
    return broker, client, ticks


def close(broker):
    broker.client.fake.release_all()
    broker.close()


def play(broker, steps):
    return [float(broker.step()[0]) for _ in range(steps)]


@pytest.mark.parametrize("prefetch, latency, observed, seen_ms", [
    (2, 0.15, [0, 2, 6, 10], 200.0),  # seen at the tick it is due
    (3, 0.05, [0, 1, 5, 9], 100.0),  # seen two ticks early: kept until it is due
])
def test_the_next_request_goes_out_prefetch_steps_before_the_actions_run_out(
        prefetch, latency, observed, seen_ms):
    # 4 actions per reply at 10 Hz, requests `prefetch` ticks ahead.
    broker, client, ticks = make(n=4, h=4, latency=lambda k: 0.0 if k == 0 else latency,
                                 prefetch_steps=prefetch)
    broker.reset(task="t")
    actions = play(broker, 12)
    assert actions == [0, 1, 2, 3, 100, 101, 102, 103, 200, 201, 202, 203]
    # Observed at reset, then `prefetch` ticks before replies 1-3 are due (4, 8, 12).
    assert ticks == observed
    stats = broker.stats
    assert (stats.underruns, stats.held, stats.requests) == (0, 0, 4)
    # Fake time moves a tick at a time: a reply is seen at the first tick after it is ready.
    assert stats.latency_p50_ms == pytest.approx(seen_ms)
    assert client.resets == [{"task": "t"}]
    close(broker)


def test_without_enough_prefetch_a_late_reply_is_covered_by_the_chunk():
    # Same latency, but the request goes out only 1 tick ahead: each reply is late by a
    # tick, which plays the previous reply's chunk; the late reply then continues from
    # the current tick (its first action, meant for the tick already played, skipped).
    broker, _, _ = make(n=4, h=4, latency=lambda k: 0.0 if k == 0 else 0.15)
    broker.reset()
    actions = play(broker, 9)
    assert actions == [0, 1, 2, 3, 4, 101, 102, 103, 104]
    assert broker.stats.underruns == 2 and broker.stats.held == 0
    close(broker)


def test_a_very_late_reply_runs_through_the_chunk_then_holds():
    # Request 1 (sent at tick 1, due at tick 2) takes 0.45 s: ticks 2-4 play reply 0's
    # chunk [2, 3, 4], tick 5 holds 4; it arrives at 0.55 s and plays from tick 6, i.e.
    # its plan index 4 (chunk entry 2); request 2, sent then, is on time for tick 7.
    broker, _, _ = make(n=2, h=3, latency=lambda k: 0.45 if k == 1 else 0.0)
    broker.reset()
    actions = play(broker, 8)
    assert actions == [0, 1, 2, 3, 4, 4, 104, 200]
    stats = broker.stats
    assert (stats.underruns, stats.held) == (5, 1)  # ticks 2-6 past the newest actions
    close(broker)


def test_hold_mode_ignores_the_chunk_and_resumes_at_the_late_replys_first_action():
    broker, _, _ = make(n=2, h=3, latency=lambda k: 0.25 if k == 1 else 0.0,
                        on_underrun="hold")
    broker.reset()
    assert play(broker, 7) == [0, 1, 1, 1, 100, 101, 200]
    assert (broker.stats.underruns, broker.stats.held) == (2, 2)
    close(broker)


def test_errors_of_the_request_surface_in_step_and_reset_starts_afresh():
    error = ServerError("internal", None, "boom")
    broker, client, _ = make(n=2, h=0, latency=lambda k: 0.0, errors={1: error})
    with pytest.raises(RuntimeError, match="before reset"):
        broker.step()
    broker.reset(task="a")
    assert play(broker, 1) == [0]
    with pytest.raises(ServerError, match="boom"):
        play(broker, 2)
    broker.reset(task="b")
    assert play(broker, 1) == [200]  # the reply to the new episode's first request
    assert client.resets == [{"task": "a"}, {"task": "b"}]
    close(broker)


@pytest.mark.parametrize("reply, match", [
    ({"actions": np.zeros((1, A + 1))}, r"actions of shape \[1, 3\], expected \[n >= 1, 2\]"),
    ({"actions": np.zeros((0, A))}, r"actions of shape \[0, 2\]"),
    ({"actions": np.zeros((1, A)), "chunk": np.zeros((2, A + 1))}, r"chunk of shape \[2, 3\]"),
])
def test_replies_of_the_wrong_shape_are_refused(reply, match):
    fake = FakeTime()
    client = FakeClient(fake, 1, 1, lambda k: 0.0)
    client.infer = lambda observation, timestamp=None: reply
    with ActionBroker(client, dict, clock=fake.clock, sleep=fake.sleep) as broker:
        broker.reset()
        with pytest.raises(ValueError, match=match):
            broker.step()


def test_argument_checks():
    fake = FakeTime()
    client = FakeClient(fake, 1, 1, lambda k: 0.0)
    with pytest.raises(ValueError, match="prefetch_steps"):
        ActionBroker(client, dict, prefetch_steps=0)
    with pytest.raises(ValueError, match="on_underrun"):
        ActionBroker(client, dict, on_underrun="skip")
    client.metadata["control_hz"] = None
    with pytest.raises(ValueError, match="control_hz"):
        ActionBroker(client, dict)


def _state():
    return {"state": np.zeros(5, np.float32), "language_instruction": "go"}


def test_prefetching_hides_a_30ms_server_at_50hz(stub):
    """Real time: the stub answers in 30 ms, the control period is 20 ms, 4 actions
    per reply. Three ticks (60 ms) of prefetch hide it; one (20 ms) does not: each reply
    is then a tick late, covered by the chunk."""
    server = stub(meta=metadata(execute_steps=4, chunk_length=8, control_hz=50.0), delay=0.03)
    results = {}
    with PolicyClient(server.uri) as client:
        for prefetch in (3, 1):
            with ActionBroker(client, _state, prefetch_steps=prefetch) as broker:
                broker.reset(task="t")
                broker.step()
                start, gaps = time.monotonic(), []
                for _ in range(24):
                    before = time.monotonic()
                    broker.step()
                    gaps.append(time.monotonic() - before)
                results[prefetch] = (broker.stats, time.monotonic() - start, max(gaps))
    stats, elapsed, longest = results[3]
    assert stats.underruns <= 1 and stats.requests >= 6, stats
    assert elapsed < 24 * 0.02 + 0.1 and longest < 0.045  # the loop never waits for a reply
    assert results[1][0].underruns >= 3, results[1][0]
    assert 25 <= stats.latency_p50_ms < 60


def test_wait_mode_blocks_and_skips_nothing(stub):
    """Real time, a reply per tick that takes longer than a tick: "wait" plays every
    reply's first action (no plan entry skipped) and counts each wait."""
    server = stub(meta=metadata(execute_steps=1, chunk_length=4, control_hz=100.0), delay=0.02)
    with PolicyClient(server.uri) as client, \
            ActionBroker(client, _state, on_underrun="wait") as broker:
        broker.reset()
        actions = [float(broker.step()[0]) for _ in range(5)]
        assert actions == [0.0, 100.0, 200.0, 300.0, 400.0]
        assert broker.stats.underruns == 4
