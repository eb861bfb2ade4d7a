"""Telling whether a workdir is still being trained (training/workdir_lock.py), and
`atomskill eval` warning before it evaluates an unfinished run's newest checkpoint,
which may be an early checkpoint of its last stage."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from atomskill_jax.training import workdir_lock


def test_probe_sees_a_trainer_in_another_process_and_never_takes_its_lock(tmp_path):
    workdir = str(tmp_path)
    assert workdir_lock.training_holder(workdir) is None  # no lock file yet
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from atomskill_jax.training import workdir_lock as w\n"
         "with w.hold(sys.argv[1]):\n"
         "    print('held', flush=True); time.sleep(60)\n", workdir],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        found = workdir_lock.training_holder(workdir)
        assert found is not None and f"pid {holder.pid}" in found
        # The probe left the lock with its holder: a second trainer is still refused.
        with pytest.raises(workdir_lock.WorkdirLockedError):
            workdir_lock.acquire(workdir)
    finally:
        holder.kill()
        holder.wait()
    # The kernel released the dead holder's lock: nobody trains any more.
    assert workdir_lock.training_holder(workdir) is None


def test_released_lock_reads_as_not_training(tmp_path):
    with workdir_lock.hold(str(tmp_path)):
        assert workdir_lock.training_holder(str(tmp_path)) is not None
    assert workdir_lock.training_holder(str(tmp_path)) is None


def test_eval_warns_about_a_run_still_training(tiny_trained_workdir, tmp_path,
                                              tmp_path_factory, capsys):
    from atomskill_jax.commands import eval as eval_command
    from tests.tiny_model import copy_workdir

    # A copy: the shared fixture's lock is not held while other tests read it.
    workdir = copy_workdir(tiny_trained_workdir, tmp_path_factory, "still_training")

    sub = argparse.ArgumentParser().add_subparsers()
    eval_command.add_parser(sub)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    # --out under a file: eval stops before any rollout, after the warning.
    args = sub.choices["eval"].parse_args(
        [f"--workdir={workdir}", "--tasks=pick-place", "--episodes=1",
         f"--out={blocker}/report"])
    with workdir_lock.hold(workdir):
        with pytest.raises((SystemExit, OSError, ValueError)):
            eval_command.run(args)
    assert "is still being trained by pid" in capsys.readouterr().err
    with pytest.raises((SystemExit, OSError, ValueError)):
        eval_command.run(args)
    assert "still being trained" not in capsys.readouterr().err
