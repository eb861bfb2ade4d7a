"""`atomskill demo` end to end on one task, the tiny configs and one short evaluation.

The same stages as the default demo (build, train AtomSkill, the ACT-like baseline and
the MLP floor, evaluate all three, plot, compare), run as the real commands; checked:
the comparison table has the three methods, every stage's cost is printed, and the
outputs the demo names exist.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys

import pytest

from tests.fast_compile import child_xla_flags
from tests.tiny_model import REPO, child_env

STAGES = ("build pick-place demonstrations", "train AtomSkill (tiny config)",
          "train the ACT-like baseline (no skill tokens)",
          "train the MLP floor (state -> action chunk)", "evaluate AtomSkill closed loop",
          "evaluate the ACT-like baseline", "evaluate the MLP floor",
          "plot skill embeddings (t-SNE) and segmentations", "compare")


@pytest.mark.slow
def test_demo_runs_every_stage_on_a_tiny_setting(tmp_path):
    out = tmp_path / "demo"
    # `atomskill demo` itself, as a user types it (python -m atomskill_jax is the script).
    cmd = [sys.executable, "-m", "atomskill_jax", "demo", "--tasks=pick-place",
           "--episodes-per-task=2", "--eval-episodes=1", "--eval-max-steps=40",
           "--eval-workers=0", "--variant=tiny", f"--out={out}"]
    env = child_env(tmp_path / "jax_cache")
    env["XLA_FLAGS"] += child_xla_flags()  # its 9 children compile ~20 programs once each
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = proc.stdout
    # The comparison table: one row per method, with ATP / SR for the task and average.
    compare = text[text.index("== compare"):text.index("== what each stage cost")]
    rows = re.findall(r"^\| (AtomSkill|ACT-like|MLP)\b.*\|\s*$", compare, re.M)
    assert sorted(rows) == ["ACT-like", "AtomSkill", "MLP"], compare
    assert "| pick-place |" in compare and "ATP / SR" in compare
    # Every stage ran (its command printed) and its cost is reported, then the total.
    costs = text[text.index("== what each stage cost"):]
    for title in STAGES:
        assert f"== {title}\n$ atomskill " in text, title
        assert re.search(rf"^   {re.escape(title)}\s+\d+\.\d min$", costs, re.M), title
    assert re.search(r"^   total\s+\d+\.\d min$", costs, re.M)
    # The outputs it names.
    dataset = out / "data" / "metaworld_scripted" / "custom" / "1.0.0"
    assert (dataset / "dataset_info.json").exists()
    for name in ("atomskill", "act_like", "mlp"):
        assert (out / name / "config.json").exists(), name
        assert os.listdir(out / name / "skill" / "checkpoints"), name
        assert list((out / name / "eval").rglob("report.md")), name
    assert os.listdir(out / "atomskill" / "sampler" / "checkpoints")
    assert os.listdir(out / "atomskill" / "plots")


def test_demo_defaults_are_the_embedded_demo():
    from atomskill_jax import demo

    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    assert demo._options(parser.parse_args([])) == {
        "out": "demo_out", "tasks": None, "episodes_per_task": 25, "eval_episodes": 10,
        "eval_max_steps": None, "eval_workers": None, "variant": "cpu"}
    # A parser that declares only --out (cli.py before the options) gets the same.
    assert demo._options(argparse.Namespace(out="demo_out")) == demo._options(
        parser.parse_args([]))
    with pytest.raises(ValueError, match="--eval-episodes must be at least 1"):
        demo._options(parser.parse_args(["--eval-episodes=0"]))
    with pytest.raises(ValueError, match="unknown MetaWorld task 'pick-plaice'"):
        demo._options(parser.parse_args(["--tasks=pick-plaice"]))


def test_default_demo_runs_the_commands_it_always_ran(monkeypatch, tmp_path):
    from atomskill_jax import demo

    ran = []
    monkeypatch.setattr(demo, "_run", lambda title, args, timings: ran.append((title, args)))
    monkeypatch.setattr(demo, "_print_skills", lambda path: ran.append(("skills", path)))
    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    out = str(tmp_path / "demo_out")
    assert demo.main(parser.parse_args([f"--out={out}"])) == 0
    cfg = os.path.join(REPO, "configs")
    data, ws, wa, wm = (os.path.join(out, d) for d in ("data", "atomskill", "act_like", "mlp"))
    train = ["train", f"--config={cfg}/atomskill.py:cpu", f"--config.data.data_dir={data}"]
    evaluate = ["eval", "--suite=rlbench6", "--episodes=10", "--seeds=0"]
    assert ran == [
        ("build rlbench6 demonstrations", ["build-data", "metaworld", "--suite=rlbench6",
                                           "--episodes-per-task=25", "--action-noise=0.1",
                                           f"--out={data}"]),
        ("skills", os.path.join(data, "metaworld_scripted", "rlbench6", "1.0.0")),
        ("train AtomSkill (cpu config)", [*train, f"--workdir={ws}"]),
        ("train the ACT-like baseline (no skill tokens)",
         [*train, f"--workdir={wa}", "--config.model.decoder.skill_conditioning=False"]),
        ("train the MLP floor (state -> action chunk)",
         ["train", f"--config={cfg}/mlp.py:cpu", f"--config.data.data_dir={data}",
          f"--workdir={wm}"]),
        ("evaluate AtomSkill closed loop", [*evaluate, f"--workdir={ws}", "--name=AtomSkill"]),
        ("evaluate the ACT-like baseline", [*evaluate, f"--workdir={wa}", "--name=ACT-like"]),
        ("evaluate the MLP floor", [*evaluate, f"--workdir={wm}", "--name=MLP"]),
        ("plot skill embeddings (t-SNE) and segmentations", ["plot", f"--workdir={ws}"]),
        ("compare", ["eval", "--compare", ws, wa, wm]),
    ]
