"""Faults that must lose nothing: a second trainer on one workdir (refused; a dead
trainer's lock taken over), SIGTERM / SIGINT (the current step checkpointed, a resumed
run continues exactly), damaged checkpoint files (named; a resume falls back to the
newest intact step, a policy load refuses), a truncated array file (the refusal leads
with the real cause). The stand-in model (tests/tiny_model.py) unless a policy is
loaded; lock and SIGTERM runs in child processes."""

import hashlib
import json
import logging
import os
import signal
import socket
import threading
import time

import numpy as np
import pytest

from atomskill_jax.training import checkpoints, checksums, interrupts, trainer, workdir_lock
from tests.tiny_model import copy_workdir, tiny_train_config
from tests.train_helpers import Child

# argv: devices, dataset, workdir, steps[, dump npz of the final train state]
CHILD = """
import numpy as np, orbax.checkpoint as ocp
from atomskill_jax.training import trainer
dataset, workdir, steps = sys.argv[2], sys.argv[3], int(sys.argv[4])
config = tiny_train_config(dataset, real_model=False, skill_steps=steps, checkpoint_every=2)
config.stage = 'skill'
print(json.dumps(trainer.train(config, workdir)), flush=True)
if len(sys.argv) > 5:
    path = os.path.join(workdir, 'skill', 'checkpoints', str(steps), 'train_state')
    flat = jax.tree_util.tree_leaves_with_path(ocp.StandardCheckpointer().restore(path))
    np.savez(sys.argv[5], **{jax.tree_util.keystr(p): np.asarray(x) for p, x in flat})
"""
TIMEOUT = 300  # a hung child fails the test instead of hanging the suite


def _start(dataset, workdir, steps, *extra, cache, hang_after=None) -> Child:
    """A trainer child whose stdout and stderr are drained by threads (no read blocks)."""
    env = {} if hang_after is None else {trainer.HANG_ENV: str(hang_after)}
    return Child(CHILD, 1, dataset, workdir, steps, *extra, cache_dir=cache, env=env)


def _finish(child: Child, timeout=TIMEOUT):
    code = child.wait_exit(timeout)
    return code, "".join(child.stdout), "".join(child.stderr)


def _snapshot(workdir) -> dict:
    out = {}
    for root, _, files in os.walk(workdir):
        for name in files:
            path = os.path.join(root, name)
            out[os.path.relpath(path, workdir)] = (os.stat(path).st_mtime_ns,
                                                   hashlib.sha256(open(path, "rb").read()).digest())
    return out


def _config(dataset, steps=4):
    config = tiny_train_config(dataset, real_model=False, skill_steps=steps, checkpoint_every=2)
    config.stage = "skill"
    return config


def _metric_steps(workdir):
    return [json.loads(x)["step"] for x in open(os.path.join(workdir, "skill", "metrics.jsonl"))]


def test_second_trainer_refused_and_dead_trainers_lock_taken_over(metaworld_rlds_dir, tmp_path,
                                                                 caplog):
    workdir = tmp_path / "w"
    first = _start(metaworld_rlds_dir, workdir, 4, cache=tmp_path / "cache", hang_after=2)
    try:
        first.wait_for_line("HANGING after step 2", TIMEOUT)  # its checkpoint is durable
        before = _snapshot(workdir)
        with pytest.raises(workdir_lock.WorkdirLockedError) as refused:
            trainer.train(_config(metaworld_rlds_dir), str(workdir))
        message = str(refused.value)
        assert f"pid {first.proc.pid} on host {socket.gethostname()}" in message
        assert "train.lock" in message and "another --workdir" in message
        assert _snapshot(workdir) == before  # the refused trainer wrote nothing
    finally:
        first.kill()  # SIGKILL
    # SIGKILL: no release ran, the lock file still names the dead trainer.
    assert json.load(open(workdir / "train.lock"))["pid"] == first.proc.pid
    with caplog.at_level(logging.WARNING, logger="atomskill_jax"):
        result = trainer.train(_config(metaworld_rlds_dir), str(workdir))
    assert result["skill"]["step"] == 4
    taken = [r.getMessage() for r in caplog.records if "stale lock" in r.getMessage()]
    assert len(taken) == 1 and f"pid {first.proc.pid}" in taken[0], taken
    assert "no longer running" in taken[0]
    assert _metric_steps(workdir) == [1, 2, 3, 4]  # resumed at 2, not retrained
    assert open(workdir / "train.lock").read() == ""  # released cleanly


def test_sigterm_checkpoints_the_current_step_and_resume_is_exact(metaworld_rlds_dir,
                                                                  tmp_path):
    cache = tmp_path / "cache"
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    run_a = _start(metaworld_rlds_dir, straight, 4, tmp_path / "a.npz", cache=cache)
    run_b = _start(metaworld_rlds_dir, stopped, 4, cache=cache, hang_after=3)
    try:
        run_b.wait_for_line("HANGING after step 3", TIMEOUT)
        run_b.proc.send_signal(signal.SIGTERM)
        code, _, err = _finish(run_b, timeout=120)
    finally:
        run_b.kill()
    assert code == 128 + signal.SIGTERM, err[-4000:]
    assert "stopped by SIGTERM at skill step 3 of 4" in err
    ckpts = stopped / "skill" / "checkpoints"
    assert sorted(os.listdir(ckpts)) == ["2", "3"]  # step 3 saved; no *orbax-checkpoint-tmp*
    assert checksums.verify(str(ckpts / "3")).status == "intact"
    code, out, err = _finish(run_a)
    assert code == 0, err[-4000:]

    run_c = _start(metaworld_rlds_dir, stopped, 4, tmp_path / "c.npz", cache=cache)
    code, out, err = _finish(run_c)
    assert code == 0, err[-4000:]
    assert _metric_steps(stopped) == [1, 2, 3, 4]  # continued at step 4
    a, c = np.load(tmp_path / "a.npz"), np.load(tmp_path / "c.npz")
    assert sorted(a.files) == sorted(c.files) and any("opt_state" in k for k in a.files)
    for name in a.files:
        np.testing.assert_array_equal(a[name], c[name], err_msg=name)


def test_sigint_in_process_checkpoints_and_restores_handlers(metaworld_rlds_dir, tmp_path,
                                                             monkeypatch):
    workdir = tmp_path / "w"
    monkeypatch.setenv(trainer.HANG_ENV, "1")
    metrics = workdir / "skill" / "metrics.jsonl"

    def interrupt():  # once step 1 is logged, the trainer is hanging after it
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            if metrics.exists() and metrics.read_text().strip():
                time.sleep(0.2)
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)  # never hang the suite

    before = signal.getsignal(signal.SIGINT)
    threading.Thread(target=interrupt, daemon=True).start()
    with pytest.raises(interrupts.TrainingInterrupted) as stopped:
        trainer.train(_config(metaworld_rlds_dir), str(workdir))
    assert stopped.value.code == 128 + signal.SIGINT
    assert "SIGINT at skill step 1 of 4" in str(stopped.value)
    assert sorted(os.listdir(workdir / "skill" / "checkpoints")) == ["1"]
    assert signal.getsignal(signal.SIGINT) is before
    assert open(workdir / "train.lock").read() == ""  # the lock released on the way out


@pytest.fixture(scope="module")
def stand_in_workdir(metaworld_rlds_dir, tmp_path_factory):
    """The stand-in trained 4 steps: checkpoints 2 and 4, each with a manifest."""
    workdir = tmp_path_factory.mktemp("faults") / "w"
    trainer.train(_config(metaworld_rlds_dir), str(workdir))
    return str(workdir)


def _largest_file(directory):
    files = [os.path.join(r, n) for r, _, names in os.walk(directory) for n in names]
    return max(files, key=os.path.getsize)


def _overwrite_64_bytes(path):
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        f.write(b"\xff" * 64)


def test_damaged_step_resume_falls_back_to_newest_intact(stand_in_workdir, metaworld_rlds_dir,
                                                         tmp_path_factory, caplog):
    workdir = copy_workdir(stand_in_workdir, tmp_path_factory, "damaged_resume")
    damaged = _largest_file(os.path.join(workdir, "skill", "checkpoints", "4", "params"))
    _overwrite_64_bytes(damaged)
    rel = os.path.relpath(damaged, os.path.join(workdir, "skill", "checkpoints", "4"))
    # What a policy load of this step says: the file, and the intact step to load instead.
    with pytest.raises(checkpoints.DamagedCheckpointError, match=r"intact steps: \[2\] "
                       r"\(load one with --step=2\)") as refused:
        checkpoints.require_intact(os.path.join(workdir, "skill", "checkpoints"), 4, ("params",))
    assert f"checkpoints/4 is damaged: {rel} does not match its saved sha256" in str(refused.value)
    with caplog.at_level(logging.WARNING, logger="atomskill_jax"):
        result = trainer.train(_config(metaworld_rlds_dir), workdir)
    warning = next(r.getMessage() for r in caplog.records if "is damaged" in r.getMessage())
    assert "checkpoints/4 is damaged" in warning and rel in warning
    assert "resuming from step 2" in warning
    assert result["skill"]["step"] == 4
    assert _metric_steps(workdir)[-2:] == [3, 4]  # steps 3 and 4 trained again
    assert os.path.exists(os.path.join(workdir, "skill", "damaged_checkpoints", "4", rel))
    assert checksums.verify(os.path.join(workdir, "skill", "checkpoints", "4")).status == "intact"


def test_damaged_params_refused_by_policy_loading(tiny_trained_workdir, tmp_path_factory,
                                                  caplog):
    from atomskill_jax.policies import loading

    workdir = copy_workdir(tiny_trained_workdir, tmp_path_factory, "damaged_load")
    step_dir = os.path.join(workdir, "sampler", "checkpoints", "2")
    damaged = _largest_file(os.path.join(step_dir, "params"))
    _overwrite_64_bytes(damaged)
    with pytest.raises(checkpoints.DamagedCheckpointError) as refused:
        loading.load_policy(workdir)
    message = str(refused.value)
    assert "sampler/checkpoints/2 is damaged" in message
    assert os.path.relpath(damaged, step_dir) in message and "sha256" in message
    assert "no other intact step" in message
    # Saved before manifests existed: loads, with a warning that it is unverified.
    legacy = copy_workdir(tiny_trained_workdir, tmp_path_factory, "legacy_load")
    os.remove(os.path.join(legacy, "sampler", "checkpoints", "2", checksums.FILENAME))
    with caplog.at_level(logging.WARNING, logger="atomskill_jax"):
        policy = loading.load_policy(legacy, epsilon=0.3, max_skill_steps=10)
    assert policy.checkpoint_step == 2
    assert any("no checksum manifest" in r.getMessage() for r in caplog.records)


def test_truncated_array_file_refusal_leads_with_the_cause(stand_in_workdir, metaworld_rlds_dir,
                                                          tmp_path_factory):
    workdir = copy_workdir(stand_in_workdir, tmp_path_factory, "truncated")
    step_dir = os.path.join(workdir, "skill", "checkpoints", "4")
    os.remove(os.path.join(step_dir, checksums.FILENAME))  # the restore itself must say why
    for root, _, names in os.walk(os.path.join(step_dir, "train_state")):
        for name in names if os.path.basename(root) == "d" else ():  # OCDBT data files
            os.truncate(os.path.join(root, name), os.path.getsize(os.path.join(root, name)) // 2)
    with pytest.raises(checkpoints.CheckpointError) as refused:
        trainer.train(_config(metaworld_rlds_dir), workdir)
    message = str(refused.value)
    head = message[:400]
    assert "checkpoints/4 exists but cannot be restored" in head
    assert "is not valid for value of size" in head, message  # TensorStore's reason
    assert "--overwrite" in message


def test_failure_message_puts_the_innermost_cause_first():
    def chain(root):
        try:
            try:
                raise root
            except ValueError as inner:
                raise Exception("See full TensorStore details: spec " + "x" * 5000) from inner
        except Exception as outer:  # noqa: BLE001
            return checkpoints.failure_message(outer, limit=100)

    text = chain(ValueError('OUT_OF_RANGE: Error reading "w/0.0" in OCDBT database: Requested '
                            "byte range [0, 10) is not valid for value of size 5 "
                            "[tensorstore_spec='{\"driver\": \"zarr\"}']"))
    assert text.startswith("ValueError: Requested byte range [0, 10) is not valid for value "
                           'of size 5 (in: OUT_OF_RANGE: Error reading "w/0.0" in OCDBT')
    assert "tensorstore_spec" not in text
    assert "raised as Exception: See full TensorStore details: spec x" in text
    assert text.endswith(" ...]") and len(text) < 400  # the outer spec cut at its end
    assert chain(ValueError("plain: reason")).startswith("ValueError: plain: reason [raised")


class _FakeIterator:
    """Stands in for the tf.data iterator: its checkpoint is one file."""

    def save(self, directory):
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "position"), "w") as f:
            f.write("7")


@pytest.mark.parametrize("async_save", [True, False])
def test_every_saved_step_has_a_manifest_that_names_damage(tmp_path, async_save):
    import jax.numpy as jnp

    directory = str(tmp_path / "checkpoints")
    manager = checkpoints.make_manager(directory, keep=0, async_save=async_save)
    tree = {"w": jnp.arange(256.0), "b": jnp.ones(3)}
    for step in (1, 2):
        checkpoints.save(manager, step, params=tree, train_state=tree, iterator=_FakeIterator(),
                         assets={"step": step})
    manager.close()
    assert sorted(os.listdir(directory)) == ["1", "2"]
    for step in (1, 2):
        manifest = json.load(open(os.path.join(directory, str(step), checksums.FILENAME)))
        assert {p.split("/")[0] for p in manifest["files"]} == set(checkpoints.ITEMS)
        assert checksums.verify(os.path.join(directory, str(step))).status == "intact"
    _overwrite_64_bytes(os.path.join(directory, "2", "data", "position"))  # 1 byte -> 64
    verdict = checksums.verify(os.path.join(directory, "2"))
    assert verdict.status == "damaged"
    assert verdict.detail == "data/position has 64 bytes, 1 were saved"
    assert checksums.verify(os.path.join(directory, "2"), ("params",)).status == "intact"
    params = os.path.join(directory, "1", "params")
    lost = sorted(f for f in os.listdir(params) if os.path.isfile(os.path.join(params, f)))[0]
    os.remove(os.path.join(params, lost))
    assert checksums.verify(os.path.join(directory, "1")).detail == f"params/{lost} is missing"
