"""The device mesh: axes ('data', 'fsdp'); batches are split over both.

`make_mesh(data=-1, fsdp=1)`: -1 takes all devices not used by the other axis.
Axis types are `Auto` (sharding propagated by the compiler from annotations),
not jax.make_mesh's newer `Explicit` default, so jit code needs no sharding-in-types.
"""

from __future__ import annotations

from typing import Sequence

import jax
from jax.sharding import AxisType, Mesh

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
