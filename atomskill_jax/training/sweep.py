"""Sweeps: a file with `get_sweep(arg) -> list[dict]`, each dict the overrides of one
run (an optional "name" names its workdir, W/<name>). `atomskill sweep` checks every
run's config first (typos fail before hours of training), then runs them one after
another here, each in its own process (a fresh JAX), or prints one `atomskill train`
command per run for a cluster scheduler.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import sys
from typing import Any

from atomskill_jax import child_commands
from atomskill_jax.training import config_flags


def load_sweep(spec: str) -> list[dict]:
    path, _, arg = spec.partition(":")
    if not os.path.exists(path):
        raise FileNotFoundError(f"sweep file {path} does not exist (from --sweep={spec})")
    module_spec = importlib.util.spec_from_file_location("atomskill_sweep", path)
    mod = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(mod)
    runs = mod.get_sweep(arg) if arg else mod.get_sweep()
    if not isinstance(runs, list) or not all(isinstance(r, dict) for r in runs):
        raise ValueError(f"sweep file {path}: get_sweep must return a list of dicts")
    return runs


def run_name(index: int, overrides: dict) -> str:
    if "name" in overrides:
        return str(overrides["name"])
    parts = [f"{k.split('.')[-1]}={v}" for k, v in overrides.items()]
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", ",".join(parts))[:100] or f"run{index}"


def _literal(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return repr(tuple(value))
    return str(value)


def expand(config_spec: str, sweep_spec: str, workdir: str,
           extra: list[str] = ()) -> list[tuple[str, list[str]]]:
    """[(run workdir, `atomskill train` argv)] after checking each run's config loads."""
    out = []
    for i, run in enumerate(load_sweep(sweep_spec)):
        overrides = {k: v for k, v in run.items() if k != "name"}
        config = config_flags.load_config(config_spec)
        config_flags.apply_overrides(config, list(extra))
        config_flags.apply_overrides(config, overrides)  # raises on unknown keys
        run_dir = os.path.join(workdir, run_name(i, run))
        argv = ["train", f"--config={config_spec}", f"--workdir={run_dir}", *extra,
                *(f"--config.{k}={_literal(v)}" for k, v in overrides.items())]
        out.append((run_dir, argv))
    return out


def run_sweep(config_spec: str, sweep_spec: str, workdir: str, extra: list[str] = (), *,
              print_commands: bool = False, overwrite: bool = False) -> int:
    runs = expand(config_spec, sweep_spec, workdir, list(extra))
    if print_commands:
        for _, argv in runs:
            print(shlex.join(["atomskill", *argv, *(["--overwrite"] if overwrite else [])]))
        return 0
    failed = []
    for i, (run_dir, argv) in enumerate(runs):
        print(f"[sweep {i + 1}/{len(runs)}] {run_dir}", flush=True)
        cmd = child_commands.atomskill_command([*argv, *(["--overwrite"] if overwrite else [])])
        if child_commands.run(cmd) != 0:  # Ctrl-C: the run checkpoints, then the sweep stops
            failed.append(run_dir)
    if failed:
        print(f"sweep: {len(failed)} of {len(runs)} runs failed: {', '.join(failed)}",
              file=sys.stderr)
        return 1
    return 0
