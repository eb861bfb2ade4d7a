"""SIGTERM / SIGINT stop training at a step boundary, after a durable checkpoint.

    with interrupts.StopRequest() as stop:
        while ...:
            if stop.reached(step): break     # checked between steps
            ...

The first signal only sets a flag: the step in flight finishes, the trainer saves a
checkpoint at that step, waits until it is durable and raises `TrainingInterrupted`,
a SystemExit whose exit status is 128 + the signal number (143 for SIGTERM, 130 for
SIGINT), the shell convention for "stopped by a signal". A second signal during the
save restores the default action and re-sends itself: the process ends at once (the
previous checkpoint stays intact, the unfinished save is ignored on resume).

Multi-process training (jax.process_count() > 1): every process must stop at the same
step, or the collective save would hang. There the stop comes from JAX's preemption
service (`multihost_utils.reached_preemption_sync_point`, which catches SIGTERM on
every host and agrees on a step), so no Python SIGTERM handler is installed (it would
replace the service's); SIGINT keeps its default (KeyboardInterrupt, no save).
Handlers are installed only in the main thread (Python allows no other).
"""

from __future__ import annotations

import logging
import os
import signal
import threading

import jax

log = logging.getLogger(__name__)
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingInterrupted(SystemExit):
    """Training stopped by a signal after checkpointing; `code` = 128 + signal number."""

    def __init__(self, signum: int, message: str):
        super().__init__(128 + signum)
        self.signum = signum
        self.message = message

    def __str__(self) -> str:
        return self.message


class StopRequest:
    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}
        self._multi = jax.process_count() > 1

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:  # second signal: stop now, default action
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signum = signum
        log.warning("%s received: finishing the current step, then saving a checkpoint "
                    "and exiting (send it again to exit at once, without saving)",
                    signal.Signals(signum).name)

    def __enter__(self) -> "StopRequest":
        if not self._multi and threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def reached(self, step: int) -> bool:
        """True once training must stop; call between steps, on every process."""
        if self._multi and self.signum is None:
            from jax.experimental import multihost_utils

            try:
                if multihost_utils.reached_preemption_sync_point(step):
                    self.signum = signal.SIGTERM
                    log.warning("preemption notice: stopping at step %d after a checkpoint",
                                step)
            except RuntimeError:  # the preemption service is disabled
                pass
        return self.signum is not None
