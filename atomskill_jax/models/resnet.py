"""ResNet-18 with GroupNorm, trained from scratch (AtomSkill Table 9; as in Diffusion
Policy, GroupNorm replaces BatchNorm so there are no batch statistics to keep in sync
across devices or between training and inference).

Input: images float [B, H, W, 3] already scaled; output: the last stage's feature
map [B, H/32, W/32, C] (spatial tokens are made from it by the observation encoder).
Widths and blocks per stage come from config, so tests can use a very small net.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from atomskill_jax.models.layers import FSDP, num_groups, sharded

_CONV_INIT = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")  # He init for ReLU nets


def conv(n_in: int, n_out: int, kernel: int, stride: int = 1, *, rngs: nnx.Rngs, dtype) -> nnx.Conv:
    # Kernels [kh, kw, in, out]: the output channels split along fsdp (widths are 64k).
    return nnx.Conv(n_in, n_out, (kernel, kernel), strides=(stride, stride), padding="SAME",
                    use_bias=False, dtype=dtype, rngs=rngs,
                    kernel_init=sharded(_CONV_INIT, (None, None, None, FSDP)))


def group_norm(channels: int, *, rngs: nnx.Rngs, dtype, zero_init: bool = False) -> nnx.GroupNorm:
    # Zero scale on a block's last norm: each residual block starts as the identity.
    scale_init = nnx.initializers.zeros if zero_init else nnx.initializers.ones
    return nnx.GroupNorm(channels, num_groups=num_groups(channels), dtype=dtype,
                         scale_init=scale_init, rngs=rngs)


class BasicBlock(nnx.Module):
    """Two 3x3 convolutions with a residual; a 1x1 projection when shape changes."""

    def __init__(self, n_in: int, n_out: int, stride: int, *, rngs: nnx.Rngs, dtype):
        self.conv1 = conv(n_in, n_out, 3, stride, rngs=rngs, dtype=dtype)
        self.norm1 = group_norm(n_out, rngs=rngs, dtype=dtype)
        self.conv2 = conv(n_out, n_out, 3, 1, rngs=rngs, dtype=dtype)
        self.norm2 = group_norm(n_out, rngs=rngs, dtype=dtype, zero_init=True)
        if stride != 1 or n_in != n_out:
            self.proj = conv(n_in, n_out, 1, stride, rngs=rngs, dtype=dtype)
            self.proj_norm = group_norm(n_out, rngs=rngs, dtype=dtype)
        else:
            self.proj = self.proj_norm = None

    def __call__(self, x):
        h = jax.nn.relu(self.norm1(self.conv1(x)))
        h = self.norm2(self.conv2(h))
        shortcut = x if self.proj is None else self.proj_norm(self.proj(x))
        return jax.nn.relu(h + shortcut)


class ResNet(nnx.Module):
    """Stem (7x7/2 conv, 3x3/2 max-pool), then stages of BasicBlocks; ResNet-18 is
    `width=64, stage_sizes=(2, 2, 2, 2)` (widths 64, 128, 256, 512; stride 32)."""

    def __init__(self, *, width: int = 64, stage_sizes: Sequence[int] = (2, 2, 2, 2),
                 rngs: nnx.Rngs, dtype=jnp.float32):
        self.stem = conv(3, width, 7, 2, rngs=rngs, dtype=dtype)
        self.stem_norm = group_norm(width, rngs=rngs, dtype=dtype)
        blocks, n_in = [], width
        for stage, size in enumerate(stage_sizes):
            n_out = width * 2 ** stage
            for i in range(size):
                stride = 2 if (stage > 0 and i == 0) else 1
                blocks.append(BasicBlock(n_in, n_out, stride, rngs=rngs, dtype=dtype))
                n_in = n_out
        self.blocks = nnx.List(blocks)
        self.out_features = n_in

    def __call__(self, images):
        x = jax.nn.relu(self.stem_norm(self.stem(images)))
        x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        for block in self.blocks:
            x = block(x)
        return x
