"""An iterator over pipeline batches whose position can be saved and restored.

The state is tf.data's own iterator checkpoint (`tf.train.Checkpoint(iterator=...)`):
file cursors, shuffle buffers, the mixing RNG and in-flight prefetched elements.
Restored into an iterator of the same pipeline (same config, same datasets) - in this
or a new process - it yields exactly the batches the saved one would have. Every
transform is stateless or seeded by position, so nothing outside tf.data needs saving.
The file's size is dominated by the shuffle buffers (config.*_shuffle_buffer).

The pipeline's data shards (pipeline.shard_layout) each have their own tf.data iterator
and their own saved state, named by the shard and the shard count; a process saves
and restores the shards it reads. So a position saved by 2 processes of one shard
each restores into 1 process reading both, and back. A state saved under another
shard count cannot be mapped onto this one: `restore` raises ShardLayoutError, naming
the counts found (the trainer then resumes with the data order restarted).
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable, Sequence

import jax
import numpy as np

from atomskill_jax.data import mesh_batches
from atomskill_jax.data.tf_setup import tf


class ShardLayoutError(FileNotFoundError):
    """The saved data position is for another shard count than this pipeline's."""

    def __init__(self, message: str, saved_counts: list[int]):
        super().__init__(message)
        self.saved_counts = saved_counts


_STATE = re.compile(r"^data_iterator_(?:shard|process)(\d+)_of(\d+)\.index$")


class DataIterator:
    """Yields normalised batches: numpy (local) without a mesh, global jax.Arrays with one.

    `datasets`: one tf.data.Dataset per data shard this process reads (`shards`, of
    `shard_count`; default: one shard, this process's index of the process count); a
    local batch is the shards' batches concatenated in that order.
    """

    def __init__(self, datasets, *, shards: Sequence[int] | None = None,
                 shard_count: int | None = None, normalize: Callable | None = None,
                 mesh=None, global_batch_size: int | None = None,
                 explain_error: Callable[[Exception], Exception | None] | None = None):
        if mesh is not None and global_batch_size is not None:
            mesh_batches.check_batch_size(global_batch_size, mesh)
        if isinstance(datasets, tf.data.Dataset):
            datasets = [datasets]
        self.shards = list(shards) if shards is not None else [jax.process_index()]
        self.shard_count = int(shard_count) if shard_count is not None else jax.process_count()
        if len(self.shards) != len(datasets):
            raise ValueError(f"{len(datasets)} datasets for the shards {self.shards}")
        self._iterators = [iter(ds) for ds in datasets]
        self._batches = tf.Variable(0, dtype=tf.int64, trainable=False)
        self._checkpoints = [tf.train.Checkpoint(iterator=it, batches=self._batches)
                             for it in self._iterators]
        self._normalize = normalize
        self._mesh = mesh
        self._explain_error = explain_error  # a TF read error -> a clearer one (or None)

    @property
    def batches_read(self) -> int:
        return int(self._batches.numpy())

    def _next_raw(self):
        parts = [next(it) for it in self._iterators]
        if len(parts) == 1:
            return jax.tree.map(np.asarray, parts[0])
        return jax.tree.map(lambda *x: np.concatenate([np.asarray(v) for v in x], 0), *parts)

    def next_local(self) -> dict[str, Any]:
        """The next batch of this process, as a dict of numpy arrays (normalised)."""
        try:
            batch = self._next_raw()
        except tf.errors.OpError as err:
            better = self._explain_error(err) if self._explain_error else None
            if better is None:
                raise
            raise better from err
        self._batches.assign_add(1)
        return self._normalize(batch) if self._normalize else batch

    def __next__(self):
        batch = self.next_local()
        return mesh_batches.put_on_mesh(batch, self._mesh) if self._mesh is not None else batch

    def __iter__(self):
        return self

    def state_prefix(self, directory: str, shard: int | None = None) -> str:
        shard = self.shards[0] if shard is None else shard
        return os.path.join(directory, f"data_iterator_shard{shard}_of{self.shard_count}")

    def _legacy_prefix(self, directory: str, shard: int) -> str:
        # Saved before data shards: one per process, named by the process.
        return os.path.join(directory, f"data_iterator_process{shard}_of{self.shard_count}")

    @staticmethod
    def saved_shard_counts(directory: str) -> list[int]:
        """The shard counts of the iterator states saved in `directory`."""
        if not tf.io.gfile.isdir(directory):
            return []
        found = (_STATE.match(n) for n in tf.io.gfile.listdir(directory))
        return sorted({int(m.group(2)) for m in found if m})

    def save(self, directory: str) -> list[str]:
        """Write the state of each of this process's shards under `directory`; their
        file prefixes."""
        tf.io.gfile.makedirs(directory)
        return [ckpt.write(self.state_prefix(directory, shard))
                for shard, ckpt in zip(self.shards, self._checkpoints)]

    def restore(self, directory: str) -> None:
        prefixes = []
        for shard in self.shards:
            prefix = self.state_prefix(directory, shard)
            if not tf.io.gfile.exists(prefix + ".index"):
                legacy = self._legacy_prefix(directory, shard)
                prefix = legacy if tf.io.gfile.exists(legacy + ".index") else None
            if prefix is None:
                counts = self.saved_shard_counts(directory)
                if counts and self.shard_count not in counts:
                    raise ShardLayoutError(
                        f"the data iterator state in {directory} was saved as "
                        f"{' or '.join(map(str, counts))} data shard(s); this pipeline reads "
                        f"{self.shard_count} (data.shards, 0: one per process). Set "
                        f"data.shards when a run starts to resume it on other process "
                        f"counts", counts)
                raise FileNotFoundError(
                    f"no data iterator state for shard {shard} of {self.shard_count} in "
                    f"{directory} (found shard counts: {counts or 'none'})")
            prefixes.append(prefix)
        for prefix, ckpt in zip(prefixes, self._checkpoints):
            try:
                ckpt.read(prefix).assert_consumed()
            except (tf.errors.OpError, AssertionError, ValueError) as err:
                raise ValueError(
                    f"data iterator state {prefix} does not fit this pipeline (was the data "
                    f"config or a dataset changed since it was saved?): {err}") from err
