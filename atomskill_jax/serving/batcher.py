"""One thread runs the model functions; calls from many connections that wait at the same
time are stacked into one batched call.

Every program function is batched along axis 0 with independent rows
(policies/program.py), so the rows of several callers can be concatenated, run once
and split again. A caller blocks (in its own worker thread, never the event loop)
until its rows are back. Batches are padded to a few fixed sizes (powers of two up to
`max_batch`) by repeating a row, so each function is compiled for those sizes only, at
warm-up, before the server listens. With `batching=False` every call runs alone (the
bench's comparison).
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from typing import Callable, Mapping

import jax
import numpy as np

from atomskill_jax.policies.program import example_inputs


def bucket_sizes(max_batch: int) -> tuple[int, ...]:
    sizes, b = [], 1
    while b < max_batch:
        sizes.append(b)
        b *= 2
    return tuple(sizes) + (int(max_batch),)


@dataclasses.dataclass
class _Call:
    name: str
    leaves: list
    treedef: object
    rows: int
    enqueued: float
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    result: object = None
    error: BaseException | None = None
    started: float = 0.0
    finished: float = 0.0


class Timing(threading.local):
    """Per worker thread: queue and inference seconds of the calls since `reset`."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.queue = 0.0
        self.infer = 0.0


class Batcher:
    def __init__(self, functions: Mapping[str, Callable], inputs: Mapping[str, tuple], *,
                 max_batch: int = 16, batching: bool = True, timeout: float = 60.0):
        self.functions, self.inputs = dict(functions), dict(inputs)
        self.max_batch = int(max_batch) if batching else 1
        self.sizes = bucket_sizes(self.max_batch)
        self.timeout = float(timeout)
        self.timing = Timing()
        self.calls = self.batches = self.rows = 0  # statistics
        self._pending: collections.deque[_Call] = collections.deque()
        self._cv = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="policy-batcher", daemon=True)
        self._thread.start()

    # -- callers (worker threads) ---------------------------------------------------------
    def proxies(self) -> dict[str, Callable]:
        """{name: callable(*inputs)} that run through this batcher."""
        return {name: (lambda *inputs, _n=name: self.call(_n, *inputs)) for name in self.functions}

    def call(self, name: str, *inputs):
        leaves, treedef = jax.tree.flatten(inputs)
        leaves = [np.asarray(x) for x in leaves]
        rows = {len(x) for x in leaves}
        if len(rows) != 1:
            raise ValueError(f"{name}: inputs disagree on the batch size: {sorted(rows)}")
        call = _Call(name, leaves, treedef, rows.pop(), time.perf_counter())
        if call.rows > self.max_batch:
            raise ValueError(f"{name}: {call.rows} rows exceed the server's max batch "
                             f"{self.max_batch}")
        with self._cv:
            if self._closed:
                raise RuntimeError("the policy server is shutting down")
            self._pending.append(call)
            self._cv.notify()
        if not call.done.wait(self.timeout):
            raise TimeoutError(f"{name}: no result within {self.timeout:.0f} s")
        self.timing.queue += call.started - call.enqueued
        self.timing.infer += call.finished - call.started
        if call.error is not None:
            raise call.error
        return call.result

    def warmup(self) -> None:
        """Compile every function at every batch size this batcher runs."""
        for name, fn in self.functions.items():
            for size in self.sizes:
                fn(*example_inputs(self.inputs[name], size))

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()

    # -- the batching thread --------------------------------------------------------------
    def _take(self) -> list[_Call] | None:
        with self._cv:
            while not self._pending and not self._closed:
                self._cv.wait()
            if self._closed and not self._pending:
                return None
            first = self._pending.popleft()
            group, rows = [first], first.rows
            for call in list(self._pending):
                if (call.name == first.name and call.treedef == first.treedef
                        and rows + call.rows <= self.max_batch
                        and all(a.shape[1:] == b.shape[1:] and a.dtype == b.dtype
                                for a, b in zip(call.leaves, first.leaves))):
                    group.append(call)
                    rows += call.rows
                    self._pending.remove(call)
            return group

    def _loop(self) -> None:
        while True:
            group = self._take()
            if group is None:
                return
            start = time.perf_counter()
            try:
                outputs = self._run(group)
            except BaseException as err:  # every caller of the batch gets the error
                outputs, error = None, err
            else:
                error = None
            end = time.perf_counter()
            for i, call in enumerate(group):
                call.started, call.finished = start, end
                call.error = error
                call.result = None if outputs is None else outputs[i]
                call.done.set()

    def _run(self, group: list[_Call]) -> list:
        rows = sum(c.rows for c in group)
        size = next(s for s in self.sizes if s >= rows)
        stacked = []
        for j in range(len(group[0].leaves)):
            parts = [c.leaves[j] for c in group]
            if size > rows:  # pad with copies of the last row (valid inputs; discarded)
                last = parts[-1][-1:]
                parts.append(np.repeat(last, size - rows, axis=0))
            stacked.append(np.concatenate(parts, axis=0))
        inputs = jax.tree.unflatten(group[0].treedef, stacked)
        out = self.functions[group[0].name](*inputs)
        self.calls += len(group)
        self.batches += 1
        self.rows += rows
        results, offset = [], 0
        for call in group:
            lo, hi = offset, offset + call.rows
            results.append(jax.tree.map(lambda x, lo=lo, hi=hi: np.asarray(x)[lo:hi], out))
            offset = hi
        return results
