"""Load a trained policy from a workdir (`atomskill train`'s layout, training/trainer.py).

    policy = load_policy("runs/a", epsilon=0.3)          # latest checkpoint
    factory = policy_factory("runs/a", requery_every=4)  # picklable, for eval workers

Reads the checkpoint's `assets` item (resolved config, normalisation statistics,
datasets, the method's calibration) and its `params` item (EMA weights where the stage
kept an EMA), restored onto one CPU device whatever mesh wrote them. The stage loaded
is the method's last (methods/spec.py; AtomSkill: `sampler`, which holds the frozen
skill model too; the ACT-like ablation and the MLP: `skill`); a run stopped before it
is refused. The policy is built by the method's spec (`make_policy`).

Every file read is checked against the step's checksum manifest first: a damaged step
is refused (checkpoints.DamagedCheckpointError naming the step, the file and the intact
steps, to load with step=/--step=), never replaced by an older one silently, because an
evaluation must report the model it was asked for. Steps saved before manifests
existed load unverified, with a warning.

Never imports TensorFlow (eval workers render with OSMesa, which crashes beside it):
only orbax, the model, and the numpy-only normalisation/statistics modules.
"""

from __future__ import annotations

import functools
import json
import logging
import os

import jax
import ml_collections
from flax import nnx

from atomskill_jax.methods import registry
from atomskill_jax.policies.base import Policy
from atomskill_jax.training import checkpoints, workdir as workdir_layout
from atomskill_jax.training.train_state import build_model

log = logging.getLogger(__name__)


def _method_config(workdir: str) -> ml_collections.ConfigDict | None:
    path = workdir_layout.config_path(workdir)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def checkpoint_dir(workdir: str, stage: str | None = None) -> str:
    """The checkpoints of the method's last stage (the policy's), or of `stage`:
    W/<stage>/checkpoints. Workdirs without a config.json fall back to the newest stage
    holding checkpoints."""
    if stage is not None:
        if not workdir_layout.has_checkpoints(workdir, stage):
            raise FileNotFoundError(f"{workdir}: no checkpoints of stage {stage!r}")
        return workdir_layout.checkpoints_dir(workdir, stage)
    config = _method_config(workdir)
    have = workdir_layout.stages_with_checkpoints(workdir)
    if config is not None:
        names = registry.get_spec(config).stage_names(config)
        if workdir_layout.has_checkpoints(workdir, names[-1]):
            return workdir_layout.checkpoints_dir(workdir, names[-1])
        if have:
            raise ValueError(
                f"{workdir}: the policy is the {names[-1]!r} stage's and it has no checkpoint "
                f"(trained: {have}); finish training (the method's stages: {names})")
    elif have:  # no config.json: the newest stage written (legacy workdirs)
        return max((workdir_layout.checkpoints_dir(workdir, n) for n in have),
                   key=os.path.getmtime)
    raise FileNotFoundError(f"{workdir}: no checkpoints under any stage directory "
                            f"(train first: atomskill train --workdir={workdir})")


def read_workdir_assets(workdir: str, step: int | None = None, *,
                        stage: str | None = None) -> tuple[dict, str, int]:
    """(assets, checkpoint directory, step) of the checkpoint a policy would load (or of
    `stage`'s newest)."""
    directory = checkpoint_dir(workdir, stage)
    manager = checkpoints.make_manager(directory, keep=0, async_save=False, read_only=True)
    try:
        steps = manager.all_steps()
    finally:
        manager.close()
    if step is None:
        if not steps:
            raise FileNotFoundError(f"{directory}: no complete checkpoint")
        step = max(steps)
    elif step not in steps:
        raise FileNotFoundError(f"{directory}: no checkpoint at step {step} (have {sorted(steps)})")
    return checkpoints.read_assets(directory, step), directory, int(step)


def single_device_target(abstract):
    """Restore targets placing every array on the first CPU device: inference loads a
    checkpoint whatever mesh trained it."""
    device = jax.local_devices(backend="cpu")[0]
    sharding = jax.sharding.SingleDeviceSharding(device)
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                        abstract)


def _raw_params(directory: str, step: int, model) -> None:
    """Replace the model's trained parameters by the raw (non-EMA) ones of the train state
    (its `params` entry: the parameters the stage optimised; the rest equal the EMA item)."""
    import orbax.checkpoint as ocp
    import jax.numpy as jnp

    path = os.path.join(directory, str(step), "train_state")
    checkpoints.require_intact(directory, step, ("train_state",))
    checkpointer = ocp.StandardCheckpointer()
    meta = checkpointer.metadata(path).item_metadata.tree
    raw = checkpointer.restore(path, single_device_target(meta))["params"]
    state, replaced = nnx.state(model), 0
    flat = []
    for key, var in nnx.to_flat_state(state):
        node = raw
        for part in key:  # orbax stores every key (list indices too) as a string
            node = node.get(str(part)) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node = node.get("value")
        if node is not None:
            var = var.replace(jnp.asarray(node))
            replaced += 1
        flat.append((key, var))
    if not replaced:
        raise ValueError(f"{path}: no trained parameters matched the model")
    nnx.update(model, nnx.from_flat_state(flat))


def load_model(workdir: str, *, step: int | None = None, use_ema: bool = True):
    """(model on one CPU device, resolved config, assets, step)."""
    assets, directory, step = read_workdir_assets(workdir, step)
    config = ml_collections.ConfigDict(assets["config"])
    seed = int(config.seed)
    abstract_model = nnx.eval_shape(lambda: build_model(config, seed))
    graphdef, abstract = nnx.split(abstract_model)
    params, _ = checkpoints.restore_params(directory, single_device_target(abstract), step)
    model = nnx.merge(graphdef, params)
    if not use_ema:
        _raw_params(directory, step, model)
    return model, config, assets, step


def load_policy(workdir: str, *, step: int | None = None, use_ema: bool = True,
                **runtime_options) -> Policy:
    """The method's policy (its spec's `make_policy`) from a workdir. `runtime_options`
    are the method's (AtomSkill: epsilon, requery_every, ensemble_m, ...); options given
    as None mean "the default" and are dropped, others the method does not know are
    refused."""
    model, config, assets, step = load_model(workdir, step=step, use_ema=use_ema)
    assets = dict(assets, workdir=os.path.abspath(workdir),
                  source=f"{workdir} checkpoint {step} assets")
    options = {k: v for k, v in runtime_options.items() if v is not None}
    policy = registry.get_spec(config).make_policy(model, assets, options)
    policy.checkpoint_step = step
    policy.image_source = _image_source(assets, policy.spec.cameras, workdir, config)
    return policy


def _image_source(assets: dict, cameras, workdir: str, config=None):
    """How the training datasets made their frames, for evaluation to render alike
    (with each dataset entry's camera mapping, config.data.datasets)."""
    from atomskill_jax.data.dataset_entries import parse_entries
    from atomskill_jax.data.image_source import policy_image_source

    datasets = list(assets.get("datasets", ()))
    camera_maps = None
    if config is not None and "data" in config:
        entries = parse_entries(config.data)
        if len(entries) == len(datasets):
            camera_maps = [dict(e.cameras) for e in entries]
    source = policy_image_source(datasets, cameras, camera_maps)
    if cameras and source is None:
        log.warning("%s: no training dataset records how its %s frames were rendered "
                    "(build_options.json); evaluation renders with the simulator's defaults "
                    "at the policy's image size", workdir, list(cameras))
    return source


def policy_factory(workdir: str, **kwargs) -> functools.partial:
    """A picklable zero-argument factory for evaluation workers."""
    return functools.partial(load_policy, os.path.abspath(workdir), **kwargs)
