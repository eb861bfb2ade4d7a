"""Run one `atomskill` stage as a child process, passing SIGINT / SIGTERM on to it.

`demo`, `sweep` and `reproduce` run each stage (train, eval, ...) as its own process.
`subprocess.run` and `subprocess.call` answer Ctrl-C by SIGKILLing the child a quarter
of a second later, which throws away the steps a trainer was about to checkpoint
(the trainer saves at the current step on SIGINT / SIGTERM and then exits). Here the
child gets its own session (process group), so a terminal's Ctrl-C reaches only this parent,
which forwards each signal exactly once and waits for the child to finish: one signal
means "checkpoint and stop", a second one "stop now", as for `atomskill train` itself.
A scheduler's SIGTERM to the parent is forwarded the same way.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading

FORWARDED = (signal.SIGINT, signal.SIGTERM)


class StageInterrupted(SystemExit):
    """The parent was signalled and its child stage has exited; code 128 + signum."""

    def __init__(self, signum: int, child_code: int):
        super().__init__(128 + signum)
        self.signum, self.child_code = signum, child_code

    def __str__(self) -> str:
        return (f"stopped by {signal.Signals(self.signum).name}; the running stage exited "
                f"with status {self.child_code} (run the same command again to resume)")


def atomskill_command(argv) -> list[str]:
    return [sys.executable, "-m", "atomskill_jax", *argv]


def run(cmd: list[str], **popen_kwargs) -> int:
    """Run `cmd` to completion and return its exit status; if this process receives
    SIGINT or SIGTERM meanwhile, forward it, wait for the child, and raise
    StageInterrupted (a SystemExit) with the shell's 128 + signal status."""
    main_thread = threading.current_thread() is threading.main_thread()
    # A session of its own (not only a process group: `process_group` needs Python 3.11).
    proc = subprocess.Popen(cmd, start_new_session=main_thread, **popen_kwargs)
    received: list[int] = []

    def forward(signum, frame):
        received.append(signum)
        if proc.poll() is None:
            proc.send_signal(signum)

    # Signal handlers can only be installed in the main thread; elsewhere the child
    # stays in our process group and sees the terminal's signals itself.
    previous = {s: signal.signal(s, forward) for s in FORWARDED} if main_thread else {}
    try:
        code = proc.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if received:
        raise StageInterrupted(received[0], code)
    return code
