"""`atomskill demo`: the embedded default, end to end, on state observations.

Builds `rlbench6` from the MetaWorld experts (noisy execution, clean labels), shows
the atomic skills, trains AtomSkill and the ACT-like baseline with the `cpu` config and
the MLP floor (configs/mlp.py:cpu), evaluates all three closed loop on evaluation
layouts (never seen in training), plots AtomSkill's skill embeddings (t-SNE) and one
segmented episode per task, and prints the comparison table. Each stage runs the same
`atomskill` command a user would type (printed before it runs) and reports what it cost.

The defaults take about 12 minutes on 2 cores. For a quick look (or a test):

    atomskill demo --tasks=pick-place --episodes-per-task=2 --eval-episodes=1 \
        --eval-max-steps=40 --eval-workers=0 --variant=tiny --out=/tmp/demo_tiny
"""

from __future__ import annotations

import argparse
import collections
import os
import shlex
import sys
import time

from atomskill_jax import child_commands

SUITE = "rlbench6"
EPISODES_PER_TASK = 25
ACTION_NOISE = 0.1
EVAL_EPISODES = 10
VARIANT = "cpu"
# What `atomskill build-data --tasks=...` names a dataset that is not a suite.
CUSTOM_DATASET = "custom"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's options (cli.py's `demo` subparser and `python -m atomskill_jax.demo`)."""
    parser.add_argument("--out", default="demo_out", help="directory for data and workdirs")
    parser.add_argument("--tasks", default=None,
                        help=f"comma-separated MetaWorld tasks instead of the {SUITE} suite")
    parser.add_argument("--episodes-per-task", type=int, default=EPISODES_PER_TASK,
                        help="demonstrations built per task")
    parser.add_argument("--eval-episodes", type=int, default=EVAL_EPISODES,
                        help="closed-loop evaluation episodes per task")
    parser.add_argument("--eval-max-steps", type=int, default=None,
                        help="cap on evaluation episode length (default: the task's own, 500)")
    parser.add_argument("--eval-workers", type=int, default=None,
                        help="rollout processes per evaluation (default: eval's; 0: in the "
                             "eval process, which saves starting one for a short run)")
    parser.add_argument("--variant", default=VARIANT,
                        help="config variant of configs/atomskill.py and configs/mlp.py "
                             "(cpu; tiny trains a few steps, for a quick check)")


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser("demo", help="the embedded default, end to end")
    add_arguments(parser)
    return parser


def _options(args) -> dict:
    """The demo's settings from parsed arguments; options a caller's parser does not
    declare (an older cli.py declared only --out) take their defaults."""
    def get(name, default=None):
        value = getattr(args, name, None)
        return default if value is None else value

    options = {"out": get("out", "demo_out"), "tasks": get("tasks"),
               "episodes_per_task": get("episodes_per_task", EPISODES_PER_TASK),
               "eval_episodes": get("eval_episodes", EVAL_EPISODES),
               "eval_max_steps": get("eval_max_steps"), "eval_workers": get("eval_workers"),
               "variant": get("variant", VARIANT)}
    if options["eval_workers"] is not None and options["eval_workers"] < 0:
        raise ValueError(f"demo: --eval-workers must be 0 or more, got {options['eval_workers']}")
    for key in ("episodes_per_task", "eval_episodes", "eval_max_steps"):
        if options[key] is not None and int(options[key]) < 1:
            raise ValueError(f"demo: --{key.replace('_', '-')} must be at least 1, "
                             f"got {options[key]}")
    if options["tasks"] is not None:
        from atomskill_jax.envs import metaworld_tasks

        # Canonical names (and a clear error for a misspelt one) before anything runs.
        options["tasks"] = ",".join(metaworld_tasks.resolve_tasks(tasks=options["tasks"]))
    return options


def _run(title: str, args: list[str], timings: dict) -> None:
    print(f"\n== {title}\n$ atomskill {shlex.join(args)}", flush=True)
    start = time.time()
    code = child_commands.run(child_commands.atomskill_command(args))  # Ctrl-C: checkpoint
    timings[title] = time.time() - start
    if code != 0:
        raise SystemExit(f"demo: stage '{title}' failed (exit {code})")


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

    options = _options(args)
    cli.quiet_tensorflow()
    out = os.path.abspath(options["out"])
    data, w_skill, w_act, w_mlp = (os.path.join(out, d)
                                   for d in ("data", "atomskill", "act_like", "mlp"))
    tasks, variant = options["tasks"], options["variant"]
    # The default demo selects the suite; --tasks builds (and evaluates) a custom set.
    which = f"--suite={SUITE}" if tasks is None else f"--tasks={tasks}"
    dataset = SUITE if tasks is None else CUSTOM_DATASET
    timings: dict[str, float] = {}
    start = time.time()
    _run(f"build {SUITE if tasks is None else tasks} demonstrations", [
        "build-data", "metaworld", which,
        f"--episodes-per-task={options['episodes_per_task']}",
        f"--action-noise={ACTION_NOISE}", f"--out={data}"], timings)
    _print_skills(os.path.join(data, "metaworld_scripted", dataset, "1.0.0"))
    import configs

    config_dir = os.path.dirname(configs.__file__)
    config_file = os.path.join(config_dir, "atomskill.py")
    data_options = [f"--config.data.data_dir={data}"]
    if tasks is not None:  # the configs name the rlbench6 dataset
        data_options.append(f"--config.data.datasets=('metaworld_scripted/{dataset}',)")
    train = ["train", f"--config={config_file}:{variant}", *data_options]
    _run(f"train AtomSkill ({variant} config)", [*train, f"--workdir={w_skill}"], timings)
    _run("train the ACT-like baseline (no skill tokens)", [
        *train, f"--workdir={w_act}", "--config.model.decoder.skill_conditioning=False"],
        timings)
    _run("train the MLP floor (state -> action chunk)", [
        "train", f"--config={os.path.join(config_dir, 'mlp.py')}:{variant}", *data_options,
        f"--workdir={w_mlp}"], timings)
    evaluate = ["eval", which, f"--episodes={options['eval_episodes']}", "--seeds=0"]
    if options["eval_max_steps"] is not None:
        evaluate.append(f"--max-steps={options['eval_max_steps']}")
    if options["eval_workers"] is not None:
        evaluate.append(f"--workers={options['eval_workers']}")
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


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="python -m atomskill_jax.demo",
                                      description=__doc__.splitlines()[0])
    add_arguments(_parser)
    sys.exit(main(_parser.parse_args()))
