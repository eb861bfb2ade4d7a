"""Checkpoints: an orbax CheckpointManager over four separate items.

  params       the model's variables for inference (EMA of the trained parameters
               where an EMA is kept, frozen parameters, non-Param state such as VQ
               usage): all a policy needs, without optimiser state
  train_state  step, RNG, trained parameters, optimiser state, EMA, non-Param state
  data         the tf.data iterator position of each data shard (files named by shard)
  assets       JSON: resolved config, normalisation statistics, stage, mesh shape

Saves are asynchronous (the arrays are copied off the devices, then written in the
background); keep-last-K; a step directory appears only once complete (orbax writes
into a temporary directory and renames), so a SIGKILL mid-save leaves the previous
checkpoint intact. Restore takes an abstract target with the current mesh's
shardings, so a checkpoint written on 8 devices restores onto 1 and vice versa.

Every step carries a checksum manifest of its items' files (checksums.py), written by
process 0 once all processes have written and before orbax commits the step, so it
costs the training thread nothing with async saves. Restores verify it: a training
resume sets damaged newest steps aside (W/<stage>/damaged_checkpoints/) and resumes
from the newest intact one, with a warning naming the step and the file; loading a
policy refuses a damaged step (`DamagedCheckpointError`, naming the step, the file and
the intact steps to load instead): evaluating silently an older step than asked for
would report results for the wrong model. Steps saved before manifests existed load
unverified, with one warning per directory.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import os
import re
import shutil
import threading
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from atomskill_jax.training import checksums

log = logging.getLogger(__name__)
ITEMS = ("params", "train_state", "data", "assets")
DAMAGED_DIR = "damaged_checkpoints"  # beside checkpoints/: steps a resume set aside
_warned_unverified: set[str] = set()


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be used; training must not silently restart."""


class DamagedCheckpointError(CheckpointError):
    """A step's files do not match its checksum manifest."""


_STATUS = re.compile(r"^[A-Z][A-Z_]{2,}: ")
_TS_SUFFIX = re.compile(r"\s*\[(tensorstore_spec|source locations)=.*$")


def failure_message(err: BaseException, limit: int = 600) -> str:
    """The innermost cause first (TensorStore's own reason, e.g. a byte range past the
    end of a truncated file), then the outer error, cut at the end, not the start: the
    outer message is mostly a long TensorStore spec."""
    chain, seen = [err], {id(err)}
    while True:
        nxt = chain[-1].__cause__ or (None if chain[-1].__suppress_context__
                                      else chain[-1].__context__)
        if nxt is None or id(nxt) in seen:
            break
        chain.append(nxt)
        seen.add(id(nxt))
    root = chain[-1]
    reason = " ".join(str(root).split())
    reason = _TS_SUFFIX.sub("", reason)  # the spec repeats what the paths already say
    if _STATUS.match(reason) and ": " in reason:
        # An absl status (TensorStore): "CODE: Error reading A: Error reading B: why";
        # the innermost clause is the last.
        context, innermost = reason.rsplit(": ", 1)
        reason = f"{innermost} (in: {context[:limit]}{' ...' if len(context) > limit else ''})"
    text = f"{type(root).__name__}: {reason}"
    if root is not err:
        outer = " ".join(str(err).split())
        if len(outer) > limit:
            outer = outer[:limit] + " ..."
        text += f" [raised as {type(err).__name__}: {outer}]"
    return text


class DataIteratorHandler(ocp.CheckpointHandler):
    """Saves/restores a `DataIterator` (tf.data's own checkpoint files) in the item dir.

    Orbax runs non-async handlers to completion before `save` returns, so the state
    written is the iterator's position at the step being saved.
    """

    def save(self, directory: epath.Path, args: "DataIteratorSave") -> None:
        args.iterator.save(os.fspath(directory))

    def restore(self, directory: epath.Path, args: "DataIteratorRestore") -> None:
        args.iterator.restore(os.fspath(directory))

    def metadata(self, directory: epath.Path) -> None:
        return None

    def finalize(self, directory: epath.Path) -> None:
        pass

    def close(self) -> None:
        pass


@ocp.args.register_with_handler(DataIteratorHandler, for_save=True)
@dataclasses.dataclass
class DataIteratorSave(ocp.args.CheckpointArgs):
    iterator: Any


@ocp.args.register_with_handler(DataIteratorHandler, for_restore=True)
@dataclasses.dataclass
class DataIteratorRestore(ocp.args.CheckpointArgs):
    iterator: Any


class _ChecksummedManager(ocp.CheckpointManager):
    """A CheckpointManager that writes each step's checksum manifest.

    Async saves: orbax calls `post_finalization_callback` in its commit thread, on the
    primary process only, after every process has written and before the temporary
    step directory is renamed; the steps being saved are queued because orbax gives
    the callback no arguments (saves commit in order, one at a time). Synchronous
    saves: process 0 writes the manifest into the final directory when save returns.
    """

    def __init__(self, directory: str, *, options, async_save: bool):
        self._async = async_save
        self._queue: collections.deque = collections.deque()
        self._queue_lock = threading.Lock()
        if async_save and not options.read_only:
            options.async_options = ocp.AsyncOptions(
                post_finalization_callback=self._write_manifest_before_commit)
        super().__init__(directory, options=options, item_names=ITEMS)

    def _write_manifest_before_commit(self) -> None:
        with self._queue_lock:
            step = self._queue.popleft() if self._queue else None
        root = os.fspath(self.directory)
        try:
            tmp = sorted(n for n in os.listdir(root)
                         if n.startswith(f"{step}.orbax-checkpoint-tmp"))
            where = os.path.join(root, tmp[0] if tmp else str(step))
            checksums.write_manifest(where, ITEMS)
        except Exception as err:  # noqa: BLE001 - a lost manifest must not lose the save
            log.warning("checkpoint step %s in %s: checksum manifest not written (%s); "
                        "the step will load unverified", step, root, failure_message(err))

    def save(self, step: int, *args, **kwargs) -> bool:
        if self._async:
            with self._queue_lock:
                self._queue.append(step)
        saved = super().save(step, *args, **kwargs)
        if self._async and not saved:
            with self._queue_lock:
                if step in self._queue:
                    self._queue.remove(step)
        elif saved and not self._async and jax.process_index() == 0:
            checksums.write_manifest(os.path.join(os.fspath(self.directory), str(step)), ITEMS)
        return saved


# Orbax's replica-parallel save cuts each replicated array into one slice per replica,
# each an eager slice dispatched (and compiled, per shape) before the copy to the host.
# For the many small arrays of a model that buys no write bandwidth and costs a dispatch
# per slice: on 8 CPU devices, 12 s of a 20 s save of a tiny model. Arrays whose slice
# per replica would be smaller than this are written whole by their first replica (what
# orbax did before replica-parallel saves); the files written are the same either way.
MIN_SLICE_BYTES_FOR_REPLICA_PARALLEL = 4 << 20


@functools.cache  # once per process
def _register_array_handler() -> None:
    # orbax's own default handler for jax.Array, with the threshold added
    from orbax.checkpoint._src.metadata.array_metadata_store import Store

    ocp.type_handlers.register_type_handler(
        jax.Array, ocp.type_handlers.ArrayHandler(
            array_metadata_store=Store(),
            min_slice_bytes_for_replica_parallel=MIN_SLICE_BYTES_FOR_REPLICA_PARALLEL),
        override=True)


def make_manager(directory: str, *, keep: int, async_save: bool = True,
                 read_only: bool = False) -> ocp.CheckpointManager:
    _register_array_handler()
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep if keep > 0 else None, create=not read_only, read_only=read_only,
        enable_async_checkpointing=async_save)
    return _ChecksummedManager(os.path.abspath(directory), options=options,
                               async_save=async_save)


def step_dirs(directory: str) -> list[int]:
    """Steps with a final (committed) directory, newest first."""
    if not os.path.isdir(directory):
        return []
    return sorted((int(n) for n in os.listdir(directory)
                   if n.isdigit() and os.path.isdir(os.path.join(directory, n))), reverse=True)


def check_step(directory: str, step: int, items=None) -> checksums.Verdict:
    """Verify one step; a step without a manifest is warned about once per directory."""
    verdict = checksums.verify(os.path.join(directory, str(step)), items)
    if verdict.status == "unverified" and directory not in _warned_unverified:
        _warned_unverified.add(directory)
        log.warning("%s/%d has no checksum manifest (saved before checksums existed): "
                    "loading it unverified", directory, step)
    return verdict


def set_aside_damaged(directory: str) -> list[str]:
    """Before a resume: move damaged steps newer than the newest usable one to
    ../damaged_checkpoints/ (so the resumed run can save those steps again), logging
    each. Refuses, changing nothing, when no step is usable. Only process 0 moves;
    the caller synchronises the processes afterwards. Returns the warnings logged."""
    steps = step_dirs(directory)
    damaged = []
    for step in steps:
        verdict = check_step(directory, step)
        if verdict.usable:
            break
        damaged.append((step, verdict.detail))
    else:
        if damaged:
            listed = "; ".join(f"step {s}: {d}" for s, d in damaged)
            raise DamagedCheckpointError(
                f"every checkpoint in {directory} is damaged ({listed}). Restore them from "
                f"a copy, or pass --overwrite to start afresh (this deletes them)")
    messages = []
    if not damaged:
        return messages
    resume = steps[len(damaged)]
    aside = os.path.join(os.path.dirname(directory), DAMAGED_DIR)
    for step, detail in damaged:
        target = os.path.join(aside, str(step))
        n = 1
        while os.path.exists(target):
            target, n = os.path.join(aside, f"{step}.{n}"), n + 1
        if jax.process_index() == 0:
            os.makedirs(aside, exist_ok=True)
            shutil.move(os.path.join(directory, str(step)), target)
        messages.append(f"checkpoint {directory}/{step} is damaged ({detail}); moved to "
                        f"{target}; resuming from step {resume}, the newest intact step")
        log.warning("%s", messages[-1])
    return messages


def require_intact(directory: str, step: int, items) -> None:
    """Loading a policy: refuse a damaged step, naming the file and the intact steps."""
    verdict = check_step(directory, step, items)
    if verdict.usable:
        return
    others = [s for s in step_dirs(directory)
              if s != step and checksums.verify(os.path.join(directory, str(s)), items).usable]
    hint = (f"intact steps: {others} (load one with --step={others[0]})" if others
            else "no other intact step: retrain, or restore the checkpoint from a copy")
    raise DamagedCheckpointError(f"checkpoint {directory}/{step} is damaged: {verdict.detail}; "
                                 f"refusing to load it ({hint})")


def incomplete_saves(directory: str) -> list[str]:
    """Temporary directories of saves that never finished (a killed run)."""
    if not os.path.isdir(directory):
        return []
    return sorted(n for n in os.listdir(directory) if "orbax-checkpoint-tmp" in n)


def unrecognised_entries(directory: str) -> list[str]:
    """Entries that look like step checkpoints but orbax does not list (e.g. a step
    directory whose metadata was lost): refusing is safer than starting over."""
    if not os.path.isdir(directory):
        return []
    return sorted(n for n in os.listdir(directory)
                  if n.isdigit() and os.path.isdir(os.path.join(directory, n)))


def save(manager: ocp.CheckpointManager, step: int, *, params, train_state, iterator,
         assets: dict, force: bool = False) -> bool:
    return manager.save(step, force=force, args=ocp.args.Composite(
        params=ocp.args.StandardSave(params),
        train_state=ocp.args.StandardSave(train_state),
        data=DataIteratorSave(iterator),
        assets=ocp.args.JsonSave(assets)))


def restore_train_state(manager: ocp.CheckpointManager, step: int, abstract_state,
                        iterator) -> Any:
    """Train state (onto the shardings of `abstract_state`) and the iterator position.

    A position saved under another data shard count (data.shards 0, one per process,
    and another process count) cannot continue this pipeline's order: the train state
    is restored, the data order starts afresh, with a warning. Any other failure
    becomes a CheckpointError naming the step directory and the reason.
    """
    where = os.path.join(os.fspath(manager.directory), str(step))
    items = {"train_state": ocp.args.StandardRestore(abstract_state),
             "data": DataIteratorRestore(iterator)}
    saved = iterator.saved_shard_counts(os.path.join(where, "data"))
    if saved and iterator.shard_count not in saved:
        del items["data"]
        log.warning("checkpoint %s: its data position was saved for %s data shard(s), this "
                    "run reads %d (data.shards=0 is one per process): the train state is "
                    "restored but the data order starts afresh, so this is not an exact "
                    "continuation. Start runs with data.shards=N (a multiple of every "
                    "process count to be used) to resume exactly on another process count",
                    where, " or ".join(map(str, saved)), iterator.shard_count)
    try:
        restored = manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as err:  # noqa: BLE001 - every failure means "cannot resume"
        raise CheckpointError(
            f"checkpoint {where} exists but cannot be restored: {failure_message(err)}. "
            f"Fix or remove it, or pass --overwrite to start afresh "
            f"(this deletes the workdir's checkpoints)") from err
    return restored["train_state"]


def restore_params(directory: str, abstract_params, step: int | None = None, *,
                   partial: bool = False) -> Any:
    """The `params` item of a checkpoint directory (latest step unless given).

    `partial`: `abstract_params` may be a subset of what was saved; only that subset
    is read (the sampler stage takes the skill model and leaves the sampler fresh).
    A step whose params files fail their checksums is refused (DamagedCheckpointError).
    """
    manager = make_manager(directory, keep=0, async_save=False, read_only=True)
    step = manager.latest_step() if step is None else step
    if step is None:
        manager.close()
        raise CheckpointError(f"no checkpoint in {directory}")
    try:
        require_intact(directory, step, ("params",))
        if partial:
            args = ocp.args.PyTreeRestore(
                item=abstract_params, partial_restore=True,
                restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_params))
        else:
            args = ocp.args.StandardRestore(abstract_params)
        return manager.restore(step, args=ocp.args.Composite(params=args))["params"], step
    except CheckpointError:
        raise
    except Exception as err:  # noqa: BLE001
        raise CheckpointError(f"parameters of checkpoint {directory}/{step} cannot be "
                              f"restored: {failure_message(err)}") from err
    finally:
        manager.close()


def read_assets(directory: str, step: int | None = None) -> dict:
    manager = make_manager(directory, keep=0, async_save=False, read_only=True)
    try:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint in {directory}")
        require_intact(directory, step, ("assets",))
        return manager.restore(step, args=ocp.args.Composite(
            assets=ocp.args.JsonRestore()))["assets"]
    finally:
        manager.close()
