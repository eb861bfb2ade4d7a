"""Skill encoder φ: a skill's resampled actions [B, L, A] -> n tokens z_e [B, n, d].

A linear lift to width d, then 1D convolutions (kernel `conv_kernel`, stride 2) halving
the sequence until it has n = `num_tokens` positions, each followed by GroupNorm and
GELU; then learned position embeddings and `num_layers` self-attention layers
(AtomSkill: L=64 -> n=8 with three stride-2 convolutions, 6 layers, 8 heads). A final
LayerNorm + linear gives the pre-quantisation embeddings.

L must be n times a power of two (64 = 8 * 2^3); otherwise the constructor says so.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from atomskill_jax.models.layers import (FSDP, TransformerLayer, compute_dtype, dense, layer_norm,
                                         num_groups, sharded, sharded_param)


def num_downsamples(length: int, num_tokens: int) -> int:
    """How many stride-2 convolutions take `length` to `num_tokens` (or a clear error)."""
    steps, n = 0, int(length)
    while n > num_tokens and n % 2 == 0:
        n, steps = n // 2, steps + 1
    if n != num_tokens:
        raise ValueError(
            f"skill_length={length} cannot be halved down to skill_encoder.num_tokens="
            f"{num_tokens}: set data.skill_resample_length (= model.skill_length) to "
            f"num_tokens * 2^k, e.g. {num_tokens * 8}")
    return steps


class SkillEncoder(nnx.Module):
    def __init__(self, config, *, rngs: nnx.Rngs):
        dtype = compute_dtype(config.dtype)
        d = config.d_model
        cfg = config.skill_encoder
        self.num_tokens = int(cfg.num_tokens)
        self.input_proj = dense(config.action_dim, d, rngs=rngs, dtype=dtype)
        convs, norms = [], []
        for _ in range(num_downsamples(config.skill_length, self.num_tokens)):
            convs.append(nnx.Conv(d, d, (cfg.conv_kernel,), strides=(2,), padding="SAME",
                                  dtype=dtype, rngs=rngs,
                                  kernel_init=sharded(nnx.initializers.lecun_normal(),
                                                      (None, None, FSDP))))
            norms.append(nnx.GroupNorm(d, num_groups=num_groups(d), dtype=dtype, rngs=rngs))
        self.convs, self.norms = nnx.List(convs), nnx.List(norms)
        self.pos_embed = sharded_param(
            0.02 * jax.random.normal(rngs.params(), (self.num_tokens, d)), (None, FSDP))
        self.layers = nnx.List([
            TransformerLayer(d, config.num_heads, config.mlp_dim, rngs=rngs, dtype=dtype,
                             dropout_rate=config.dropout)
            for _ in range(cfg.num_layers)])
        self.out_norm = layer_norm(d, rngs=rngs, dtype=dtype)
        self.out_proj = dense(d, d, rngs=rngs, dtype=dtype)
        self.dtype = dtype

    def __call__(self, skill_actions, *, train: bool = False, rngs: nnx.Rngs | None = None):
        """skill_actions [B, L, A] -> z_e [B, n, d] (float32: it is quantised next)."""
        x = self.input_proj(jnp.asarray(skill_actions, self.dtype))
        for conv, norm in zip(self.convs, self.norms):
            x = jax.nn.gelu(norm(conv(x)))
        x = x + self.pos_embed[...].astype(self.dtype)
        for layer in self.layers:
            x = layer(x, train=train, rngs=rngs)
        return self.out_proj(self.out_norm(x)).astype(jnp.float32)
