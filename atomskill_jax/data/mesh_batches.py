"""Put a process's local numpy batch onto the device mesh as one global jax.Array.

The batch axis is split over ('data', 'fsdp') together. Each process holds its own
slice of the global batch (its local batch, from its own shard of episodes);
`jax.make_array_from_process_local_data` stitches the slices, so the same code runs
on one CPU, fake CPU devices and multi-host pods. The mesh comes from the caller
(training/mesh.py); this module never imports training code.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

BATCH_AXES = ("data", "fsdp")


def batch_sharding(mesh: Mesh) -> NamedSharding:
    axes = tuple(a for a in BATCH_AXES if a in mesh.axis_names)
    return NamedSharding(mesh, PartitionSpec(axes))


def check_batch_size(global_batch_size: int, mesh: Mesh) -> None:
    shards = int(np.prod([mesh.shape[a] for a in BATCH_AXES if a in mesh.axis_names]))
    if global_batch_size % shards:
        raise ValueError(f"batch size {global_batch_size} does not split over the mesh's "
                         f"{shards} ('data' x 'fsdp') devices; use a multiple of {shards}")
    if global_batch_size % jax.process_count():
        raise ValueError(f"batch size {global_batch_size} does not split over "
                         f"{jax.process_count()} processes")


def put_on_mesh(local_batch: Any, mesh: Mesh) -> Any:
    """Local arrays [b, ...] -> global arrays [b * process_count, ...] on `mesh`."""
    sharding = batch_sharding(mesh)
    processes = jax.process_count()

    def put(x):
        x = np.asarray(x)
        return jax.make_array_from_process_local_data(
            sharding, x, (x.shape[0] * processes, *x.shape[1:]))

    return jax.tree.map(put, local_batch)
