"""The `atomskill` command: one console script, subcommands as in ARCHITECTURE.md.

    atomskill build-data metaworld --suite=rlbench6 --episodes-per-task=5 --out=DIR
    atomskill annotate --data=DIR --annotator=vlm --out=DIR2
    atomskill stats --data=DIR
    atomskill train --config=configs/atomskill.py:cpu --workdir=W [--config.a.b=v ...]
    atomskill sweep --config=configs/atomskill.py:cpu --sweep=configs/sweeps/ablations.py \
        --workdir=W [--print-commands]
    atomskill eval --workdir=W --suite=rlbench6 --episodes=20 --seeds=0,1,2
    atomskill eval --compare W1 W2 ...
    atomskill reproduce table1 --out=DIR [--print-commands]   # table1 | table4 | table5
    atomskill export --workdir=W --out=P [--platforms=cpu,cuda]
    atomskill serve --policy=P [--host=127.0.0.1 --port=8000 --token=T]
    atomskill demo

Heavy imports (TensorFlow, MuJoCo, JAX) happen inside the subcommand that needs
them, so `atomskill --help` is instant.

Known failures (bad data, configs, files; TensorFlow read errors) print one message,
the innermost cause first, and exit with status 2, without a traceback; set
ATOMSKILL_TRACEBACK=1 to have the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

NOT_YET: dict[str, str] = {}
BUILD_SOURCES = ("metaworld", "aloha_sim", "aloha_hdf5", "libero_hdf5", "rlbench")
TRACEBACK_ENV = "ATOMSKILL_TRACEBACK"
KNOWN_ERRORS = (ValueError, KeyError, FileExistsError, FileNotFoundError, OSError, RuntimeError)


def quiet_tensorflow() -> None:
    # Data work only: keep TensorFlow off accelerators and quiet.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import logging

    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)  # TFDS's "custom data configuration"
    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # deprecation notices


def _show_our_logs() -> None:
    # Our INFO messages (resume, stage start, statistics) without orbax's: absl owns
    # the root logger.
    import logging

    ours = logging.getLogger("atomskill_jax")
    if not ours.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        ours.addHandler(handler)
    ours.setLevel(logging.INFO)
    ours.propagate = False


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _image_size(text: str) -> tuple[int, int]:
    parts = text.lower().replace("x", ",").split(",")
    if len(parts) == 1:
        parts = parts * 2
    try:
        height, width = (int(p) for p in parts)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"image size like 128 or 96x128, got {text!r}") from err
    return height, width


def _add_build_data(sub) -> None:
    p = sub.add_parser("build-data", help="write an RLDS dataset from a source")
    p.add_argument("source", choices=BUILD_SOURCES)
    p.add_argument("--out", required=True, help="data directory to write into")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--suite", help="metaworld: rlbench6, mt10, mt50, ml45_train, ml45_test")
    group.add_argument("--tasks", help="metaworld, aloha_sim, rlbench: comma-separated task "
                                       "names (aloha_sim: transfer_cube,insertion, the default)")
    p.add_argument("--episodes-per-task", type=_positive_int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--action-noise", type=float, default=0.0,
                   help="std of Gaussian noise on executed expert actions (labels stay clean)")
    p.add_argument("--keep-failed", action="store_true",
                   help="keep episodes where the expert failed (default: successful only)")
    p.add_argument("--max-steps", type=_positive_int, default=None,
                   help="episode length cap (default: metaworld 500, aloha_sim 400)")
    p.add_argument("--post-success-steps", type=int, default=0)
    p.add_argument("--cameras", default="", help="comma-separated cameras, e.g. corner,gripperPOV")
    p.add_argument("--image-size", type=_image_size, default=None,
                   help="HxW or N (default: metaworld 128x128; libero_hdf5, aloha_hdf5 the "
                        "files' own; aloha_sim 480x640)")
    p.add_argument("--render-quality", default=None,
                   help="metaworld with cameras: metaworld (its own scene), fast (the default: "
                        "a 1024 shadow map, ~2x faster, same picture) or no_shadows (~5x); "
                        "recorded with the data, evaluation renders alike")
    p.add_argument("--layout-split", choices=("train", "eval"), default="train")
    p.add_argument("--layout-offset", type=int, default=0)
    p.add_argument("--annotator", choices=("rule", "vlm"), default="rule")
    p.add_argument("--annotator-options", default="{}",
                   help="JSON object of annotator options, e.g. '{\"base_url\": ...}'")
    p.add_argument("--files", help="libero_hdf5 / aloha_hdf5: a directory or comma-separated "
                                   "files; rlbench: the dataset root")
    p.add_argument("--instruction",
                   help="aloha_hdf5: the task instruction (ACT episode files hold none)")
    p.add_argument("--overwrite", action="store_true")


def _build_libero(args) -> int:
    if not args.files:
        print("build-data libero_hdf5: give --files=DIR_OR_FILES", file=sys.stderr)
        return 2
    quiet_tensorflow()
    from data_builders.libero_hdf5 import libero_hdf5_dataset_builder as lb

    cameras = args.cameras or lb.DEFAULT_CAMERAS
    try:
        report = lb.build_libero(args.files, args.out, cameras=cameras, image_size=args.image_size,
                                 overwrite=args.overwrite, annotator=args.annotator,
                                 annotator_options=json.loads(args.annotator_options))
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"build-data libero_hdf5: {err}", file=sys.stderr)
        return 2
    _print_report(report["dataset_dir"], report)
    return 0


def _build_aloha_sim(args) -> int:
    if args.suite is not None:
        print("build-data aloha_sim: --suite is for metaworld; give --tasks=transfer_cube,"
              "insertion (the default)", file=sys.stderr)
        return 2
    quiet_tensorflow()
    from data_builders.aloha_sim_scripted import aloha_sim_scripted_dataset_builder as asb
    from data_builders.aloha_sim_scripted import rollouts

    cameras = tuple(c for c in args.cameras.split(",") if c)
    if cameras:
        with rollouts.RenderingRolloutWorker() as worker:
            ok, why = worker.check()
        if not ok:
            print(f"build-data: images asked for but rendering is unavailable: {why}",
                  file=sys.stderr)
            return 2
    try:
        dataset_dir, report = asb.build(
            args.out, tasks=args.tasks or "transfer_cube,insertion",
            episodes_per_task=args.episodes_per_task, seed=args.seed, cameras=cameras,
            image_size=args.image_size, overwrite=args.overwrite, annotator=args.annotator,
            annotator_options=json.loads(args.annotator_options),
            max_steps=args.max_steps or 400, only_successful=not args.keep_failed)
    except (FileExistsError, ValueError) as err:
        print(f"build-data aloha_sim: {err}", file=sys.stderr)
        return 2
    _print_report(dataset_dir, report)
    return 0


def _build_aloha_hdf5(args) -> int:
    if not args.files or not args.instruction:
        print("build-data aloha_hdf5: give --files=DIR_OR_FILES (episode_<i>.hdf5) and "
              "--instruction=TEXT", file=sys.stderr)
        return 2
    quiet_tensorflow()
    from data_builders.aloha_hdf5 import aloha_hdf5_dataset_builder as ab

    try:
        report = ab.build_aloha_hdf5(
            args.files, args.out, instruction=args.instruction, cameras=args.cameras or None,
            image_size=args.image_size, overwrite=args.overwrite, annotator=args.annotator,
            annotator_options=json.loads(args.annotator_options))
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"build-data aloha_hdf5: {err}", file=sys.stderr)
        return 2
    _print_report(report["dataset_dir"], report)
    return 0


def _build_rlbench(args) -> int:
    if not args.files:
        print("build-data rlbench: give --files=ROOT (the folder holding "
              "<task>/variation<k>/episodes/episode<i>)", file=sys.stderr)
        return 2
    quiet_tensorflow()
    from data_builders.rlbench import rlbench_dataset_builder as rb

    try:
        report = rb.build_rlbench(
            args.files, args.out, tasks=args.tasks, cameras=args.cameras or None,
            image_size=args.image_size, overwrite=args.overwrite, annotator=args.annotator,
            annotator_options=json.loads(args.annotator_options))
    except (FileNotFoundError, FileExistsError, ValueError, rb.RLBenchUnavailable) as err:
        print(f"build-data rlbench: {err}", file=sys.stderr)
        return 2
    _print_report(report["dataset_dir"], report)
    return 0


def _cmd_build_data(args) -> int:
    if args.source == "libero_hdf5":
        return _build_libero(args)
    if args.source == "aloha_sim":
        return _build_aloha_sim(args)
    if args.source == "aloha_hdf5":
        return _build_aloha_hdf5(args)
    if args.source == "rlbench":
        return _build_rlbench(args)
    if args.source != "metaworld":
        print(f"build-data {args.source}: not yet available (a later issue adds this builder)",
              file=sys.stderr)
        return 2
    if args.suite is None and args.tasks is None:
        print("build-data metaworld: give --suite=NAME or --tasks=T1,T2", file=sys.stderr)
        return 2
    quiet_tensorflow()
    from data_builders.metaworld_scripted import metaworld_scripted_dataset_builder as mwb

    cameras = tuple(c for c in args.cameras.split(",") if c)
    if cameras:
        from atomskill_jax.envs import metaworld as mw

        with mw.RenderingRolloutWorker() as worker:
            ok, why = worker.check()
        if not ok:
            print(f"build-data: images asked for but rendering is unavailable: {why}",
                  file=sys.stderr)
            return 2
    dataset_dir, report = mwb.build(
        args.out, suite=args.suite, tasks=args.tasks, overwrite=args.overwrite,
        episodes_per_task=args.episodes_per_task, seed=args.seed,
        action_noise_std=args.action_noise, only_successful=not args.keep_failed,
        max_steps=args.max_steps or 500, post_success_steps=args.post_success_steps,
        cameras=cameras, image_size=args.image_size or (128, 128),
        render_quality=args.render_quality, layout_split=args.layout_split,
        layout_offset=args.layout_offset, annotator=args.annotator,
        annotator_options=json.loads(args.annotator_options))
    _print_report(dataset_dir, report)
    return 0


def _print_report(dataset_dir: str, report: dict) -> None:
    print(f"dataset: {dataset_dir}")
    if report:
        verb = "reused an identical build of" if report.get("reused") else "wrote"
        written = report.get("written")
        print(f"{verb} {written} episode{'' if written == 1 else 's'}, "
              f"skipped {report.get('num_skipped')}")
        for reason, ids in report.get("skipped", {}).items():
            print(f"  skipped {len(ids)} x {reason}")
        for key, value in report.get("notes", {}).items():
            print(f"  {key}: {value}")
    else:
        print("(reused an existing build with the same options)")


def _add_annotate(sub) -> None:
    p = sub.add_parser("annotate", help="re-annotate skills of an existing RLDS dataset")
    p.add_argument("--data", required=True, help="dataset version directory")
    p.add_argument("--out", required=True, help="data directory for the re-annotated copy")
    p.add_argument("--annotator", choices=("rule", "vlm"), default="rule")
    p.add_argument("--annotator-options", default="{}")
    p.add_argument("--embodiment", default=None,
                   help="gripper layout for segmentation (default: from the dataset)")
    p.add_argument("--gripper-signal", choices=("action", "proprio"), default="action",
                   help="keyframes from the gripper command (default) or from the observed "
                        "opening in proprio (RLBench's gripper_open convention)")


def _cmd_annotate(args) -> int:
    quiet_tensorflow()
    from data_builders.reannotate import reannotate_dataset_builder as rb

    dataset_dir, report = rb.reannotate(
        args.data, args.out, annotator=args.annotator,
        annotator_options=json.loads(args.annotator_options), embodiment=args.embodiment,
        gripper_signal=args.gripper_signal)
    _print_report(dataset_dir, report)
    return 0


def _add_stats(sub) -> None:
    p = sub.add_parser("stats", help="compute (once) and print a dataset's normalisation "
                                     "statistics")
    p.add_argument("--data", required=True, help="dataset version directory or name")
    p.add_argument("--data-dir", default=None, help="root that dataset names resolve under")
    p.add_argument("--split", default="train")


def _cmd_stats(args) -> int:
    quiet_tensorflow()
    _show_our_logs()  # "computing statistics", "recomputing an old file"
    import numpy as np

    from atomskill_jax.data import sources, statistics_compute

    source = sources.open_source(args.data, args.data_dir)
    stats = statistics_compute.load_or_compute_statistics(source, args.split)
    print(f"{statistics_compute.statistics_path(source, args.split)}")
    print(f"{stats.num_episodes} episodes, {stats.num_steps} steps")
    np.set_printoptions(precision=4, suppress=True, linewidth=120)
    for field, fs in stats.fields.items():
        print(f"{field}:")
        for name in ("mean", "std", "min", "max", "p01", "p99"):
            if hasattr(fs, name):
                print(f"  {name:5s} {np.asarray(getattr(fs, name))}")
    return 0


def _add_train_and_sweep(sub) -> None:
    # --config.a.b=value overrides are taken out of argv before argparse (see main).
    p = sub.add_parser("train", help="train a model from a config (resumes from the workdir)")
    p.add_argument("--config", required=True, help="configs/FILE.py:VARIANT")
    p.add_argument("--workdir", required=True)
    p.add_argument("--overwrite", action="store_true",
                   help="delete the workdir's checkpoints and start afresh")
    p = sub.add_parser("sweep", help="run a config sweep locally, or print its commands")
    p.add_argument("--config", required=True, help="configs/FILE.py:VARIANT")
    p.add_argument("--sweep", required=True, help="configs/sweeps/FILE.py[:ARG]")
    p.add_argument("--workdir", required=True, help="parent directory of the runs' workdirs")
    p.add_argument("--print-commands", action="store_true",
                   help="print one `atomskill train` command per run instead of running")
    p.add_argument("--overwrite", action="store_true")


def _cmd_train(args) -> int:
    quiet_tensorflow()
    _show_our_logs()
    from atomskill_jax.training import config_flags, trainer

    config = config_flags.apply_overrides(config_flags.load_config(args.config),
                                          args.config_overrides)
    results = trainer.train(config, args.workdir, overwrite=args.overwrite)
    for stage, result in results.items():
        shown = {k: round(v, 5) for k, v in result["metrics"].items()}
        print(f"{stage}: step {result['step']} {json.dumps(shown)}")
    print(f"workdir: {args.workdir}")
    return 0


def _cmd_sweep(args) -> int:
    from atomskill_jax.training import sweep

    return sweep.run_sweep(args.config, args.sweep, args.workdir, args.config_overrides,
                           print_commands=args.print_commands, overwrite=args.overwrite)


def _cmd_eval(args) -> int:
    from atomskill_jax.commands import eval as eval_command

    return eval_command.run(args)


def _cmd_demo(args) -> int:
    from atomskill_jax import demo

    return demo.main(args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="atomskill", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_build_data(sub)
    _add_annotate(sub)
    _add_stats(sub)
    _add_train_and_sweep(sub)
    from atomskill_jax.commands import eval as eval_command  # argparse only at import

    eval_command.add_parser(sub)
    from atomskill_jax.commands import plot as plot_command  # argparse only at import

    plot_command.add_parser(sub)
    from atomskill_jax.eval import reproduce  # its parser; the work imports inside run

    reproduce.add_parser(sub)
    from atomskill_jax import demo as demo_command  # argparse only at import

    demo_command.add_parser(sub)
    from atomskill_jax.commands import export as export_command  # argparse only at import

    export_command.add_parser(sub)
    from atomskill_jax.commands import serve as serve_command  # argparse only at import

    serve_command.add_parser(sub)
    for name, where in NOT_YET.items():
        sub.add_parser(name, help=f"not yet available: {where}")
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in NOT_YET:  # before parsing: whatever options they were given
        print(f"atomskill {argv[0]}: not yet available; arrives with {NOT_YET[argv[0]]}",
              file=sys.stderr)
        return 2
    overrides = [a for a in argv if a.startswith("--config.")]
    args = parser.parse_args([a for a in argv if not a.startswith("--config.")])
    args.config_overrides = overrides
    args.argv = argv  # eval records the command that made its report
    handler = {"build-data": _cmd_build_data, "annotate": _cmd_annotate,
               "stats": _cmd_stats, "demo": _cmd_demo, "train": _cmd_train,
               "sweep": _cmd_sweep, "eval": _cmd_eval, "plot": plot_command.run,
               "reproduce": reproduce.run, "export": export_command.run,
               "serve": serve_command.run}[args.command]
    try:
        return handler(args)
    except _known_errors() as err:
        if os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
            raise
        print(f"atomskill {args.command}: {describe_error(err)}", file=sys.stderr)
        return 2


def _known_errors() -> tuple:
    tf = sys.modules.get("tensorflow")  # never imported here just to catch its errors
    op_error = getattr(getattr(tf, "errors", None), "OpError", None)
    return KNOWN_ERRORS + ((op_error,) if isinstance(op_error, type) else ())


def describe_error(err: BaseException) -> str:
    """What is printed for a known error: its message, which (for ours) puts the
    innermost cause first, then the context. TensorFlow's errors (left only where no
    module explains them) keep their first line, without graph-node decorations."""
    message = getattr(err, "message", None)  # TensorFlow's OpError
    if isinstance(message, str):
        text = message.strip()
        if text.startswith("{{function_node"):
            text = text.split("}}", 1)[-1].strip()
        text = (text.splitlines() or [""])[0].split(" [Op:", 1)[0]
        return f"{type(err).__name__}: {text}"
    if isinstance(err, KeyError):  # str() is only the key
        return f"KeyError: {err}"
    return str(err) or type(err).__name__


if __name__ == "__main__":
    sys.exit(main())
