"""Building blocks shared by the AtomSkill components: sharded dense layers, attention
blocks with pre-LayerNorm, sinusoidal embeddings, dtype handling.

Sharding: every array of two or more dimensions with a model-width axis (kernels,
convolution and transposed-convolution kernels, embeddings, codebooks, buffers of
encodings) carries `out_sharding` metadata naming the `fsdp` mesh axis on one
dimension whose size is a multiple of the model width. `eager_sharding=False` keeps
that as metadata only, so modules build without a mesh (1 CPU, tests); the trainer
reads it with `nnx.get_partition_spec` and places the parameters itself
(training/mesh.py drops an annotation the mesh cannot split evenly). 1-D parameters
(biases, norm scales) and heads onto action dimensions stay replicated: a few KB
each, where splitting would only add one more all-gather per array and step.
bench/fsdp_memory.py measures what fsdp=8 leaves on each device.

Randomness: modules keep no RNG state. Dropout draws from an `nnx.Rngs` passed at call
time (`rngs=`), which the caller builds from an explicit key; `rngs=None` or
`train=False` means no dropout.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

FSDP = "fsdp"

# nnx.Embed's default initializer, for embeddings built with sharding metadata.
EMBED_INIT = nnx.initializers.variance_scaling(1.0, "fan_in", "normal", out_axis=0)

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(name: str):
    """The activation dtype named by `config.dtype` (parameters stay float32)."""
    try:
        return _DTYPES[str(name)]
    except KeyError:
        raise ValueError(f"model.dtype must be one of {sorted(_DTYPES)}, got {name!r}") from None


def sharded(init, spec: Sequence[str | None] | None):
    """An initializer whose Param carries `spec` as sharding metadata (not applied eagerly)."""
    if spec is None:
        return init
    return nnx.with_partitioning(init, tuple(spec), eager_sharding=False)


def sharded_param(value, spec: Sequence[str | None]) -> nnx.Param:
    """A Param holding `value` with `spec` as sharding metadata (not applied eagerly)."""
    return nnx.Param(value, out_sharding=tuple(spec), eager_sharding=False)


def dense(n_in: int, n_out: int, *, rngs: nnx.Rngs, dtype=jnp.float32, shard: str | None = "out",
          use_bias: bool = True, kernel_init=None) -> nnx.Linear:
    """A Linear layer; `shard` = 'out' | 'in' | None names the kernel axis split along fsdp."""
    spec = {"out": (None, FSDP), "in": (FSDP, None), None: None}[shard]
    init = kernel_init or nnx.initializers.lecun_normal()
    return nnx.Linear(n_in, n_out, use_bias=use_bias, dtype=dtype, kernel_init=sharded(init, spec),
                      rngs=rngs)


def layer_norm(n: int, *, rngs: nnx.Rngs, dtype=jnp.float32) -> nnx.LayerNorm:
    return nnx.LayerNorm(n, dtype=dtype, rngs=rngs)


def num_groups(channels: int, max_groups: int = 32) -> int:
    """GroupNorm groups: the largest divisor of `channels` up to `max_groups`."""
    return math.gcd(channels, max_groups)


def dropout(x: jax.Array, rate: float, *, train: bool, rngs: nnx.Rngs | None) -> jax.Array:
    """Inverted dropout whose mask is a hash of (one random 32-bit seed, element index).

    A threefry draw per element at every dropout site made XLA compile times 3x
    longer on CPU; an integer hash of the global element index is cheap to compile,
    good enough for dropout, and the same on any device count or sharding.
    """
    if not train or rate <= 0.0 or rngs is None:
        return x
    seed = jax.random.bits(rngs.dropout(), (), jnp.uint32)
    h = jax.lax.iota(jnp.uint32, x.size).reshape(x.shape) * jnp.uint32(0x9E3779B1) + seed
    # murmur3's 32-bit finaliser: every input bit flips about half the output bits.
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    h = h ^ (h >> 16)
    keep = h >= jnp.uint32(min(int(rate * 2.0 ** 32), 2 ** 32 - 1))
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def attention(num_heads: int, width: int, *, rngs: nnx.Rngs, dtype=jnp.float32,
              kv_width: int | None = None) -> nnx.MultiHeadAttention:
    """Multi-head attention with fsdp metadata on the model-width axis of its kernels."""
    if width % num_heads:
        raise ValueError(f"model width {width} is not divisible by num_heads={num_heads}")
    meta = dict(eager_sharding=False)
    return nnx.MultiHeadAttention(
        num_heads, width, in_kv_features=kv_width or width, dtype=dtype, rngs=rngs,
        keep_rngs=False, dropout_rate=0.0, deterministic=True, decode=False,
        kernel_metadata={**meta, "out_sharding": (FSDP, None, None)},
        out_kernel_metadata={**meta, "out_sharding": (None, None, FSDP)})


class MLP(nnx.Module):
    """Linear -> GELU -> (dropout) -> Linear."""

    def __init__(self, n_in: int, hidden: int, n_out: int, *, rngs: nnx.Rngs, dtype=jnp.float32,
                 dropout_rate: float = 0.0):
        self.fc1 = dense(n_in, hidden, rngs=rngs, dtype=dtype, shard="out")
        self.fc2 = dense(hidden, n_out, rngs=rngs, dtype=dtype, shard="in")
        self.dropout_rate = dropout_rate

    def __call__(self, x, *, train: bool = False, rngs: nnx.Rngs | None = None):
        h = jax.nn.gelu(self.fc1(x))
        return self.fc2(dropout(h, self.dropout_rate, train=train, rngs=rngs))


class MLPStack(nnx.Module):
    """(Linear -> LayerNorm -> GELU) per width in `hidden`, then a Linear onto `n_out`
    (None: no output layer). The deep, wide MLP low-dimensional inputs need to be read
    precisely (object positions to a few millimetres)."""

    def __init__(self, n_in: int, hidden: Sequence[int], n_out: int | None, *, rngs: nnx.Rngs,
                 dtype=jnp.float32, dropout_rate: float = 0.0, out_shard: str | None = "in"):
        widths = [int(n_in), *(int(h) for h in hidden)]
        self.layers = nnx.List([dense(a, b, rngs=rngs, dtype=dtype)
                                for a, b in zip(widths[:-1], widths[1:])])
        self.norms = nnx.List([layer_norm(b, rngs=rngs, dtype=dtype) for b in widths[1:]])
        self.out = (dense(widths[-1], int(n_out), rngs=rngs, dtype=dtype, shard=out_shard)
                    if n_out is not None else None)
        self.out_features = widths[-1] if n_out is None else int(n_out)
        self.dropout_rate = dropout_rate

    def __call__(self, x, *, train: bool = False, rngs: nnx.Rngs | None = None):
        for layer, norm in zip(self.layers, self.norms):
            x = dropout(jax.nn.gelu(norm(layer(x))), self.dropout_rate, train=train, rngs=rngs)
        return x if self.out is None else self.out(x)


class TransformerLayer(nnx.Module):
    """Pre-LN layer: self-attention, then (optionally) cross-attention to a memory, then MLP.

    With `cross_attention=False` the layer has no cross-attention parameters at all, so
    a decoder built without skill conditioning is a different graph, not a masked one.
    """

    def __init__(self, width: int, num_heads: int, mlp_dim: int, *, rngs: nnx.Rngs,
                 dtype=jnp.float32, dropout_rate: float = 0.0, self_attention: bool = True,
                 cross_attention: bool = False):
        self.self_norm = layer_norm(width, rngs=rngs, dtype=dtype) if self_attention else None
        self.self_attn = attention(num_heads, width, rngs=rngs, dtype=dtype) if self_attention else None
        self.cross_norm = layer_norm(width, rngs=rngs, dtype=dtype) if cross_attention else None
        self.cross_attn = attention(num_heads, width, rngs=rngs, dtype=dtype) if cross_attention else None
        self.mlp_norm = layer_norm(width, rngs=rngs, dtype=dtype)
        self.mlp = MLP(width, mlp_dim, width, rngs=rngs, dtype=dtype, dropout_rate=dropout_rate)
        self.dropout_rate = dropout_rate

    def __call__(self, x, memory=None, *, train: bool = False, rngs: nnx.Rngs | None = None):
        drop = lambda y: dropout(y, self.dropout_rate, train=train, rngs=rngs)  # noqa: E731
        if self.self_attn is not None:
            h = self.self_norm(x)
            x = x + drop(self.self_attn(h, h, h))
        if self.cross_attn is not None:
            if memory is None:
                raise ValueError("this layer cross-attends: pass the memory tokens")
            x = x + drop(self.cross_attn(self.cross_norm(x), memory, memory))
        return x + drop(self.mlp(self.mlp_norm(x), train=train, rngs=rngs))


def sinusoidal_embedding(positions: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
    """Fixed sin/cos features [..., dim] of (possibly fractional) positions [...] (float32)."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / max(half, 1))
    angles = jnp.asarray(positions, jnp.float32)[..., None] * freqs
    emb = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, [(0, 0)] * (emb.ndim - 1) + [(0, 1)])
    return emb


def sinusoidal_2d(height: int, width: int, dim: int) -> jax.Array:
    """Fixed 2D position features [height*width, dim]: half the channels per image axis."""
    rows = sinusoidal_embedding(jnp.arange(height), dim // 2)
    cols = sinusoidal_embedding(jnp.arange(width), dim - dim // 2)
    grid = jnp.concatenate([jnp.repeat(rows[:, None], width, 1), jnp.repeat(cols[None], height, 0)], -1)
    return grid.reshape(height * width, dim)


def param_count(module: nnx.Module) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(nnx.state(module, nnx.Param)))
