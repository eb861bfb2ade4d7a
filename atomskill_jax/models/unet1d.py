"""A 1D convolutional UNet with FiLM conditioning (the Diffusion Policy layout), used by
the skill sampler ρ over the n skill tokens: sequence length n, channels d.

Each residual block: conv -> GroupNorm -> Mish, FiLM (a per-channel scale and bias
predicted from the conditioning vector), conv -> GroupNorm -> Mish, plus a 1x1
residual projection when widths change. Levels halve the sequence (stride-2 conv) and
the decoder doubles it back (transposed conv), concatenating the skip features.
n must be divisible by 2^(levels - 1) (8 tokens and two levels: 8 -> 4 -> 8).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from atomskill_jax.models.layers import FSDP, dense, num_groups, sharded


def mish(x):
    return x * jnp.tanh(jax.nn.softplus(x))


def conv1d(n_in: int, n_out: int, kernel: int, *, rngs: nnx.Rngs, dtype, stride: int = 1):
    return nnx.Conv(n_in, n_out, (kernel,), strides=(stride,), padding="SAME", dtype=dtype,
                    rngs=rngs, kernel_init=sharded(nnx.initializers.lecun_normal(),
                                                   (None, None, FSDP)))


class ConvBlock(nnx.Module):
    def __init__(self, n_in: int, n_out: int, kernel: int, *, rngs: nnx.Rngs, dtype):
        self.conv = conv1d(n_in, n_out, kernel, rngs=rngs, dtype=dtype)
        self.norm = nnx.GroupNorm(n_out, num_groups=num_groups(n_out, 8), dtype=dtype, rngs=rngs)

    def __call__(self, x):
        return mish(self.norm(self.conv(x)))


class FiLMResidualBlock(nnx.Module):
    def __init__(self, n_in: int, n_out: int, cond_dim: int, kernel: int, *, rngs: nnx.Rngs, dtype):
        self.block1 = ConvBlock(n_in, n_out, kernel, rngs=rngs, dtype=dtype)
        self.block2 = ConvBlock(n_out, n_out, kernel, rngs=rngs, dtype=dtype)
        self.film = dense(cond_dim, 2 * n_out, rngs=rngs, dtype=dtype)
        self.residual = conv1d(n_in, n_out, 1, rngs=rngs, dtype=dtype) if n_in != n_out else None

    def __call__(self, x, cond):
        """x [B, n, C_in], cond [B, cond_dim] -> [B, n, C_out]."""
        h = self.block1(x)
        scale, bias = jnp.split(self.film(mish(cond)), 2, axis=-1)
        h = self.block2(h * (1.0 + scale[:, None]) + bias[:, None])
        return h + (x if self.residual is None else self.residual(x))


class ConditionalUnet1D(nnx.Module):
    def __init__(self, channels: int, cond_dim: int, dims: Sequence[int], *, kernel: int = 3,
                 rngs: nnx.Rngs, dtype=jnp.float32):
        all_dims = [channels, *dims]
        pairs = list(zip(all_dims[:-1], all_dims[1:]))
        self.num_levels = len(pairs)
        block = lambda i, o: FiLMResidualBlock(i, o, cond_dim, kernel, rngs=rngs, dtype=dtype)  # noqa: E731
        down = []
        for level, (n_in, n_out) in enumerate(pairs):
            last = level == len(pairs) - 1
            down.append(nnx.List([
                block(n_in, n_out), block(n_out, n_out),
                None if last else conv1d(n_out, n_out, 3, stride=2, rngs=rngs, dtype=dtype)]))
        self.down = nnx.List(down)
        self.mid = nnx.List([block(dims[-1], dims[-1]), block(dims[-1], dims[-1])])
        up = []
        for n_in, n_out in reversed(pairs[1:]):
            up.append(nnx.List([
                block(2 * n_out, n_in), block(n_in, n_in),
                # Kernel [4, in, out]; the initializer is ConvTranspose's default.
                nnx.ConvTranspose(n_in, n_in, (4,), strides=(2,), padding="SAME", dtype=dtype,
                                  rngs=rngs, kernel_init=sharded(
                                      nnx.initializers.lecun_normal(), (None, None, FSDP)))]))
        self.up = nnx.List(up)
        # The full-resolution skip joins before the output: without it every feature must
        # squeeze through the stride-2 path, and the denoiser cannot even learn to pass
        # its input through (ε at high noise) in a short run.
        self.final_block = ConvBlock(2 * dims[0], dims[0], kernel, rngs=rngs, dtype=dtype)
        self.final = conv1d(dims[0], channels, 1, rngs=rngs, dtype=dtype)

    def __call__(self, x, cond):
        """x [B, n, channels], cond [B, cond_dim] -> [B, n, channels]."""
        factor = 2 ** (self.num_levels - 1)
        if x.shape[1] % factor:
            raise ValueError(f"the UNet halves the sequence {self.num_levels - 1} times: "
                             f"{x.shape[1]} tokens are not divisible by {factor}; use fewer "
                             f"sampler.unet_channel_mults or more skill tokens")
        skips = []
        for res1, res2, downsample in self.down:
            x = res2(res1(x, cond), cond)
            skips.append(x)
            if downsample is not None:
                x = downsample(x)
        for res in self.mid:
            x = res(x, cond)
        for res1, res2, upsample in self.up:
            x = jnp.concatenate([x, skips.pop()], axis=-1)
            x = upsample(res2(res1(x, cond), cond))
        x = jnp.concatenate([x, skips[0]], axis=-1)
        return self.final(self.final_block(x))
