"""The train loop: `train(config, workdir)` runs the stages of the config's method
(methods/registry.py) that `config.stage` names: one stage, or 'both'/'all' for every
stage in order (AtomSkill: skill, then sampler on the frozen skill space; USR:
pretrain, then adapt). A stage that starts from another gets its carried variables from
that stage's final checkpoint (or `config.train.init_from`). The method's calibration
runs with the first checkpoint of its last stage and is saved in the assets.

The workdir layout is training/workdir.py's.
A workdir holding checkpoints is resumed; one it cannot read stops the run with the
reason (never a silent restart); `overwrite=True` deletes them first. A re-run whose
config differs from W/config.json beyond scheduling keys is refused (run_config.py).

Faults: a second trainer on a locked workdir is refused (WorkdirLockedError, naming the
holder's pid and host; a dead holder's lock is taken over). SIGTERM/SIGINT finish the
step, checkpoint it durably and raise interrupts.TrainingInterrupted (SystemExit,
status 128+signum); a rerun resumes at the next step. A resume skips damaged newest
checkpoints (checksum mismatch; set aside, with a warning) for the newest intact one.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time

import jax
import ml_collections
import numpy as np
from flax import nnx

from atomskill_jax.data import mesh_batches
from atomskill_jax.methods import registry
from atomskill_jax.training import checkpoints, interrupts, mesh as mesh_lib, optimizer, preflight
from atomskill_jax.training import run_config, train_state as ts, workdir as workdir_layout
from atomskill_jax.training import workdir_lock
from atomskill_jax.training.metric_writers import MetricWriter

log = logging.getLogger(__name__)
# Tests: after this step (its checkpoint, if any, durable) print "HANGING after step N"
# and stall for an hour, to be SIGKILLed, or signalled (SIGTERM/SIGINT end the stall
# and the run stops as on any signal).
HANG_ENV = "ATOMSKILL_TEST_HANG_AFTER_STEP"


def signal_name(signum: int) -> str:
    import signal

    return signal.Signals(signum).name


def resolve_stages(config) -> list[str]:
    """The stages `config.stage` names: one of the method's stages, or 'both'/'all' for
    every stage of the method in order (methods/spec.py)."""
    names = registry.get_spec(config).stage_names(config)
    stage = str(config.stage)
    if stage in ("both", "all"):
        return names
    if stage not in names:
        raise ValueError(f"config.stage={stage!r}: method {registry.method_name(config)!r} "
                         f"has the stages {names} with this config (or 'both' for all)")
    return [stage]


def fill_model_dims(config, pipeline) -> None:
    """Dimensions the model reads from the data (only keys its config declares)."""
    source = pipeline.sources[0]
    data = config.data
    values = {"action_dim": source.action_dim, "proprio_dim": source.proprio_dim,
              "state_dim": source.state_dim if data.use_state else 0,
              "use_state": bool(data.use_state), "language_dim": source.language_dim,
              "cameras": tuple(data.cameras), "image_size": tuple(data.image_size),
              "action_space": data.action_space}
    with config.unlocked():
        for key, value in values.items():
            if key in config.model:
                config.model[key] = value


def stage_steps(config, stage: str, pipeline) -> int:
    """config.train.<stage>_steps, or <stage>_epochs over the dataset's time steps."""
    steps = int(config.train.get(f"{stage}_steps", -1))
    if steps > 0:
        return steps
    epochs = float(config.train.get(f"{stage}_epochs", 0))
    # The data's own sizes: with data.statistics_from the normalising statistics are
    # another dataset's (a pre-training run's), whose size would count the wrong epochs.
    examples = sum(s.num_steps for s in pipeline.data_statistics)
    if epochs <= 0:
        raise ValueError(f"config.train.{stage}_steps or {stage}_epochs must be positive")
    return max(1, math.ceil(epochs * examples / int(config.data.batch_size)))


def config_json(config) -> dict:
    return json.loads(config.to_json_best_effort())


def _prepare_workdir(workdir: str, overwrite: bool, stage_names) -> None:
    if overwrite and jax.process_index() == 0:
        for name in (*stage_names, workdir_layout.CONFIG):
            path = os.path.join(workdir, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
    _sync("atomskill_prepare_workdir")  # nobody reads the workdir before process 0 cleared it
    os.makedirs(workdir, exist_ok=True)


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def train(config: ml_collections.ConfigDict, workdir: str, *, overwrite: bool = False) -> dict:
    """Train; returns {stage: {'step': final step, 'metrics': last logged metrics}}."""
    mesh_lib.maybe_initialize_distributed(config.get("distributed", {}).get("initialize"))
    from atomskill_jax.data import pipeline as pipeline_lib  # TensorFlow: only when training

    config = ml_collections.ConfigDict(config_json(config))  # resolved; callers keep theirs
    stages = resolve_stages(config)
    os.makedirs(workdir, exist_ok=True)
    # The lock before anything is read or written: a refused trainer changes nothing.
    with workdir_lock.hold(workdir, jax.process_index()), interrupts.StopRequest() as stop:
        return _train(config, workdir, stages, overwrite, stop, pipeline_lib)


def _train(config, workdir, stages, overwrite, stop, pipeline_lib) -> dict:
    spec = registry.get_spec(config)
    _prepare_workdir(workdir, overwrite, spec.stage_names(config))
    mesh = mesh_lib.mesh_from_config(config.mesh)
    pipeline = pipeline_lib.make_pipeline(
        config.data, trajectory_transform=spec.trajectory_transform(config),
        normalizer_keys=spec.normalizer_keys, statistics=_statistics_from(config.data))
    if not config.data.get("statistics_from"):  # foreign statistics do not fit this data
        preflight.check_statistics(pipeline, config.data,
                                   num_batches=int(config.train.get("check_statistics_batches", 2)))
    fill_model_dims(config, pipeline)
    # Written once; a re-run must be the same run (every process checks, one writes).
    run_config.record(workdir, config_json(config), write=jax.process_index() == 0)
    results = {}
    for stage in stages:
        results[stage] = run_stage(config, stage, workdir, pipeline, mesh, stop)
    if stop.requested:
        log.warning("signal received during the last step: training finished anyway")
    return results


def _statistics_from(data_config):
    """`data.statistics_from` (a stage's checkpoints directory, e.g. a pre-training run's):
    the statistics saved with its newest checkpoint, one per dataset of this run (one
    saved set serves every dataset)."""
    directory = data_config.get("statistics_from")
    if not directory:
        return None
    from atomskill_jax.data.statistics import DatasetStatistics

    steps = checkpoints.step_dirs(directory) if os.path.isdir(directory) else []
    if not steps:
        raise FileNotFoundError(f"data.statistics_from={directory}: no checkpoint there")
    saved = [DatasetStatistics.from_json(s, source=f"{directory}/{max(steps)} assets")
             for s in checkpoints.read_assets(directory, max(steps))["statistics"]]
    count = len(pipeline_datasets(data_config))
    if len(saved) == 1:
        return saved * count
    if len(saved) != count:
        raise ValueError(f"data.statistics_from={directory}: {len(saved)} datasets' statistics "
                         f"saved, this run mixes {count}")
    return saved


def pipeline_datasets(data_config) -> list:
    from atomskill_jax.data import pipeline as pipeline_lib

    return pipeline_lib.dataset_entries(data_config)


def _assets(config, pipeline, stage: str, mesh) -> dict:
    return {"config": config_json(config), "stage": stage,
            "method": registry.method_name(config),
            "mesh": {k: int(v) for k, v in mesh.shape.items()},
            "datasets": [s.directory for s in pipeline.sources],
            "statistics": [s.to_json() for s in pipeline.statistics]}


def _start_variables(config, stage, workdir: str, mesh):
    """The variables `stage.carried` selects from the final checkpoint of the stage it
    starts from (W/<starts_from>/checkpoints, or `config.train.init_from`: another
    workdir's checkpoints of that stage); everything else starts fresh."""
    source = config.train.get("init_from") or workdir_layout.checkpoints_dir(
        workdir, stage.starts_from)
    abstract = nnx.state(nnx.eval_shape(lambda: ts.build_model(config, int(config.seed))),
                         stage.carried)
    target = ts.with_shardings(abstract, mesh_lib.state_shardings(abstract, mesh))
    params, step = checkpoints.restore_params(source, target, partial=True)
    log.info("%s stage starts from the %s model of %s step %d", stage.name, stage.starts_from,
             source, step)
    return params


def run_stage(config, stage: str, workdir: str, pipeline, mesh, stop=None) -> dict:
    stage_dir = workdir_layout.stage_dir(workdir, stage)
    total = stage_steps(config, stage, pipeline)
    tc = config.train
    tx, schedule = optimizer.make_optimizer(config.optim, total)
    use_ema = ts.resolve_stage(config, stage).ema
    # Damaged newest steps go aside before orbax lists the steps (it caches the list).
    checkpoints.set_aside_damaged(workdir_layout.checkpoints_dir(workdir, stage))
    _sync(f"atomskill_set_aside_damaged_{stage}")
    manager = checkpoints.make_manager(workdir_layout.checkpoints_dir(workdir, stage),
                                       keep=int(tc.keep_checkpoints),
                                       async_save=bool(tc.get("async_checkpoints", True)))
    try:
        return _run_stage(config, stage, stage_dir, workdir, pipeline, mesh, manager, total,
                          tx, schedule, use_ema, stop or interrupts.StopRequest())
    finally:
        manager.close()


def _hang(stop) -> None:
    deadline = time.monotonic() + 3600
    while not stop.requested and time.monotonic() < deadline:
        time.sleep(0.05)


def _run_stage(config, stage, stage_dir, workdir, pipeline, mesh, manager, total, tx, schedule,
               use_ema, stop) -> dict:
    tc = config.train
    latest = manager.latest_step()
    ckpt_dir = os.fspath(manager.directory)
    if latest is None and checkpoints.unrecognised_entries(ckpt_dir):
        raise checkpoints.CheckpointError(
            f"{ckpt_dir} holds step directories {checkpoints.unrecognised_entries(ckpt_dir)} "
            f"that orbax cannot read as checkpoints; fix or remove them, or pass --overwrite")
    for partial in checkpoints.incomplete_saves(ckpt_dir):
        log.warning("ignoring %s/%s: a save that never finished (killed run)", ckpt_dir, partial)
    spec = registry.get_spec(config)
    stage_spec = spec.stage(config, stage)
    init_params = None
    if stage_spec.starts_from is not None and latest is None:
        init_params = _start_variables(config, stage_spec, workdir, mesh)
    graphdef, state, shardings = ts.create_train_state(
        config, stage_spec, tx, mesh, use_ema=use_ema, init_params=init_params,
        abstract_only=latest is not None)  # resuming: the checkpoint fills it
    iterator = pipeline.iterator()
    if latest is not None:
        state = checkpoints.restore_train_state(manager, latest, state, iterator)
        log.info("resumed %s from %s/%d", stage, ckpt_dir, latest)
    step = int(jax.device_get(state.step))
    if step >= total:
        log.info("%s stage already finished (step %d of %d); nothing to train", stage, step, total)
    step_fn = ts.jit_train_step(
        ts.make_train_step(graphdef, tx, config, stage_spec, schedule=schedule,
                           ema_decay=float(tc.get("ema_decay", 0.999))), shardings, mesh)
    hooks = [(hook, ts.make_hook(graphdef, config, stage_spec, hook, shardings, mesh))
             for hook in stage_spec.hooks if hook.every > 0]
    rng = jax.device_put(np.asarray(jax.device_get(state.rng)), mesh_lib.replicated(mesh))
    assets = _assets(config, pipeline, stage, mesh)
    # The method's calibration, with every checkpoint of its last stage (computed at the
    # first save, so training never waits for it and the final checkpoint has it).
    calibrate = spec.calibrate if stage == spec.stage_names(config)[-1] else None
    writer = MetricWriter(stage_dir, total_steps=total, initial_step=step,
                          wandb_config=config.get("wandb"), run_config=config_json(config),
                          progress=bool(tc.get("progress", True)), desc=stage)
    hang_at = int(os.environ.get(HANG_ENV, "-1"))
    log_every, ckpt_every = int(tc.log_every), int(tc.checkpoint_every)
    pending, last = [], {}
    t0, t0_step, first_step = time.perf_counter(), step, step + 1
    saved_at = step  # restored from a checkpoint, or 0: nothing to save

    def save():
        nonlocal saved_at, calibrate
        if calibrate is not None:
            model = nnx.merge(graphdef, state.ema if state.ema is not None else state.params,
                              state.frozen, state.rest, copy=True)
            result = calibrate(config, pipeline, model)
            if result is not None:
                assets["calibration"] = result
                log.info("calibration saved with the checkpoints: %s",
                         {k: v for k, v in result.items() if not isinstance(v, (list, dict))})
            calibrate = None
        checkpoints.save(manager, step, params=ts.inference_params(state, graphdef),
                         train_state=state, iterator=iterator, assets=assets, force=True)
        saved_at = step

    def flush():
        nonlocal pending, last, t0, t0_step
        values = jax.device_get(pending)
        keys = dict.fromkeys(k for m in values for k in m)  # some only every N steps
        last = {k: float(np.mean([m[k] for m in values if k in m])) for k in keys}
        elapsed = time.perf_counter() - t0
        last["steps_per_sec"] = (step - t0_step) / max(elapsed, 1e-9)
        last["examples_per_sec"] = last["steps_per_sec"] * pipeline.global_batch_size
        writer.write(step, last)
        pending, t0, t0_step = [], time.perf_counter(), step

    try:
        while step < total:
            if stop.reached(step):  # every process, at the same step
                break
            batch = mesh_batches.put_on_mesh(ts.host_batch(iterator.next_local()), mesh)
            state, metrics = step_fn(rng, state, batch)
            step += 1
            for hook, hook_fn in hooks:
                if step % hook.every == 0:
                    state, hook_metrics = hook_fn(rng, state)
                    metrics = dict(metrics, **{f"{hook.name}/{k}": v
                                               for k, v in hook_metrics.items()})
            pending.append(metrics)
            writer.advance()
            if step % log_every == 0 or step == total or step == first_step:
                flush()
            if step % ckpt_every == 0 or step == total:
                save()
            if step == hang_at:
                manager.wait_until_finished()
                print(f"HANGING after step {step}", flush=True)
                _hang(stop)
        if step < total:  # stopped by a signal: the step reached, durably
            if pending:
                flush()
            if step != saved_at:
                save()
            manager.wait_until_finished()
            name = signal_name(stop.signum)
            message = (f"training stopped by {name} at {stage} step {step} of {total}; "
                       f"checkpoint {os.fspath(manager.directory)}/{step} saved: run the "
                       f"same command again to resume (exit status {128 + stop.signum})")
            log.warning("%s", message)
            raise interrupts.TrainingInterrupted(stop.signum, message)
        manager.wait_until_finished()
    finally:
        writer.close()
    return {"step": step, "metrics": last}
