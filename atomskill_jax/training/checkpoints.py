"""Checkpoints: an orbax CheckpointManager over four separate items.

  params       the model's variables for inference (EMA of the trained parameters
               where an EMA is kept, frozen parameters, non-Param state such as VQ
               usage): all a policy needs, without optimiser state
  train_state  step, RNG, trained parameters, optimiser state, EMA, non-Param state
  data         each process's tf.data iterator position (files named by process)
  assets       JSON: resolved config, normalisation statistics, stage, mesh shape

Saves are asynchronous (the arrays are copied off the devices, then written in the
background); keep-last-K; a step directory appears only once complete (orbax writes
into a temporary directory and renames), so a SIGKILL mid-save leaves the previous
checkpoint intact. Restore takes an abstract target with the current mesh's
shardings, so a checkpoint written on 8 devices restores onto 1 and vice versa.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import orbax.checkpoint as ocp
from etils import epath

ITEMS = ("params", "train_state", "data", "assets")


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be used; training must not silently restart."""


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


def make_manager(directory: str, *, keep: int, async_save: bool = True,
                 read_only: bool = False) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep if keep > 0 else None, create=not read_only, read_only=read_only,
        enable_async_checkpointing=async_save)
    return ocp.CheckpointManager(os.path.abspath(directory), options=options,
                                 item_names=ITEMS)


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

    Any failure becomes a CheckpointError naming the step directory and the reason.
    """
    where = os.path.join(os.fspath(manager.directory), str(step))
    try:
        restored = manager.restore(step, args=ocp.args.Composite(
            train_state=ocp.args.StandardRestore(abstract_state),
            data=DataIteratorRestore(iterator)))
    except Exception as err:  # noqa: BLE001 - every failure means "cannot resume"
        raise CheckpointError(
            f"checkpoint {where} exists but cannot be restored ({type(err).__name__}: "
            f"{str(err)[:800]}). Fix or remove it, or pass --overwrite to start afresh "
            f"(this deletes the workdir's checkpoints)") from err
    return restored["train_state"]


def restore_params(directory: str, abstract_params, step: int | None = None, *,
                   partial: bool = False) -> Any:
    """The `params` item of a checkpoint directory (latest step unless given).

    `partial`: `abstract_params` may be a subset of what was saved; only that subset
    is read (the sampler stage takes the skill model and leaves the sampler fresh).
    """
    manager = make_manager(directory, keep=0, async_save=False, read_only=True)
    step = manager.latest_step() if step is None else step
    if step is None:
        raise CheckpointError(f"no checkpoint in {directory}")
    try:
        if partial:
            args = ocp.args.PyTreeRestore(
                item=abstract_params, partial_restore=True,
                restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_params))
        else:
            args = ocp.args.StandardRestore(abstract_params)
        return manager.restore(step, args=ocp.args.Composite(params=args))["params"], step
    except Exception as err:  # noqa: BLE001
        raise CheckpointError(f"parameters of checkpoint {directory}/{step} cannot be "
                              f"restored ({type(err).__name__}: {str(err)[:800]})") from err
    finally:
        manager.close()


def read_assets(directory: str, step: int | None = None) -> dict:
    manager = make_manager(directory, keep=0, async_save=False, read_only=True)
    try:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint in {directory}")
        return manager.restore(step, args=ocp.args.Composite(
            assets=ocp.args.JsonRestore()))["assets"]
    finally:
        manager.close()
