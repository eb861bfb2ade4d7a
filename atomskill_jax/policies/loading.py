"""Load a trained policy from a workdir (`atomskill train`'s layout, training/trainer.py).

    policy = load_policy("runs/a", epsilon=0.3)          # latest checkpoint
    factory = policy_factory("runs/a", requery_every=4)  # picklable, for eval workers

Reads the checkpoint's `assets` item (resolved config, normalisation statistics,
datasets) and its `params` item (EMA weights where the stage kept an EMA), restored
onto one CPU device whatever mesh wrote them. The stage loaded is `sampler` when the
model has a skill space and that stage has checkpoints (it holds the frozen skill
model too), else `skill` (the ACT-like baseline, or a run stopped after stage one:
its sampler is untrained, which is refused).

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
import logging
import os

import jax
import ml_collections
from flax import nnx

from atomskill_jax.data.normalization import normalizer_from_config
from atomskill_jax.data.statistics import DatasetStatistics
from atomskill_jax.policies import adapters, calibration
from atomskill_jax.policies.atomskill_policy import AtomSkillPolicy, RuntimeOptions
from atomskill_jax.training import checkpoints
from atomskill_jax.training.train_state import build_model

log = logging.getLogger(__name__)


def checkpoint_dir(workdir: str) -> str:
    """W/sampler/checkpoints if it holds a checkpoint, else W/skill/checkpoints."""
    for stage in ("sampler", "skill"):
        path = os.path.join(workdir, stage, "checkpoints")
        if os.path.isdir(path) and any(n.isdigit() for n in os.listdir(path)):
            return path
    raise FileNotFoundError(f"{workdir}: no checkpoints under skill/ or sampler/ "
                            f"(train first: atomskill train --workdir={workdir})")


def read_workdir_assets(workdir: str, step: int | None = None) -> tuple[dict, str, int]:
    """(assets, checkpoint directory, step) of the checkpoint a policy would load."""
    directory = checkpoint_dir(workdir)
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
    stage = assets.get("stage", os.path.basename(os.path.dirname(directory)))
    if bool(config.model.decoder.skill_conditioning) and stage != "sampler":
        raise ValueError(f"{directory}: the skill model has no trained sampler (stage "
                         f"{stage!r}); finish training (config.stage='both' or 'sampler')")
    seed = int(config.seed)
    abstract_model = nnx.eval_shape(lambda: build_model(config, seed))
    graphdef, abstract = nnx.split(abstract_model)
    params, _ = checkpoints.restore_params(directory, single_device_target(abstract), step)
    model = nnx.merge(graphdef, params)
    if not use_ema:
        _raw_params(directory, step, model)
    return model, config, assets, step


def load_policy(workdir: str, *, step: int | None = None, use_ema: bool = True,
                **runtime_options) -> AtomSkillPolicy:
    """An `AtomSkillPolicy` (or the ACT-like baseline) from a workdir; `runtime_options`
    are the fields of `RuntimeOptions` (epsilon, requery_every, ensemble_m, ...)."""
    options = RuntimeOptions(**runtime_options)
    model, config, assets, step = load_model(workdir, step=step, use_ema=use_ema)
    stats = [DatasetStatistics.from_json(s, source=f"{workdir} assets") for s in
             assets["statistics"]]
    normalizer = normalizer_from_config(config.data, stats)
    calib = calibration.read_calibration(workdir)
    if calib is None and (options.epsilon is None or options.max_skill_steps is None):
        log.warning("%s has no %s (atomskill eval computes it); using epsilon=%s, "
                    "max_skill_steps=%s", workdir, calibration.FILENAME,
                    calibration.FALLBACK["epsilon"], calibration.FALLBACK["max_skill_steps"])
        calib = calibration.FALLBACK
    epsilon = options.epsilon if options.epsilon is not None else calib["epsilon"]
    cap = options.max_skill_steps if options.max_skill_steps is not None else (
        calib["max_skill_steps"])
    adapter = adapters.adapter_for(options.embodiment, config.data.action_space,
                                   assets.get("datasets", ()))
    policy = AtomSkillPolicy(model, config, normalizer, adapter, options, epsilon=epsilon,
                             max_skill_steps=cap)
    policy.checkpoint_step = step
    return policy


def policy_factory(workdir: str, **kwargs) -> functools.partial:
    """A picklable zero-argument factory for evaluation workers."""
    return functools.partial(load_policy, os.path.abspath(workdir), **kwargs)
