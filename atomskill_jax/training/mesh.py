"""The device mesh: axes ('data', 'fsdp'); batches are split over both.

`make_mesh(data=-1, fsdp=1)`: -1 takes all devices not used by the other axis.
Axis types are `Auto` (sharding propagated by the compiler from annotations),
not jax.make_mesh's newer `Explicit` default, so jit code needs no sharding-in-types.
"""

from __future__ import annotations

from typing import Sequence

import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

AXES = ("data", "fsdp")


def make_mesh(data: int = -1, fsdp: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    devices = list(devices) if devices is not None else jax.devices()
    count = len(devices)
    if data == -1 and fsdp == -1:
        raise ValueError("make_mesh: at most one of data and fsdp may be -1")
    if data == -1:
        data = count // max(fsdp, 1)
    if fsdp == -1:
        fsdp = count // max(data, 1)
    if data < 1 or fsdp < 1 or data * fsdp != count:
        raise ValueError(f"make_mesh: data={data} x fsdp={fsdp} must use all {count} devices; "
                         f"pick sizes whose product is {count} (or -1 for one of them)")
    return jax.make_mesh((data, fsdp), AXES, axis_types=(AxisType.Auto,) * len(AXES),
                         devices=devices)


def maybe_initialize_distributed(enabled: bool | None = None) -> bool:
    """`jax.distributed.initialize()` for multi-process launches, before any device use.

    On when `enabled` (config.distributed.initialize) or $ATOMSKILL_DISTRIBUTED=1; the
    coordinator address and process ids come from the cluster environment (SLURM, TPU
    pods, or $JAX_COORDINATOR_ADDRESS / $JAX_NUM_PROCESSES / $JAX_PROCESS_ID).
    JAX itself reads only the address from the environment, so the process count and
    id are read here; without them (and without a cluster JAX detects) it would fail
    with "Number of processes must be defined".
    """
    import os

    if enabled is None or enabled is False:
        enabled = os.environ.get("ATOMSKILL_DISTRIBUTED", "") in ("1", "true", "yes")
    if not enabled:
        return False
    if not jax.distributed.is_initialized():
        kwargs = {}
        for key, name in (("num_processes", "JAX_NUM_PROCESSES"),
                          ("process_id", "JAX_PROCESS_ID")):
            value = os.environ.get(name, "").strip()
            if value:
                try:
                    kwargs[key] = int(value)
                except ValueError:
                    raise ValueError(f"${name}={value!r} is not an integer; set it to the "
                                     f"{key.replace('_', ' ')} of this launch, or unset it "
                                     "to let JAX detect the cluster") from None
        jax.distributed.initialize(**kwargs)
    return True


def mesh_from_config(config) -> Mesh:
    """config.mesh = {data: -1, fsdp: 1}; -1 takes the devices the other axis leaves."""
    return make_mesh(data=int(config.get("data", -1)), fsdp=int(config.get("fsdp", 1)))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def _fit_spec(spec: PartitionSpec, shape: tuple[int, ...], mesh: Mesh) -> PartitionSpec:
    """Drop an annotation on an axis the mesh does not have or cannot split evenly, so
    one model annotation works on every mesh (tiny test sizes on 8 devices, say)."""
    out = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        names = (axes,) if isinstance(axes, str) else tuple(axes or ())
        names = tuple(n for n in names if n in mesh.axis_names)
        size = 1
        for n in names:
            size *= mesh.shape[n]
        out.append(None if not names or dim % size else
                   (names[0] if len(names) == 1 else names))
    return PartitionSpec(*out)


def state_shardings(state, mesh: Mesh):
    """NamedShardings for an nnx.State (abstract or concrete) from its variables'
    sharding annotations (`nnx.get_partition_spec`); unannotated leaves replicate."""
    from flax import nnx

    specs = nnx.get_partition_spec(state)

    def one(spec, leaf):
        shape = tuple(getattr(leaf, "shape", ()))
        if not isinstance(spec, PartitionSpec):
            spec = PartitionSpec()
        return NamedSharding(mesh, _fit_spec(spec, shape, mesh))

    return jax.tree.map(one, specs, state, is_leaf=lambda x: isinstance(x, PartitionSpec))
