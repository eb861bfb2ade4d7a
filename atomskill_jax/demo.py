"""`atomskill demo`: the embedded default, end to end, on state observations.

Builds `rlbench6` from the MetaWorld experts (noisy execution, clean labels), shows
the atomic skills, trains AtomSkill and the ACT-like baseline with the `cpu` config and
the MLP floor (configs/mlp.py:cpu), evaluates all three closed loop on evaluation
layouts (never seen in training), plots AtomSkill's skill embeddings (t-SNE) and one
segmented episode per task, and prints the comparison table. Each stage runs the same
`atomskill` command a user would type (printed before it runs) and reports what it cost.
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import time

EPISODES_PER_TASK = 25
ACTION_NOISE = 0.1
EVAL_EPISODES = 10


def _run(title: str, args: list[str], timings: dict) -> None:
    print(f"\n== {title}\n$ atomskill {' '.join(args)}", flush=True)
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "atomskill_jax.cli", *args])
    timings[title] = time.time() - start
    if proc.returncode != 0:
        raise SystemExit(f"demo: stage '{title}' failed (exit {proc.returncode})")


def _print_skills(dataset_dir: str) -> None:
    import tensorflow_datasets as tfds

    builder = tfds.builder_from_directory(dataset_dir)
    per_task = {}
    for episode in tfds.as_numpy(builder.as_dataset(split="train")):
        task = episode["episode_metadata"]["task"].decode()
        if task in per_task:
            continue
        labels, lengths = [], collections.Counter()
        for step in episode["steps"]:
            seg = int(step["skill_segment"])
            if seg == len(labels):
                labels.append(step["skill_label"].decode())
            lengths[seg] += 1
        per_task[task] = " -> ".join(f"{lab}[{lengths[i]}]" for i, lab in enumerate(labels))
    print("\n== atomic skills of one episode per task (label[steps])")
    for task in sorted(per_task):
        print(f"   {task:18s} {per_task[task]}")


def main(args) -> int:
    from atomskill_jax import cli

    cli._quiet_tensorflow()
    out = os.path.abspath(args.out)
    data, w_skill, w_act, w_mlp = (os.path.join(out, d)
                                   for d in ("data", "atomskill", "act_like", "mlp"))
    timings: dict[str, float] = {}
    start = time.time()
    _run("build rlbench6 demonstrations", [
        "build-data", "metaworld", "--suite=rlbench6",
        f"--episodes-per-task={EPISODES_PER_TASK}", f"--action-noise={ACTION_NOISE}",
        f"--out={data}"], timings)
    _print_skills(os.path.join(data, "metaworld_scripted", "rlbench6", "1.0.0"))
    import configs

    config_dir = os.path.dirname(configs.__file__)
    config_file = os.path.join(config_dir, "atomskill.py")
    train = ["train", f"--config={config_file}:cpu", f"--config.data.data_dir={data}"]
    _run("train AtomSkill (cpu config)", [*train, f"--workdir={w_skill}"], timings)
    _run("train the ACT-like baseline (no skill tokens)", [
        *train, f"--workdir={w_act}", "--config.model.decoder.skill_conditioning=False"],
        timings)
    _run("train the MLP floor (state -> action chunk)", [
        "train", f"--config={os.path.join(config_dir, 'mlp.py')}:cpu",
        f"--config.data.data_dir={data}", f"--workdir={w_mlp}"], timings)
    evaluate = ["eval", "--suite=rlbench6", f"--episodes={EVAL_EPISODES}", "--seeds=0"]
    _run("evaluate AtomSkill closed loop", [*evaluate, f"--workdir={w_skill}",
                                            "--name=AtomSkill"], timings)
    _run("evaluate the ACT-like baseline", [*evaluate, f"--workdir={w_act}",
                                            "--name=ACT-like"], timings)
    _run("evaluate the MLP floor", [*evaluate, f"--workdir={w_mlp}", "--name=MLP"], timings)
    _run("plot skill embeddings (t-SNE) and segmentations", [
        "plot", f"--workdir={w_skill}"], timings)
    _run("compare", ["eval", "--compare", w_skill, w_act, w_mlp], timings)
    print("\n== what each stage cost")
    for title, seconds in timings.items():
        print(f"   {title:48s} {seconds / 60:5.1f} min")
    print(f"   {'total':48s} {(time.time() - start) / 60:5.1f} min")
    print(f"\noutputs: dataset {data}\n         workdirs {w_skill}, {w_act}, {w_mlp} "
          "(checkpoints, metrics.jsonl, TensorBoard events, eval/ reports,\n"
          f"         plots/ of {w_skill}: skill t-SNE, segmentations)")
    return 0
