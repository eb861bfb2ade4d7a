"""`ActionBroker`: plays actions at the control rate while the next request is in flight.

openpi's broker asks for a chunk when the previous one runs out, so the robot idles
through every inference. Here each reply's actions are scheduled on control ticks and
the request for the next reply goes out `prefetch_steps` ticks before they run out
(with the observation of that tick), on a background thread. A reply that is still
late when it is due is covered by the previous reply's `chunk` (its plan from the step
after its actions), or by holding the last action, and counted as an underrun. When
it comes after the chunk covered some ticks, it plays from the current tick on (the
ticks already covered are skipped), so the motion stays on the policy's timeline.

Timeline, `n` actions per reply, `p` = prefetch_steps, latency L, period T:

    tick:      t      t+1  ...  t+n-p  ...  t+n-1 | t+n
    plays:     a0     a1        a(n-p)      a(n-1)| next reply's a0 (if L <= p*T)
    requests:                   ^ next observation sent here

So p*T > L (plus jitter) hides the latency; a larger p gives an older observation.
One request is in flight at a time, so p > n acts as p = n.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import queue
import threading
import time
from typing import Any, Callable, Dict, Mapping, Optional

import numpy as np

log = logging.getLogger("atomskill_client")

UNDERRUN_MODES = ("chunk", "hold", "wait")


@dataclasses.dataclass(frozen=True)
class BrokerStats:
    """Counters since the broker was made; latencies over the last 10,000 requests."""

    steps: int  # actions returned by step()
    requests: int  # infer requests sent
    replies: int  # replies (or errors) received
    underruns: int  # ticks after the newest reply's actions ran out (its chunk or a hold played)
    held: int  # of those, ticks that repeated the last action (nothing planned was left)
    late_ticks: int  # ticks the caller called step() more than a period late
    latency_p50_ms: float  # observation taken -> reply received (nan before the first)
    latency_p99_ms: float


class ActionBroker:
    """Actions at the control rate from a `PolicyClient` without waiting for inference.

    `get_observation()` returns the newest observation (the dict `client.infer`
    takes); it is called on the thread that calls `reset` and `step` (so it need not
    be thread-safe), when a request is due. Only the request itself runs on the
    broker's thread.

    `on_underrun`: what a tick plays when the next reply is late: "chunk" (the previous
    reply's plan, then its last action; the late reply then plays from the current
    tick, skipping the ticks the chunk covered), "hold" (the last action played; the
    late reply then plays from its first action) or "wait" (block until the reply
    comes, as a synchronous client would: for simulators that can pause).
    `clock`/`sleep` are injectable for tests.
    """

    def __init__(self, client, get_observation: Callable[[], Mapping[str, Any]],
                 control_hz: Optional[float] = None, prefetch_steps: int = 1,
                 on_underrun: str = "chunk", *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        metadata = client.metadata
        hz = control_hz if control_hz is not None else metadata.get("control_hz")
        if not hz or hz <= 0:
            raise ValueError(f"ActionBroker: control_hz={hz!r}; give a positive control_hz "
                             f"(the server's metadata has none)")
        if int(prefetch_steps) != prefetch_steps or prefetch_steps < 1:
            raise ValueError(f"ActionBroker: prefetch_steps={prefetch_steps!r}, expected an "
                             f"int >= 1 (ticks before the actions run out)")
        if on_underrun not in UNDERRUN_MODES:
            raise ValueError(f"ActionBroker: on_underrun={on_underrun!r}, expected one of "
                             f"{UNDERRUN_MODES}")
        self.client = client
        self.control_hz = float(hz)
        self.period = 1.0 / self.control_hz
        self.prefetch_steps = int(prefetch_steps)
        self.on_underrun = on_underrun
        self.action_dim = int(metadata["action"]["dim"])
        self._get_observation = get_observation
        self._clock, self._sleep = clock, sleep
        self._counts = collections.Counter()
        self._latencies_ms = collections.deque(maxlen=10_000)
        # The request in flight ({"no", "due"}) and the worker's answer to it.
        self._cond = threading.Condition()
        self._inflight: Optional[Dict[str, int]] = None
        self._result = None  # (no, reply, error) once the worker is done
        self._no = 0
        self._jobs: "queue.Queue" = queue.Queue()
        self._closed = False
        self._clear_episode()
        self._worker = threading.Thread(target=self._work, name="atomskill-broker", daemon=True)
        self._worker.start()

    def _clear_episode(self) -> None:
        self._plan: Optional[np.ndarray] = None  # [n + h, A]: the reply's actions, then chunk
        self._n_actions = 0
        self._plan_start = 0  # the tick at which plan[0] is played
        self._tick = -1
        self._next_time = 0.0
        self._last_action: Optional[np.ndarray] = None
        self._ready = None  # (due tick, reply) received but not yet due

    # -- the background thread ---------------------------------------------------------

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            no, observation, timestamp = job
            reply, error = None, None
            try:
                reply = self.client.infer(observation, timestamp=timestamp)
            except BaseException as exc:  # handed to the caller's thread by step()
                error = exc
            latency = (self._clock() - timestamp) * 1000.0  # observed -> reply received
            with self._cond:
                if error is None:
                    self._latencies_ms.append(latency)
                self._counts["replies"] += 1
                self._result = (no, reply, error)
                self._cond.notify_all()

    def _submit(self, due: int) -> None:
        stamp = self._clock()  # the protocol's timestamp: when the observation was taken
        observation = self._get_observation()
        with self._cond:
            self._no += 1
            self._inflight = {"no": self._no, "due": due}
            self._result = None
            self._counts["requests"] += 1
        self._jobs.put((self._no, observation, stamp))

    def _collect(self, block: bool) -> None:
        """Moves the in-flight request's reply to `_ready` once the worker has it."""
        with self._cond:
            if self._inflight is None:
                return
            while block and self._result is None:
                if not self._worker.is_alive():
                    raise RuntimeError("ActionBroker: its worker thread died")
                self._cond.wait(timeout=1.0)
            if self._result is None:
                return
            no, reply, error = self._result
            due = self._inflight["due"]
            self._inflight, self._result = None, None
        if error is not None:
            raise error
        self._ready = (due, self._check_reply(reply, no))

    def _check_reply(self, reply: Dict[str, Any], no: int) -> Dict[str, np.ndarray]:
        actions = np.asarray(reply.get("actions"), np.float32)
        if actions.ndim != 2 or len(actions) < 1 or actions.shape[1] != self.action_dim:
            raise ValueError(f"ActionBroker: reply {no} has actions of shape "
                             f"{list(actions.shape)}, expected [n >= 1, {self.action_dim}]")
        chunk = reply.get("chunk")
        chunk = np.zeros((0, self.action_dim), np.float32) if chunk is None else \
            np.asarray(chunk, np.float32)
        if chunk.size == 0:
            chunk = np.zeros((0, self.action_dim), np.float32)
        if chunk.ndim != 2 or chunk.shape[1] != self.action_dim:
            raise ValueError(f"ActionBroker: reply {no} has a chunk of shape "
                             f"{list(chunk.shape)}, expected [h, {self.action_dim}]")
        return {"actions": actions, "chunk": chunk}

    # -- the caller's thread --------------------------------------------------------

    def reset(self, **task) -> None:
        """Start an episode: `client.reset(**task)`, then the first request goes out
        at once with `get_observation()` (the first `step` waits for its reply)."""
        self._drain()
        self.client.reset(**task)
        self._clear_episode()
        self._submit(due=0)

    def _drain(self) -> None:
        """Waits for a request still in flight and drops its reply (or error)."""
        try:
            self._collect(block=True)
        except Exception as exc:  # the episode it belonged to is over
            log.warning("ActionBroker: dropped the error of a request of the last "
                        "episode: %s", exc)
        self._ready = None

    def step(self) -> np.ndarray:
        """The action [A] to send now; blocks until its control tick (the first step
        of an episode until the first reply)."""
        if self._closed:
            raise RuntimeError("ActionBroker.step after close()")
        if self._plan is None:
            if self._inflight is None and self._ready is None:
                raise RuntimeError("ActionBroker.step before reset(): call "
                                   "broker.reset(task=..., instruction=...) first")
            self._collect(block=True)
            tick = 0
            self._next_time = self._clock()
        else:
            tick = self._wait_for_tick()
        self._collect(block=False)
        if self._ready is not None and self._ready[0] <= tick:
            self._adopt(tick)
        elif (self.on_underrun == "wait" and tick - self._plan_start >= self._n_actions
              and (self._inflight is not None or self._ready is not None)):
            self._counts["underruns"] += 1
            self._collect(block=True)
            self._adopt(tick)
            self._next_time = self._clock()  # the robot waited: the ticks restart from now
        self._tick = tick
        action = self._action_at(tick)
        remaining = self._n_actions - (tick - self._plan_start + 1)
        if self._inflight is None and self._ready is None and remaining < self.prefetch_steps:
            self._submit(due=tick + 1 + max(remaining, 0))
        self._last_action = action
        self._counts["steps"] += 1
        return action.copy()

    def _wait_for_tick(self) -> int:
        self._next_time += self.period
        now = self._clock()
        if self._next_time > now:
            self._sleep(self._next_time - now)
        elif now - self._next_time > self.period:  # the caller fell behind: no burst
            self._counts["late_ticks"] += 1
            self._next_time = now
        return self._tick + 1

    def _adopt(self, tick: int) -> None:
        due, reply = self._ready
        self._ready = None
        self._plan = np.concatenate([reply["actions"], reply["chunk"]], axis=0)
        self._n_actions = len(reply["actions"])
        # "chunk" kept the robot on the previous plan: a late reply continues from the
        # current tick (the ticks already covered skipped). "hold" and "wait" paused the
        # plan: it resumes at the reply's first action.
        self._plan_start = due if self.on_underrun == "chunk" else tick

    def _action_at(self, tick: int) -> np.ndarray:
        index = tick - self._plan_start
        if index < self._n_actions:
            return self._plan[index]
        self._counts["underruns"] += 1
        if self.on_underrun != "hold" and index < len(self._plan):
            return self._plan[index]
        self._counts["held"] += 1
        return self._last_action if self._last_action is not None else self._plan[-1]

    @property
    def stats(self) -> BrokerStats:
        with self._cond:
            latencies = list(self._latencies_ms)
            counts = dict(self._counts)
        p50, p99 = (np.percentile(latencies, [50, 99]).tolist() if latencies
                    else (float("nan"), float("nan")))
        return BrokerStats(steps=counts.get("steps", 0), requests=counts.get("requests", 0),
                           replies=counts.get("replies", 0),
                           underruns=counts.get("underruns", 0), held=counts.get("held", 0),
                           late_ticks=counts.get("late_ticks", 0),
                           latency_p50_ms=float(p50), latency_p99_ms=float(p99))

    def close(self) -> None:
        """Stops the worker thread (after the request in flight); the client stays open."""
        if self._closed:
            return
        self._closed = True
        self._jobs.put(None)
        self._worker.join(timeout=getattr(self.client, "recv_timeout", 30.0) + 1.0)

    def __enter__(self) -> "ActionBroker":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
