"""demo / sweep / reproduce stages: a signal to the parent reaches the running stage
once, and the parent waits for the stage to finish its checkpoint (never SIGKILLs it)."""

import signal
import sys
import textwrap

import pytest

from tests.train_helpers import Child

# A stage that, like the trainer, needs a moment after a signal to save its work.
STAGE = textwrap.dedent("""
    import os, signal, sys, time
    seen = []
    def handle(signum, frame):
        seen.append(signum)
    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)
    print("READY", flush=True)
    deadline = time.monotonic() + 120  # its own session: nobody kills it if the test fails
    while not seen:
        if time.monotonic() > deadline:
            sys.exit("no signal arrived")
        time.sleep(0.01)
    time.sleep(0.5)  # 'saving': subprocess.run would have SIGKILLed us by now
    with open(sys.argv[1], "w") as f:
        f.write(",".join(str(s) for s in seen))
    sys.exit(128 + seen[0])
""")

PARENT = textwrap.dedent("""
    import sys
    from atomskill_jax import child_commands
    try:
        child_commands.run([sys.executable, "-c", sys.argv[2], sys.argv[3]])
    except child_commands.StageInterrupted as err:
        print(f"INTERRUPTED {err.signum} {err.child_code}", flush=True)
        raise
""")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_is_forwarded_once_and_the_stage_finishes(tmp_path, signum):
    saved = tmp_path / "saved"
    parent = Child(PARENT, 1, STAGE, saved, prelude=False)  # every read has a timeout
    try:
        parent.wait_for_line("READY", timeout=60)  # the stage runs, the parent waits
        parent.proc.send_signal(signum)
        parent.wait_exit(timeout=60)
        out = "".join(parent.stdout)
    finally:
        parent.kill()
    # The child saw exactly one signal (the parent's forward; Ctrl-C from a terminal
    # reaches only the parent, whose session the child does not share) and finished.
    assert saved.read_text() == str(int(signum))
    assert f"INTERRUPTED {int(signum)} {128 + int(signum)}" in out
    assert parent.proc.returncode == 128 + int(signum)


def test_status_passed_through_without_signals():
    from atomskill_jax import child_commands

    # Whatever the handlers were (a shell without job control starts background jobs
    # with SIGINT ignored), they are restored afterwards.
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    assert child_commands.run([sys.executable, "-c", "raise SystemExit(3)"]) == 3
    assert {s: signal.getsignal(s) for s in before} == before
