"""`atomskill reproduce usr_table1 --out=DIR`: the USR paper's Table 1 (few-shot adaptation)
on MetaWorld ML45, end to end.

    atomskill reproduce usr_table1 --out=DIR [--shots=5,10,50] [--seeds=0,1,2]
        [--episodes=20] [--in-distribution] [--eval-workers=N] [--print-commands]

Stages, each the `atomskill` command a user would type (printed, run in its own process,
timed): build ml45_train (25 demos per task) into DIR/data/ml45_train and pre-train USR
Stage I on it once (DIR/usr_pretrain); then per demos-per-task k: build ml45_test with k
demos into DIR/data/ml45_test_k<k>, adapt USR and USR (No Skill) from the pre-training
checkpoint (with its statistics), train AtomSkill and the MLP floor from scratch on the
same demos (DIR/<row>_k<k>), evaluate each on the evaluation layouts. The table
(DIR/usr_table1.md/.json/.csv) has one row per method and one column per k, SR and ATP as
mean ± 95% CI over evaluation seeds; it is rewritten after every k, so a long protocol
shows its first columns early. `--in-distribution` adds the seed's Figure 2 check: a USR
adapted on the ml45_train demos themselves, evaluated on those 45 tasks.

Nothing finished is redone (the rules of reproduce.py): a build with the same command
and its dataset present, a run trained by the same command with its checkpoints still
there, a report of the same tasks, seeds, episodes and defaults at the run's checkpoint.
What each stage cost is kept in DIR/usr_table1_costs.json, so a resumed protocol still
says what the reused stages took. The rows and the sweep over k: configs/sweeps/usr_shots.py.
"""

from __future__ import annotations

import csv
import glob
import importlib.util
import json
import os
import time

from atomskill_jax.eval import reproduce

TABLE = "usr_table1"
TITLE = "USR Table 1: few-shot adaptation on MetaWorld ML45"
BUILD_MARKER = "reproduce_build.json"
IN_DISTRIBUTION = "usr_in_distribution"


def add_arguments(p) -> None:
    """This table's options on the `reproduce` parser."""
    p.add_argument("--shots", default=None,
                   help=f"{TABLE}: comma-separated demonstrations per task (default 5,10,50)")
    p.add_argument("--in-distribution", action="store_true",
                   help=f"{TABLE}: also adapt USR on ml45_train and evaluate it on those 45 "
                        "tasks (the seed's Figure 2; expensive)")


def _configs_dir() -> str:
    import configs

    return os.path.dirname(os.path.abspath(configs.__file__))


def _config_spec(name: str) -> str:
    path = os.path.join(_configs_dir(), name)
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def load_shots_sweep():
    """configs/sweeps/usr_shots.py as a module (ROWS, SHOTS, get_sweep, ...) and its path."""
    path = os.path.join(_configs_dir(), "sweeps", "usr_shots.py")
    spec = importlib.util.spec_from_file_location("atomskill_sweep_usr_shots", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, path


# -- the plan ------------------------------------------------------------------------

def _refuse_other_tables_options(args) -> None:
    given = [flag for flag, value in (("--data", args.data), ("--suite", args.suite),
                                      ("--tasks", args.tasks), ("--config", args.config))
             if value]
    if args.train_seeds != 1:
        given.append("--train-seeds")
    if getattr(args, "config_overrides", None):
        given.append("--config.*")
    if given:
        raise ValueError(f"reproduce {TABLE}: {', '.join(given)} not taken here: this table "
                         "builds its own ml45_train/ml45_test data and trains four configs "
                         "(configs/sweeps/usr_shots.py); use --shots, --seeds, --episodes")


def _eval_argv(workdir, suite, name, args, eval_seeds):
    argv = ["eval", f"--workdir={workdir}", f"--suite={suite}", f"--episodes={args.episodes}",
            f"--seeds={','.join(map(str, eval_seeds))}", f"--name={name}"]
    if args.max_steps:
        argv.append(f"--max-steps={args.max_steps}")
    if args.eval_workers is not None:
        argv.append(f"--workers={args.eval_workers}")
    return argv


def _build(suite: str, demos: int, noise: float, out_dir: str) -> dict:
    return {"title": f"build {suite} ({demos} demos per task)", "suite": suite,
            "data_dir": out_dir,
            "argv": ["build-data", "metaworld", f"--suite={suite}",
                     f"--episodes-per-task={demos}", f"--action-noise={noise}",
                     f"--out={out_dir}"]}


def plan(args) -> dict:
    """Everything the table needs, as commands (argv lists without `atomskill`), in the
    order they run: pre-training data and Stage I, then per k its build, trainings and
    evaluations, then the optional in-distribution check."""
    from atomskill_jax.envs import metaworld_tasks
    from atomskill_jax.training import sweep

    _refuse_other_tables_options(args)
    shots_mod, shots_path = load_shots_sweep()
    try:
        shots = (tuple(int(s) for s in args.shots.split(",") if s.strip()) if args.shots
                 else tuple(shots_mod.SHOTS))
    except ValueError:
        raise ValueError(f"--shots={args.shots}: give comma-separated counts, e.g. 5,10,50")
    if not shots or any(k < 1 for k in shots) or len(set(shots)) != len(shots):
        raise ValueError(f"--shots={args.shots}: give distinct positive counts, e.g. 5,10,50")
    if args.episodes < 1:
        raise ValueError("--episodes must be >= 1")
    eval_seeds = [int(s) for s in args.eval_seeds.split(",") if s.strip()]
    if not eval_seeds or len(set(eval_seeds)) != len(eval_seeds):
        raise ValueError(f"--seeds={args.eval_seeds}: give distinct seeds, e.g. 0,1,2")
    out = os.path.abspath(args.out)
    data_root = os.path.join(out, "data")
    train_suite, test_suite = shots_mod.PRETRAIN_SUITE, shots_mod.TEST_SUITE
    demos = args.demos_per_task  # the pre-training build's (reproduce's default: 25)

    def tasks(suite):
        return [metaworld_tasks.canonical_task(t) for t in metaworld_tasks.resolve_tasks(suite)]

    pre_build = _build(train_suite, demos, args.action_noise,
                       os.path.join(data_root, train_suite))
    pre_dir = os.path.join(out, "usr_pretrain")
    usr_spec = _config_spec(shots_mod.ROWS["usr"]["config"])
    pretrain = {"name": "usr_pretrain", "workdir": pre_dir, "stage": "pretrain",
                "train": ["train", f"--config={usr_spec}", f"--workdir={pre_dir}",
                          "--config.stage=pretrain",
                          f"--config.data.data_dir={pre_build['data_dir']}",
                          f"--config.data.datasets={shots_mod.datasets(train_suite)!r}"]}

    # The sweep file names every (row, k) run and its overrides; one expand per config.
    shots_arg = "+".join(map(str, shots))
    by_name = {}
    for row, info in shots_mod.ROWS.items():
        arg = f"rows={row},shots={shots_arg},data={data_root},pretrain={pre_dir}"
        for run_dir, train_argv in sweep.expand(_config_spec(info["config"]),
                                                f"{shots_path}:{arg}", out):
            by_name[os.path.basename(run_dir)] = (run_dir, train_argv)
    columns = []
    for k in shots:
        runs = []
        for row, info in shots_mod.ROWS.items():
            name = shots_mod.run_name(row, k)
            run_dir, train_argv = by_name[name]
            runs.append({"name": name, "row": row, "shots": k, "workdir": run_dir,
                         "stage": info["policy_stage"], "train": train_argv,
                         "tasks": tasks(test_suite), "suite": test_suite,
                         "eval": _eval_argv(run_dir, test_suite, name, args, eval_seeds)})
        columns.append({"shots": k, "build": _build(test_suite, k, args.action_noise,
                                                     shots_mod.test_data_dir(data_root, k)),
                        "runs": runs})
    in_dist = None
    if args.in_distribution:
        # Adapted on the pre-training demos themselves; its prior and policy have seen
        # these 45 tasks, so this is the seed's upper reference, not a few-shot number.
        w = os.path.join(out, IN_DISTRIBUTION)
        ckpt = shots_mod.pretrain_checkpoints(pre_dir)
        in_dist = {"name": IN_DISTRIBUTION, "row": "usr", "shots": demos, "workdir": w,
                   "stage": shots_mod.ROWS["usr"]["policy_stage"], "tasks": tasks(train_suite),
                   "suite": train_suite,
                   "train": ["train", f"--config={usr_spec}", f"--workdir={w}",
                             "--config.stage=adapt",
                             f"--config.data.data_dir={pre_build['data_dir']}",
                             f"--config.data.datasets={shots_mod.datasets(train_suite)!r}",
                             f"--config.train.init_from={ckpt}",
                             f"--config.data.statistics_from={ckpt}"],
                   "eval": _eval_argv(w, train_suite, IN_DISTRIBUTION, args, eval_seeds)}
    return {"table": TABLE, "title": TITLE, "out": out, "shots": list(shots),
            "rows": {r: info["title"] for r, info in shots_mod.ROWS.items()},
            "eval_seeds": eval_seeds, "episodes": args.episodes, "max_steps": args.max_steps,
            "pretrain_demos": demos, "action_noise": args.action_noise,
            "pretrain_build": pre_build, "pretrain": pretrain, "columns": columns,
            "in_distribution": in_dist}


def print_commands(p: dict, rerun: str) -> None:
    cmd = reproduce.command_line
    print(cmd(p["pretrain_build"]["argv"]))
    print(cmd(p["pretrain"]["train"]))
    for column in p["columns"]:
        print(cmd(column["build"]["argv"]))
        for run_ in column["runs"]:
            print(cmd(run_["train"]))
        for run_ in column["runs"]:
            print(cmd(run_["eval"]))
    if p["in_distribution"]:
        print(cmd(p["in_distribution"]["train"]))
        print(cmd(p["in_distribution"]["eval"]))
    print(f"# then, to write {os.path.join(p['out'], p['table'])}.md from the runs above:")
    print(f"# {rerun}")


# -- what is already done -------------------------------------------------------------

def built(build: dict) -> bool:
    """True when this command built the dataset before and it is still there."""
    path = os.path.join(build["data_dir"], BUILD_MARKER)
    if not os.path.exists(path):
        return False
    with open(path) as f:
        marker = json.load(f)
    pattern = os.path.join(build["data_dir"], "metaworld_scripted", build["suite"], "*",
                           "dataset_info.json")
    return marker.get("argv") == build["argv"] and bool(glob.glob(pattern))


def mark_built(build: dict) -> None:
    with open(os.path.join(build["data_dir"], BUILD_MARKER), "w") as f:
        json.dump({"argv": build["argv"], "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
                  f, indent=1)


def find_report(run_: dict, p: dict) -> str | None:
    """The newest matching report of a run, at the checkpoint of the stage eval loads."""
    step = reproduce.checkpoint_steps(run_["workdir"]).get(run_["stage"])
    settings = {"tasks": run_["tasks"], "eval_seeds": p["eval_seeds"],
                "episodes": p["episodes"], "max_steps": p["max_steps"]}
    return None if step is None else reproduce.find_report(run_, settings, step=step)


# -- the table ------------------------------------------------------------------------

def _pct(est) -> str:
    if est.n == 0:
        return "–"
    if est.ci95 != est.ci95:  # NaN: one seed
        return f"{100 * est.mean:.1f}"
    return f"{100 * est.mean:.1f} ± {100 * est.ci95:.1f}"


def _average(report) -> dict:
    return report.summary()["groups"]["average"]


def render(p: dict, report_dirs: dict[str, str], costs: dict[str, float] | None = None) -> str:
    """The markdown table from the runs' report directories ({run name: dir}); a run
    without a report is a "–" cell."""
    from atomskill_jax.eval import report as report_lib

    reports = {name: report_lib.load_report(d) for name, d in report_dirs.items()}
    head = [f"{k} demos" for k in p["shots"]]
    lines = [f"# {TITLE}", "",
             f"Stage I pre-trained once on ml45_train ({p['pretrain_demos']} demos per task, "
             f"action noise {p['action_noise']:g}); each row adapted (USR) or trained from "
             f"scratch (AtomSkill, MLP) on ml45_test with k demos per task; evaluated on the "
             f"evaluation layouts, seeds {p['eval_seeds']} x {p['episodes']} episodes per "
             f"task.", "",
             "| Method | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    by_cell = {(r["row"], c["shots"]): r for c in p["columns"] for r in c["runs"]}
    for row, title in p["rows"].items():
        cells = []
        for k in p["shots"]:
            rep = reports.get(by_cell[(row, k)]["name"])
            if rep is None:
                cells.append("–")
                continue
            avg = _average(rep)
            cells.append(f"{_pct(avg['sr'])} (ATP {_pct(avg['atp'])})")
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    lines += ["", "SR (ATP) in %, mean ± 95% CI half-width over evaluation seeds "
                  "(t-distribution), averaged over the 5 ml45_test tasks.", ""]
    for column in p["columns"]:
        have = [r for r in column["runs"] if r["name"] in reports]
        if have:
            lines += [f"## {column['shots']} demos per task, per task", "",
                      report_lib.compare([reports[r["name"]] for r in have],
                                         names=[p["rows"][r["row"]] for r in have])]
    ind = p["in_distribution"]
    if ind and ind["name"] in reports:
        rep = reports[ind["name"]]
        avg = _average(rep)
        lines += ["## In distribution (the seed's Figure 2)", "",
                  f"USR adapted on the ml45_train demos ({ind['shots']} per task) and evaluated "
                  f"on those {len(rep.tasks)} tasks: SR {_pct(avg['sr'])}, ATP "
                  f"{_pct(avg['atp'])}.", "", report_lib.compare([rep], names=["USR"])]
    if costs is not None:
        lines += ["## What each stage cost", "", "| Stage | minutes |", "|---|---|"]
        lines += [f"| {title} | {seconds / 60:.1f} |" for title, seconds in costs.items()]
        lines.append("")
    return "\n".join(lines)


def write_table(p: dict, report_dirs: dict[str, str],
                costs: dict[str, float] | None = None) -> dict[str, str]:
    """DIR/usr_table1.md, .json, .csv from the reports found so far; returns their paths."""
    from atomskill_jax.eval import report as report_lib

    markdown = render(p, report_dirs, costs)
    base = os.path.join(p["out"], p["table"])
    paths = {"markdown": base + ".md", "json": base + ".json", "csv": base + ".csv"}
    runs = [r for c in p["columns"] for r in c["runs"]]
    runs += [p["in_distribution"]] if p["in_distribution"] else []
    rows, csv_rows = {}, []
    for r in runs:
        if r["name"] not in report_dirs:
            continue
        rep = report_lib.load_report(report_dirs[r["name"]])
        full = rep.to_dict()
        rows[r["name"]] = {"row": r["row"], "shots": r["shots"], "suite": r["suite"],
                           "report": report_dirs[r["name"]], "seeds": rep.seeds,
                           "train_command": reproduce.command_line(r["train"]),
                           "eval_command": reproduce.command_line(r["eval"]),
                           "summary": full["summary"]}
        csv_rows += [{"run": r["name"], "row": r["row"], "shots": r["shots"],
                      "suite": r["suite"], **row} for row in report_lib.summary_rows(rep)]
    with open(paths["markdown"], "w") as f:
        f.write(markdown)
    with open(paths["csv"], "w", newline="") as f:
        fields = ["run", "row", "shots", "suite", "kind", "name", "sr_mean", "sr_ci95",
                  "atp_mean", "atp_ci95", "seeds"]
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(csv_rows)
    with open(paths["json"], "w") as f:
        json.dump({k: p[k] for k in ("table", "title", "shots", "eval_seeds", "episodes",
                                     "max_steps", "pretrain_demos", "action_noise")}
                  | {"runs": rows, "stage_minutes": {t: s / 60 for t, s in (costs or {}).items()},
                     "markdown": markdown}, f, indent=1)
    return paths


# -- running ------------------------------------------------------------------------

class _Costs:
    """Seconds per stage title, kept in DIR/usr_table1_costs.json across invocations."""

    def __init__(self, out: str):
        self.path = os.path.join(out, f"{TABLE}_costs.json")
        self.seconds = {}
        if os.path.exists(self.path):
            with open(self.path) as f:
                self.seconds = json.load(f)

    def record(self, title: str, seconds: float) -> None:
        self.seconds[title] = seconds
        with open(self.path, "w") as f:
            json.dump(self.seconds, f, indent=1)


def run(args) -> int:
    p = plan(args)
    argv = getattr(args, "argv", None) or [TABLE, f"--out={args.out}"]
    rerun = reproduce.command_line(
        ["reproduce", *[a for a in argv if a not in ("reproduce", "--print-commands")]])
    if args.print_commands:
        print_commands(p, rerun)
        return 0
    os.makedirs(p["out"], exist_ok=True)
    stages, costs, start = reproduce.Stages(), _Costs(p["out"]), time.time()

    def stage(title, argv_):
        stages.run(title, argv_)
        costs.record(title, stages.timings[-1][1])

    def build(b):
        if built(b):
            stages.skip(b["title"], f"already built ({b['data_dir']})")
        else:
            stage(b["title"], b["argv"])
            mark_built(b)

    def train(r):
        title = f"train {r['name']}"
        if reproduce.trained(r):
            stages.skip(title, f"already trained ({r['workdir']}, checkpoints "
                               f"{reproduce.checkpoint_steps(r['workdir'])})")
        else:
            stage(title, r["train"])  # the trainer resumes an interrupted run
            reproduce.mark_trained(r)

    def evaluate(r):
        title = f"evaluate {r['name']}"
        found = find_report(r, p)
        if found:
            stages.skip(title, f"reusing the report {found}")
        else:
            stage(title, r["eval"])
            found = find_report(r, p)
            if found is None:
                raise RuntimeError(f"{title}: no matching report under {r['workdir']}/eval "
                                   f"after `{reproduce.command_line(r['eval'])}`")
        report_dirs[r["name"]] = found

    n = sum(len(c["runs"]) for c in p["columns"]) + (1 if p["in_distribution"] else 0)
    print(f"{TITLE}: Stage I once, then {n} runs for k in {p['shots']} in {p['out']}",
          flush=True)
    report_dirs: dict[str, str] = {}
    build(p["pretrain_build"])
    train(p["pretrain"])
    for column in p["columns"]:
        build(column["build"])
        for r in column["runs"]:
            train(r)
        for r in column["runs"]:
            evaluate(r)
        write_table(p, report_dirs, costs.seconds)  # the columns so far
    if p["in_distribution"]:
        train(p["in_distribution"])
        evaluate(p["in_distribution"])
    paths = write_table(p, report_dirs, costs.seconds)
    with open(paths["markdown"]) as f:
        print("\n" + f.read())
    print("== what each stage cost (this invocation; reused: what it took when it ran)")
    for title, seconds in stages.timings:
        if seconds is None:
            before = costs.seconds.get(title)
            cost = "reused" + (f" ({before / 60:.1f} min then)" if before is not None else "")
        else:
            cost = f"{seconds / 60:5.1f} min"
        print(f"   {title:48s} {cost}")
    print(f"   {'total':48s} {(time.time() - start) / 60:5.1f} min")
    print(f"\ntable: {paths['markdown']} (+ .json, .csv)")
    return 0


__all__ = ["TABLE", "add_arguments", "plan", "print_commands", "built", "mark_built",
           "find_report", "render", "write_table", "run", "load_shots_sweep"]
