"""The train loop's bookkeeping, with the stand-in model in this process: each line of
W/<stage>/metrics.jsonl is the mean of the per-step metrics since the previous line
(the first step, every `log_every` steps and the last step are logged), and
`train.keep_checkpoints` decides which step directories remain."""

import json
import os

import jax
import numpy as np
import pytest

from atomskill_jax.training import trainer, train_state as ts
from tests.tiny_model import tiny_train_config
from tests.train_helpers import ckpt_dir


def _train_recording(config, workdir):
    """Train; the metrics of every step, as the jitted step returned them."""
    per_step = []
    original = ts.jit_train_step

    def recording(step_fn, shardings, mesh):
        jitted = original(step_fn, shardings, mesh)

        def call(rng, state, batch):
            state, metrics = jitted(rng, state, batch)
            per_step.append({k: np.asarray(v) for k, v in jax.device_get(metrics).items()})
            return state, metrics

        return call

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ts, "jit_train_step", recording)
        trainer.train(config, str(workdir))
    return per_step


def _step_dirs(workdir, stage="skill"):
    return sorted(int(n) for n in os.listdir(ckpt_dir(workdir, stage)) if n.isdigit())


@pytest.fixture(scope="module")
def run(metaworld_rlds_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("train_loop")
    config = tiny_train_config(metaworld_rlds_dir, real_model=False, skill_steps=7,
                               log_every=3, checkpoint_every=2, keep_checkpoints=2)
    config.stage = "skill"
    per_step = _train_recording(config, workdir)
    with open(workdir / "skill" / "metrics.jsonl") as f:
        logged = [json.loads(line) for line in f if line.strip()]
    return workdir, per_step, logged


def test_each_log_line_is_the_mean_of_its_window(run):
    _, per_step, logged = run
    assert len(per_step) == 7
    # Step 1 (first), every 3rd step, and the last one; each averages the steps since.
    windows = {1: [1], 3: [2, 3], 6: [4, 5, 6], 7: [7]}
    assert [line["step"] for line in logged] == list(windows)
    losses = [float(m["loss"]) for m in per_step]
    assert len(set(losses[3:6])) == 3  # a window whose mean is not any one step's value
    for line in logged:
        steps = windows[line["step"]]
        assert set(per_step[0]) <= set(line), sorted(set(per_step[0]) - set(line))
        for key in per_step[0]:
            expected = float(np.mean([per_step[s - 1][key] for s in steps]))
            assert line[key] == pytest.approx(expected, rel=1e-6, abs=1e-9), (line["step"], key)


def test_keep_checkpoints_keeps_the_newest(run):
    workdir, _, _ = run
    # Saved at 2, 4, 6 and the last step 7; keep_checkpoints=2 leaves the newest two.
    assert _step_dirs(workdir) == [6, 7]


def test_keep_checkpoints_zero_keeps_all(metaworld_rlds_dir, tmp_path):
    config = tiny_train_config(metaworld_rlds_dir, real_model=False, skill_steps=3,
                               log_every=1, checkpoint_every=1, keep_checkpoints=0)
    config.stage = "skill"
    trainer.train(config, str(tmp_path))
    assert _step_dirs(tmp_path) == [1, 2, 3]
