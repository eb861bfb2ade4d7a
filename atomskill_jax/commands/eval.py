"""`atomskill eval`: closed-loop evaluation of a trained workdir, or a comparison table.

    atomskill eval --workdir=W --suite=rlbench6 --episodes=20 --seeds=0,1,2 [--workers=K]
    atomskill eval --compare W1 W2 DIR3 ...     # workdirs (their latest report) or report dirs

The report (JSON, CSV, markdown) goes to --out, default W/eval/<suite>-step<S>-<id>
(<id> hashes the evaluation: checkpoint, runtime options, tasks, seeds, episodes, cap),
and records the command, seeds, checkpoint step, the method and its runtime options,
its calibration (saved with the checkpoint) and versions. --out is checked before anything runs; finished episodes are written there as
they arrive, and the same command again (after a kill or a dead worker) runs only the
missing ones (`eval.episode_store`). This process never imports TensorFlow: rollouts
run in spawned workers that load the policy themselves.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a trained workdir closed loop (or --compare runs)")
    p.add_argument("--workdir", help="training workdir (atomskill train --workdir)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--suite", help="MetaWorld suite, e.g. rlbench6, mt10")
    which.add_argument("--tasks", help="comma-separated MetaWorld tasks")
    p.add_argument("--episodes", type=int, default=20, help="episodes per task and seed")
    p.add_argument("--seeds", default="0", help="comma-separated evaluation seeds, e.g. 0,1,2")
    p.add_argument("--out", default=None, help="report directory (default W/eval/...)")
    p.add_argument("--workers", type=int, default=None,
                   help="rollout processes (default: CPU count; 0: in this process)")
    p.add_argument("--videos", type=int, default=0, help="videos per task (first seed)")
    p.add_argument("--max-steps", type=int, default=None, help="episode cap (default: task's)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--name", default=None, help="method name in tables (default: workdir name)")
    p.add_argument("--no-ema", action="store_true", help="raw instead of EMA parameters")
    p.add_argument("--epsilon", type=float, default=None,
                   help="keypose trigger threshold (default: calibrated from the data)")
    p.add_argument("--requery-every", type=int, default=1, help="decoder call every k steps")
    p.add_argument("--max-skill-steps", type=int, default=None)
    p.add_argument("--stall-steps", type=int, default=None,
                   help="end a held skill after this many steps without progress towards "
                        "its keypose (default 0: off, the paper)")
    p.add_argument("--stall-tolerance", type=float, default=None,
                   help="progress smaller than this (normalised) counts as none "
                        "(default: epsilon/4)")
    p.add_argument("--embodiment", default=None,
                   help="how the keypose trigger turns a delta action into an absolute "
                        "target: auto (default: from the datasets), metaworld (the "
                        "commanded mocap target), metaworld_hand (hand + delta, the rule "
                        "before), absolute")
    p.add_argument("--ensemble-m", type=_ensemble_m, default=None,
                   help="temporal ensembling of chunks: a weight m (ACT: 0.01) or 'off' "
                        "(default: the model config's decoder.ensemble_m)")
    p.add_argument("--resample-every", type=int, default=None,
                   help="sample the current skill again every r steps (0: hold it until "
                        "the keypose trigger, the paper; default: the model config's "
                        "sampler.resample_every)")
    p.add_argument("--server", default=None, metavar="URL",
                   help="evaluate the policy `atomskill serve` serves at ws://HOST:PORT "
                        "instead of a workdir (give --out)")
    p.add_argument("--token", default=None, help="--server: the server's shared token")
    p.add_argument("--compare", nargs="+", metavar="RUN",
                   help="workdirs or report directories to put in one table")


def latest_report_dir(path: str) -> str:
    """A report directory, or the newest report under a workdir's eval/."""
    if os.path.exists(os.path.join(path, "report.json")):
        return path
    found = glob.glob(os.path.join(path, "eval", "*", "report.json"))
    if not found:
        raise FileNotFoundError(f"{path}: neither a report directory nor a workdir with "
                                f"reports under eval/ (run atomskill eval --workdir={path})")
    return os.path.dirname(max(found, key=os.path.getmtime))


def _compare(runs) -> int:
    from atomskill_jax.eval import compare, load_report

    reports = [load_report(latest_report_dir(r)) for r in runs]
    names = [r.name for r in reports]
    if len(set(names)) != len(names):  # same method twice: tell runs apart by path
        names = [f"{n} ({os.path.basename(os.path.normpath(p))})" for n, p in zip(names, runs)]
    print(compare(reports, names=names))  # its notes give each run's step, seeds, versions
    return 0


def run(args) -> int:
    if args.compare:
        return _compare(args.compare)
    if getattr(args, "server", None):
        return _run_remote(args)
    if not args.workdir:
        print("atomskill eval: give --workdir=W (or --compare RUN ...)", file=sys.stderr)
        return 2
    from atomskill_jax.eval import evaluate, suites, to_markdown, write_report
    from atomskill_jax.eval.episode_store import check_output_dir, digest
    import ml_collections

    from atomskill_jax.methods import registry
    from atomskill_jax.policies.loading import policy_factory, read_workdir_assets

    suite = args.suite if args.suite or args.tasks else "rlbench6"
    tasks = suites.resolve_tasks(suite if not args.tasks else None, args.tasks)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    workdir = os.path.abspath(args.workdir)
    assets, checkpoint_dir, step = read_workdir_assets(workdir, args.step)
    from atomskill_jax.training.workdir_lock import training_holder

    holder = training_holder(workdir)
    if holder and args.step is None:
        # The newest checkpoint of a run still training may be an early one of its last
        # stage (and the calibration of an unfinished run): say so before rolling out.
        print(f"atomskill eval: warning: {workdir} is still being trained by {holder}; "
              f"evaluating its newest checkpoint, step {step}, not the run's final one "
              f"(wait for the run, or pass --step to choose)", file=sys.stderr)
    options = {"requery_every": args.requery_every, "epsilon": args.epsilon,
               "max_skill_steps": args.max_skill_steps, "ensemble_m": args.ensemble_m,
               "resample_every": args.resample_every,
               "name": args.name or os.path.basename(workdir)}
    # Only when given: the identity (and so the default --out) of runs without them is
    # what it was before these options existed, so their saved episodes are reused.
    options.update({k: v for k, v in (("stall_steps", args.stall_steps),
                                      ("stall_tolerance", args.stall_tolerance),
                                      ("embodiment", args.embodiment))
                    if v is not None})
    config = ml_collections.ConfigDict(assets["config"])
    spec = registry.get_spec(config)
    given = {k: v for k, v in options.items() if v is not None}
    # The options the policy really runs with (defaults from the config); refuses an
    # option the method does not take here, not in every worker.
    resolved = spec.resolve_options(config, given) if spec.resolve_options else {}
    # What decides the actions, besides the episode (the name does not).
    identity = {"workdir": workdir, "checkpoint_step": step,
                "checkpoint_written": _written(os.path.join(checkpoint_dir, str(step))),
                "use_ema": not args.no_ema,
                **{k: v for k, v in options.items() if k != "name"}, **resolved}
    label = suite if not args.tasks else "tasks"
    what = {"identity": identity, "tasks": [suites.canonical_task(t) for t in tasks],
            "seeds": seeds, "episodes": args.episodes, "max_steps": args.max_steps}
    out = args.out or os.path.join(workdir, "eval", f"{label}-step{step}-{digest(what)}")
    # Before rolling out: a bad --out must not cost the whole evaluation.
    out = check_output_dir(out, "--out" if args.out else "the default --out")
    calib = assets.get("calibration") or {}
    identity["calibration"] = {k: calib.get(k) for k in ("epsilon", "max_skill_steps")}
    factory = policy_factory(workdir, step=step, use_ema=not args.no_ema, **given)
    argv = getattr(args, "argv", None)
    command = " ".join(["atomskill"] + list(sys.argv[1:] if argv is None else argv))
    report = evaluate(factory, tasks, args.episodes, seeds, name=options["name"],
                      max_steps=args.max_steps, num_workers=args.workers,
                      videos_per_task=args.videos,
                      video_dir=os.path.join(out, "videos") if args.videos else None,
                      checkpoint_step=step, command=command, out_dir=out,
                      identity=identity)
    report.meta["workdir"] = workdir
    report.meta["runtime_options"] = dict(options, use_ema=not args.no_ema)
    report.meta["method"] = spec.name
    report.meta.update(resolved)  # e.g. AtomSkill's resample_every and ensemble_m
    report.meta["calibration"] = {k: v for k, v in calib.items() if k != "per_dataset"}
    paths = write_report(report, out)
    print(to_markdown(report))
    print(f"report: {paths['markdown']}")
    return 0


def _run_remote(args) -> int:
    """Closed loop through a policy server (policies/remote.py)."""
    import functools

    from atomskill_jax.eval import evaluate, suites, to_markdown, write_report
    from atomskill_jax.eval.episode_store import check_output_dir
    from atomskill_jax.policies.remote import RemotePolicy

    if not args.out:
        print("atomskill eval --server: give --out=DIR for the report", file=sys.stderr)
        return 2
    suite = args.suite if args.suite or args.tasks else "rlbench6"
    tasks = suites.resolve_tasks(suite if not args.tasks else None, args.tasks)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    probe = RemotePolicy(args.server, token=args.token)
    meta = probe.metadata
    probe.close()
    out = check_output_dir(args.out, "--out")
    identity = {"server": args.server, "params_sha256": meta["params_sha256"],
                "statistics_sha256": meta["statistics_sha256"], "method": meta["method"]}
    name = args.name or meta["policy"]
    factory = functools.partial(RemotePolicy, args.server, token=args.token, name=name)
    argv = getattr(args, "argv", None)
    command = " ".join(["atomskill"] + list(sys.argv[1:] if argv is None else argv))
    report = evaluate(factory, tasks, args.episodes, seeds, name=name,
                      max_steps=args.max_steps, num_workers=args.workers,
                      videos_per_task=args.videos,
                      video_dir=os.path.join(out, "videos") if args.videos else None,
                      command=command, out_dir=out, identity=identity)
    report.meta.update(server=args.server, method=meta["method"],
                       params_sha256=meta["params_sha256"])
    paths = write_report(report, out)
    print(to_markdown(report))
    print(f"report: {paths['markdown']}")
    return 0


def _written(path: str) -> int | None:
    """When a checkpoint step was written: a workdir trained again to the same step
    must not reuse the old step's episodes."""
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


def _ensemble_m(text: str):
    if text.strip().lower() == "off":
        return "off"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number (ACT: 0.01) or 'off', got {text!r}")


__all__ = ["add_parser", "run", "latest_report_dir"]
