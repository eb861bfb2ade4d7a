"""`atomskill reproduce TABLE --out=DIR`: one of the AtomSkill paper's tables, end to end.

    atomskill reproduce table1 --out=DIR     # AtomSkill vs the ACT-like baseline
    atomskill reproduce table4 --out=DIR     # contrastive terms: full, no_temporal, ...
    atomskill reproduce table5 --out=DIR     # keypose prediction: full vs no_keypose
      [--config=configs/atomskill.py:cpu] [--train-seeds=1] [--eval-seeds=0,1,2]
      [--episodes=20] [--data=DATA] [--print-commands] [--config.a.b=v ...]

Stages, each the `atomskill` command a user would type (printed, run in its own
process, timed): build rlbench6 into DIR/data (unless --data; the builder reuses an
identical build and refuses a different one), train every variant of the table x
training seed into DIR/<variant>_seed<k>, evaluate each closed loop, then write
DIR/<table>.md/.json/.csv through `eval.report.compare`, one row per variant.

Nothing finished is redone: a run trained by this command before (same `train`
command, its checkpoints still there: W/reproduce_train.json) is not started again (an
interrupted one is resumed by the trainer, which also stops at once when already at
its final step), and a run with a report of the same tasks, episodes, seeds, episode
cap and default runtime options at its latest checkpoint is not evaluated again.
The tables are defined in configs/sweeps/tables.py over configs/sweeps/ablations.py.
"""

from __future__ import annotations

import csv
import glob
import importlib.util
import json
import os
import shlex
import time

from atomskill_jax import child_commands

TRAIN_MARKER = "reproduce_train.json"
DEFAULT_RUNTIME = {"requery_every": 1, "epsilon": None, "max_skill_steps": None,
                   "ensemble_m": None, "resample_every": None,
                   "use_ema": True}  # `atomskill eval` defaults
DEMOS_PER_TASK, ACTION_NOISE = 25, 0.1  # the demo's rlbench6 build


def _configs_dir() -> str:
    import configs

    return os.path.dirname(os.path.abspath(configs.__file__))


def _short(path: str) -> str:
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def load_tables():
    """configs/sweeps/tables.py as a module (TABLES, DESCRIPTIONS, ABLATIONS, get_sweep)."""
    path = os.path.join(_configs_dir(), "sweeps", "tables.py")
    spec = importlib.util.spec_from_file_location("atomskill_sweep_tables", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, path


def add_parser(sub) -> None:
    p = sub.add_parser("reproduce", help="reproduce a table of the AtomSkill paper: data, "
                                         "training, evaluation, table")
    p.add_argument("table", help="table1 (AtomSkill vs ACT-like), table4 (contrastive "
                                 "ablation), table5 (keypose ablation), usr_table1 (USR "
                                 "few-shot protocol: eval/reproduce_usr.py)")
    p.add_argument("--out", required=True, help="directory of the data, runs and table")
    p.add_argument("--config", default=None,
                   help="configs/FILE.py:VARIANT (default: configs/atomskill.py:cpu)")
    p.add_argument("--train-seeds", type=int, default=1,
                   help="training runs per variant (seeds 0..N-1)")
    p.add_argument("--eval-seeds", "--seeds", dest="eval_seeds", default="0,1,2",
                   help="comma-separated evaluation seeds")
    p.add_argument("--episodes", type=int, default=20, help="episodes per task and eval seed")
    p.add_argument("--data", default=None,
                   help="an existing data root holding metaworld_scripted/rlbench6 (as built "
                        "by build-data --out), or a dataset version directory; default: "
                        "build rlbench6 into OUT/data")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--suite", default=None, help="MetaWorld suite (default: rlbench6)")
    which.add_argument("--tasks", default=None,
                       help="comma-separated MetaWorld tasks instead of a suite (quick checks)")
    p.add_argument("--demos-per-task", type=int, default=DEMOS_PER_TASK,
                   help="demonstrations per task when building the data")
    p.add_argument("--action-noise", type=float, default=ACTION_NOISE,
                   help="execution noise of the expert demonstrations when building the data")
    p.add_argument("--max-steps", type=int, default=None,
                   help="evaluation episode cap (default: the task's)")
    p.add_argument("--eval-workers", type=int, default=None,
                   help="rollout processes per evaluation (default: eval's, the CPU count; "
                        "0: in the eval process)")
    p.add_argument("--print-commands", action="store_true",
                   help="print every `atomskill` command of the table and exit")
    from atomskill_jax.eval import reproduce_usr  # stdlib only at import

    reproduce_usr.add_arguments(p)


# -- the plan ------------------------------------------------------------------------

def _dataset_dir(path: str) -> bool:
    """A dataset version directory, or one holding version directories."""
    if os.path.exists(os.path.join(path, "dataset_info.json")):
        return True
    return bool(glob.glob(os.path.join(path, "*", "dataset_info.json")))


def _datasets_literal(name: str) -> str:
    return repr(({"name": name, "weight": 1.0},))


def plan(args) -> dict:
    """Everything the table needs, as commands (argv lists without `atomskill`)."""
    from atomskill_jax.envs import metaworld_tasks
    from atomskill_jax.training import config_flags, sweep

    tables_mod, tables_path = load_tables()
    if args.table not in tables_mod.TABLES:
        raise ValueError(f"unknown table {args.table!r}; expected one of: " + "; ".join(
            f"{name} ({t['title']})" for name, t in {**tables_mod.TABLES,
                                                     **tables_mod.OTHER_TABLES}.items()))
    if args.train_seeds < 1 or args.episodes < 1:
        raise ValueError("--train-seeds and --episodes must be >= 1")
    eval_seeds = [int(s) for s in args.eval_seeds.split(",") if s.strip()]
    if not eval_seeds or len(set(eval_seeds)) != len(eval_seeds):
        raise ValueError(f"--eval-seeds={args.eval_seeds}: give distinct seeds, e.g. 0,1,2")
    table = tables_mod.TABLES[args.table]
    out = os.path.abspath(args.out)
    config_spec = args.config or _short(os.path.join(_configs_dir(), "atomskill.py")) + ":cpu"
    suite = None if args.tasks else (args.suite or "rlbench6")
    tasks = [metaworld_tasks.canonical_task(t)
             for t in metaworld_tasks.resolve_tasks(suite, args.tasks)]
    which = f"--suite={suite}" if suite else f"--tasks={args.tasks}"
    dataset_name = f"metaworld_scripted/{suite or 'custom'}"

    build = None
    if args.data:
        data = os.path.abspath(args.data)
        if _dataset_dir(data):  # a dataset itself
            data_args = [f"--config.data.datasets={_datasets_literal(data)}"]
        else:  # a root: the builder's --out
            data_args = [f"--config.data.data_dir={data}"]
            if not args.print_commands and not os.path.isdir(os.path.join(data, dataset_name)):
                raise FileNotFoundError(
                    f"--data={args.data}: neither a dataset directory nor a data root holding "
                    f"{dataset_name} (build it with `atomskill build-data metaworld {which} "
                    f"--out={args.data}`, or leave --data out)")
    else:
        data = os.path.join(out, "data")
        build = ["build-data", "metaworld", which, f"--episodes-per-task={args.demos_per_task}",
                 f"--action-noise={args.action_noise}", f"--out={data}"]
        data_args = [f"--config.data.data_dir={data}"]
    if not args.data or not _dataset_dir(os.path.abspath(args.data)):
        config = config_flags.load_config(config_spec)
        if [dict(d) for d in config.data.datasets] != [{"name": dataset_name, "weight": 1.0}]:
            data_args.append(f"--config.data.datasets={_datasets_literal(dataset_name)}")

    extra = [*data_args, *args.config_overrides]
    sweep_spec = f"{tables_path}:table={args.table},seeds={args.train_seeds}"
    runs = []
    for (run_dir, train_argv), overrides in zip(
            sweep.expand(config_spec, sweep_spec, out, extra),
            tables_mod.get_sweep(f"table={args.table},seeds={args.train_seeds}")):
        name = overrides["name"]
        variant = name.rsplit("_seed", 1)[0]
        eval_argv = ["eval", f"--workdir={run_dir}", which, f"--episodes={args.episodes}",
                     f"--seeds={','.join(map(str, eval_seeds))}", f"--name={name}"]
        if args.max_steps:
            eval_argv.append(f"--max-steps={args.max_steps}")
        if args.eval_workers is not None:
            eval_argv.append(f"--workers={args.eval_workers}")
        runs.append({"name": name, "variant": variant, "seed": overrides["seed"],
                     "workdir": run_dir, "train": train_argv, "eval": eval_argv})
    return {"table": args.table, "title": table["title"], "variants": list(table["variants"]),
            "descriptions": {v: tables_mod.DESCRIPTIONS[v] for v in table["variants"]},
            "overrides": {v: dict(tables_mod.ABLATIONS[v]) for v in table["variants"]},
            "out": out, "config": config_spec, "suite": suite, "tasks": tasks,
            "eval_seeds": eval_seeds, "episodes": args.episodes, "max_steps": args.max_steps,
            "train_seeds": args.train_seeds, "build": build, "runs": runs}


def _command(argv: list[str]) -> str:
    return shlex.join(["atomskill", *argv])


def print_commands(p: dict, rerun: str) -> None:
    if p["build"]:
        print(_command(p["build"]))
    for run in p["runs"]:
        print(_command(run["train"]))
    for run in p["runs"]:
        print(_command(run["eval"]))
    print(f"# then, to write {os.path.join(p['out'], p['table'])}.md from the runs above:")
    print(f"# {rerun}")


# -- what is already done -------------------------------------------------------------

def _steps(directory: str) -> list[int]:
    if not os.path.isdir(directory):
        return []
    return sorted(int(n) for n in os.listdir(directory) if n.isdigit())


def checkpoint_steps(workdir: str) -> dict[str, int]:
    """{stage: latest complete checkpoint step} (orbax writes steps under tmp names first),
    for every stage of the workdir (AtomSkill's skill/sampler, USR's pretrain/adapt, ...)."""
    from atomskill_jax.training import workdir as workdir_layout

    out = {}
    for stage in workdir_layout.stages_with_checkpoints(workdir):
        steps = _steps(os.path.join(workdir, stage, "checkpoints"))
        if steps:
            out[stage] = steps[-1]
    return out


def latest_step(workdir: str) -> int | None:
    """The step `atomskill eval` loads: the sampler's if it has one, else the skill's."""
    steps = checkpoint_steps(workdir)
    return steps.get("sampler", steps.get("skill"))


def trained(run: dict) -> bool:
    """True when this command trained the run before and its checkpoints are still there;
    an error when the workdir was trained by a different command."""
    path = os.path.join(run["workdir"], TRAIN_MARKER)
    if not os.path.exists(path):
        return False
    with open(path) as f:
        marker = json.load(f)
    if marker.get("train") != run["train"]:
        raise FileExistsError(
            f"{run['workdir']} was trained by another command:\n  {_command(marker.get('train', []))}"
            f"\nnot\n  {_command(run['train'])}\nuse another --out, or remove that workdir")
    have = checkpoint_steps(run["workdir"])
    return all(have.get(stage) == step for stage, step in marker.get("checkpoints", {}).items())


def _mark_trained(run: dict) -> None:
    marker = {"train": run["train"], "checkpoints": checkpoint_steps(run["workdir"]),
              "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    with open(os.path.join(run["workdir"], TRAIN_MARKER), "w") as f:
        json.dump(marker, f, indent=1)


def find_report(run: dict, p: dict, step: int | None = None) -> str | None:
    """The newest report under W/eval/ made with this table's evaluation settings at the
    run's latest checkpoint (or at `step`), or None."""
    step = latest_step(run["workdir"]) if step is None else step
    found = []
    for path in glob.glob(os.path.join(run["workdir"], "eval", "*", "report.json")):
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError):
            continue
        meta = data.get("meta", {})
        runtime = {k: meta.get("runtime_options", {}).get(k) for k in DEFAULT_RUNTIME}
        if (data.get("tasks") == p["tasks"] and data.get("seeds") == p["eval_seeds"]
                and data.get("episodes_per_task") == p["episodes"]
                and meta.get("checkpoint_step") == step and runtime == DEFAULT_RUNTIME
                and meta.get("max_steps") == (p["max_steps"] or "task default")):
            found.append(path)
    return os.path.dirname(max(found, key=os.path.getmtime)) if found else None


# -- running ------------------------------------------------------------------------

class _Stages:
    def __init__(self):
        self.timings: list[tuple[str, float | None]] = []

    def run(self, title: str, argv: list[str]) -> None:
        print(f"\n== {title}\n$ {_command(argv)}", flush=True)
        start = time.time()
        code = child_commands.run(child_commands.atomskill_command(argv))  # Ctrl-C: checkpoint
        self.timings.append((title, time.time() - start))
        if code != 0:
            raise RuntimeError(f"stage '{title}' failed (exit {code}); its command: "
                               f"{_command(argv)}")

    def skip(self, title: str, why: str) -> None:
        print(f"\n== {title}: {why}", flush=True)
        self.timings.append((title, None))


def merged_report(variant: str, reports: list, train_seeds: list[int]):
    """One report per variant: a run's as is, or several training runs' episodes with
    each (training seed, eval seed) pair as one seed (k * M + s), so the interval covers
    training-seed variation too."""
    from atomskill_jax.eval.report import Report

    if len(reports) == 1:
        r = reports[0]
        return Report(name=variant, tasks=r.tasks, seeds=r.seeds,
                      episodes_per_task=r.episodes_per_task, results=r.results,
                      groups=r.groups, meta=r.meta)
    import dataclasses

    mult = max(1000, 10 ** len(str(max(s for r in reports for s in r.seeds))))
    results, seeds = [], []
    for k, r in zip(train_seeds, reports):
        seeds += [k * mult + s for s in r.seeds]
        results += [dataclasses.replace(e, seed=k * mult + e.seed) for e in r.results]
    first = reports[0]
    meta = {"checkpoint_step": "/".join(str(r.meta.get("checkpoint_step")) for r in reports),
            "versions": first.meta.get("versions", {}),
            "command": "; ".join(r.meta.get("command", "") for r in reports),
            "seed_encoding": f"training seed k, eval seed s -> k*{mult}+s"}
    return Report(name=variant, tasks=first.tasks, seeds=seeds,
                  episodes_per_task=first.episodes_per_task, results=results,
                  groups=first.groups, meta=meta)


def write_table(p: dict, report_dirs: dict[str, str]) -> dict[str, str]:
    """DIR/<table>.md, .json, .csv from the runs' reports; returns their paths."""
    from atomskill_jax.eval import report as report_lib

    rows = []
    for variant in p["variants"]:
        runs = [r for r in p["runs"] if r["variant"] == variant]
        reports = [report_lib.load_report(report_dirs[r["name"]]) for r in runs]
        rows.append((variant, runs, merged_report(variant, reports, [r["seed"] for r in runs])))
    table_md = report_lib.compare([m for _, _, m in rows], names=[v for v, _, _ in rows])
    legend = "\n".join(
        f"- `{v}`: {p['descriptions'][v]}; overrides: "
        + (", ".join(f"`{k}={val}`" for k, val in p["overrides"][v].items()) or "none")
        for v in p["variants"])
    where = p["suite"] or ",".join(p["tasks"])
    markdown = (f"# {p['title']}\n\n{where}, {p['episodes']} episodes per task per eval seed, "
                f"eval seeds {p['eval_seeds']}, {p['train_seeds']} training run(s) per variant, "
                f"config `{p['config']}`.\n\n{legend}\n\n{table_md}")
    base = os.path.join(p["out"], p["table"])
    paths = {"markdown": base + ".md", "json": base + ".json", "csv": base + ".csv"}
    with open(paths["markdown"], "w") as f:
        f.write(markdown)
    csv_rows = []
    for variant, _, merged in rows:
        csv_rows += [{"variant": variant, **row} for row in report_lib.summary_rows(merged)]
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(csv_rows[0]))
        writer.writeheader()
        writer.writerows(csv_rows)
    summary = {}
    for variant, runs, merged in rows:
        full = merged.to_dict()
        summary[variant] = {
            "description": p["descriptions"][variant], "overrides": p["overrides"][variant],
            "runs": [{"name": r["name"], "workdir": r["workdir"], "train_seed": r["seed"],
                      "report": report_dirs[r["name"]], "train_command": _command(r["train"]),
                      "eval_command": _command(r["eval"])} for r in runs],
            "seeds": merged.seeds, "summary": full["summary"]}
    with open(paths["json"], "w") as f:
        json.dump({k: p[k] for k in ("table", "title", "config", "suite", "tasks",
                                     "eval_seeds", "episodes", "max_steps", "train_seeds")}
                  | {"rows": summary, "markdown": markdown}, f, indent=1)
    return paths


def run(args) -> int:
    from atomskill_jax.eval import reproduce_usr

    if args.table == reproduce_usr.TABLE:  # its own protocol: four configs, a sweep over k
        return reproduce_usr.run(args)
    p = plan(args)
    argv = getattr(args, "argv", None) or [args.table, f"--out={args.out}"]
    rerun = _command(["reproduce", *[a for a in argv if a not in ("reproduce", "--print-commands")]])
    if args.print_commands:
        print_commands(p, rerun)
        return 0
    os.makedirs(p["out"], exist_ok=True)
    stages, start = _Stages(), time.time()
    print(f"{p['title']}: {len(p['runs'])} runs ({', '.join(r['name'] for r in p['runs'])}) "
          f"in {p['out']}", flush=True)
    if p["build"]:
        stages.run(f"build the {p['suite'] or 'task'} demonstrations", p["build"])
    for run_ in p["runs"]:
        title = f"train {run_['name']}"
        if trained(run_):
            stages.skip(title, f"already trained ({run_['workdir']}, checkpoints "
                               f"{checkpoint_steps(run_['workdir'])})")
            continue
        stages.run(title, run_["train"])  # resumes an interrupted run from its workdir
        _mark_trained(run_)
    report_dirs = {}
    for run_ in p["runs"]:
        title = f"evaluate {run_['name']}"
        found = find_report(run_, p)
        if found:
            stages.skip(title, f"reusing the report {found}")
        else:
            stages.run(title, run_["eval"])
            found = find_report(run_, p)
            if found is None:
                raise RuntimeError(f"{title}: no matching report under {run_['workdir']}/eval "
                                   f"after `{_command(run_['eval'])}`")
        report_dirs[run_["name"]] = found
    paths = write_table(p, report_dirs)
    with open(paths["markdown"]) as f:
        print("\n" + f.read())
    print("== what each stage cost")
    for title, seconds in stages.timings:
        cost = "reused" if seconds is None else f"{seconds / 60:5.1f} min"
        print(f"   {title:48s} {cost}")
    print(f"   {'total':48s} {(time.time() - start) / 60:5.1f} min")
    print(f"\ntable: {paths['markdown']} (+ .json, .csv)")
    return 0


# Public for the other protocols' modules (reproduce_usr.py).
Stages, command_line, mark_trained = _Stages, _command, _mark_trained

__all__ = ["add_parser", "run", "plan", "load_tables", "find_report", "trained",
           "Stages", "command_line", "mark_trained", "checkpoint_steps", "latest_step",
           "write_table", "merged_report"]
