"""The layout of a training workdir, known here and nowhere else.

  W/config.json                     the resolved config (dimensions filled from data)
  W/<stage>/checkpoints/<step>/     orbax items params, train_state, data, assets
                                    (+ atomskill_checksums.json, checksums.py)
  W/<stage>/damaged_checkpoints/    damaged steps a resume set aside (checkpoints.py)
  W/<stage>/metrics.jsonl           one JSON line per log step
  W/<stage>/tensorboard/            TensorBoard event files
  W/train.lock                      held while a trainer runs (workdir_lock.py)
  W/eval/<suite>-step<S>-<id>/      evaluation reports and their episodes file
  W/plots/                          `atomskill plot` figures
Stage names are the method's (methods/spec.Stage): AtomSkill skill and sampler, the MLP
skill, USR pretrain and adapt. The checkpoint assets hold the config, the statistics,
the datasets and the method's calibration (the policy needs nothing else).
"""

from __future__ import annotations

import os

CONFIG = "config.json"
CHECKPOINTS = "checkpoints"
METRICS = "metrics.jsonl"
TENSORBOARD = "tensorboard"
EVAL = "eval"
PLOTS = "plots"


def config_path(workdir: str) -> str:
    return os.path.join(workdir, CONFIG)


def stage_dir(workdir: str, stage: str) -> str:
    return os.path.join(workdir, stage)


def checkpoints_dir(workdir: str, stage: str) -> str:
    return os.path.join(workdir, stage, CHECKPOINTS)


def has_checkpoints(workdir: str, stage: str) -> bool:
    path = checkpoints_dir(workdir, stage)
    return os.path.isdir(path) and any(n.isdigit() for n in os.listdir(path))


def stages_with_checkpoints(workdir: str) -> list[str]:
    """Stage directories of W holding at least one step directory."""
    if not os.path.isdir(workdir):
        return []
    return sorted(n for n in os.listdir(workdir) if has_checkpoints(workdir, n))


def eval_dir(workdir: str) -> str:
    return os.path.join(workdir, EVAL)


def plots_dir(workdir: str) -> str:
    return os.path.join(workdir, PLOTS)
