"""`atomskill sweep` for real (not --print-commands): a 2-point sweep of the stand-in
model's config (tests/stand_in_config.py; the subject is the sweep, not the model).

Each point must train in its own workdir with its own overrides: recorded in
W/<name>/config.json and visible in what it trained (its seed changes the losses).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.tiny_model import REPO, child_env

SWEEP = '''
def get_sweep(arg=""):
    return [{"name": "seed1", "seed": 1, "stage": "skill"},
            {"name": "seed2", "seed": 2, "stage": "skill"}]
'''
STEPS = 2


def _metrics(run_dir: str) -> list[dict]:
    with open(os.path.join(run_dir, "skill", "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.mark.slow
def test_sweep_trains_each_point_with_its_overrides(metaworld_rlds_dir, tmp_path):
    sweep_file = tmp_path / "two_seeds.py"
    sweep_file.write_text(SWEEP)
    workdir = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "atomskill_jax", "sweep",
           f"--config={os.path.join(REPO, 'tests', 'stand_in_config.py')}",
           f"--sweep={sweep_file}", f"--workdir={workdir}",
           f"--config.data.datasets=('{metaworld_rlds_dir}',)",
           f"--config.train.skill_steps={STEPS}"]
    proc = subprocess.run(cmd, cwd=REPO, env=child_env(tmp_path / "jax_cache"),
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "[sweep 1/2]" in proc.stdout and "[sweep 2/2]" in proc.stdout, proc.stdout[-2000:]
    losses = {}
    for name, seed in (("seed1", 1), ("seed2", 2)):
        run_dir = workdir / name
        with open(run_dir / "config.json") as f:
            config = json.load(f)
        assert config["seed"] == seed and config["stage"] == "skill", name
        assert config["train"]["skill_steps"] == STEPS  # the sweep-wide override too
        assert config["data"]["datasets"] == [str(metaworld_rlds_dir)]
        assert str(STEPS) in os.listdir(run_dir / "skill" / "checkpoints"), name
        assert not (run_dir / "sampler").exists()  # stage=skill: no sampler trained
        metrics = _metrics(str(run_dir))
        assert [m["step"] for m in metrics] == list(range(1, STEPS + 1))
        losses[name] = [m["loss"] for m in metrics]
    # Different seeds initialise differently: the points really ran their own config.
    assert losses["seed1"] != losses["seed2"]
