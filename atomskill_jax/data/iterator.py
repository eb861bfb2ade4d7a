"""An iterator over pipeline batches whose position can be saved and restored.

The state is tf.data's own iterator checkpoint (`tf.train.Checkpoint(iterator=...)`):
file cursors, shuffle buffers, the mixing RNG and in-flight prefetched elements.
Restored into an iterator of the same pipeline (same config, same datasets) - in this
or a new process - it yields exactly the batches the saved one would have. Every
transform is stateless or seeded by position, so nothing outside tf.data needs saving.
The file's size is dominated by the shuffle buffers (config.*_shuffle_buffer).

Each process saves its own state (its own shard of episodes), named by its index.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import jax
import numpy as np

from atomskill_jax.data import mesh_batches
from atomskill_jax.data.tf_setup import tf


class DataIterator:
    """Yields normalised batches: numpy (local) without a mesh, global jax.Arrays with one."""

    def __init__(self, dataset: tf.data.Dataset, *, normalize: Callable | None = None,
                 mesh=None, global_batch_size: int | None = None,
                 explain_error: Callable[[Exception], Exception | None] | None = None):
        if mesh is not None and global_batch_size is not None:
            mesh_batches.check_batch_size(global_batch_size, mesh)
        self._iterator = iter(dataset)
        self._batches = tf.Variable(0, dtype=tf.int64, trainable=False)
        self._checkpoint = tf.train.Checkpoint(iterator=self._iterator, batches=self._batches)
        self._normalize = normalize
        self._mesh = mesh
        self._explain_error = explain_error  # a TF read error -> a clearer one (or None)

    @property
    def batches_read(self) -> int:
        return int(self._batches.numpy())

    def next_local(self) -> dict[str, Any]:
        """The next batch of this process, as a dict of numpy arrays (normalised)."""
        try:
            batch = jax.tree.map(np.asarray, next(self._iterator))
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

    @staticmethod
    def state_prefix(directory: str) -> str:
        return os.path.join(directory, f"data_iterator_process{jax.process_index()}"
                                       f"_of{jax.process_count()}")

    def save(self, directory: str) -> str:
        """Write this process's iterator state under `directory`; returns its file prefix."""
        tf.io.gfile.makedirs(directory)
        return self._checkpoint.write(self.state_prefix(directory))

    def restore(self, directory: str) -> None:
        prefix = self.state_prefix(directory)
        if not tf.io.gfile.exists(prefix + ".index"):
            raise FileNotFoundError(
                f"no data iterator state {prefix}.index (saved by a run with "
                f"{jax.process_count()} processes?)")
        try:
            self._checkpoint.read(prefix).assert_consumed()
        except (tf.errors.OpError, AssertionError, ValueError) as err:
            raise ValueError(
                f"data iterator state {prefix} does not fit this pipeline (was the data "
                f"config or a dataset changed since it was saved?): {err}") from err
