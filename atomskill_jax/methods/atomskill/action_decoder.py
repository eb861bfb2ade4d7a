"""Action decoder ψ (AtomSkill sec. 3.3, eq. 16).

Block one (`decoder.fusion_layers`, 7): the observation tokens (cameras, proprio,
state, language) self-attend and, as queries, cross-attend to the skill tokens (keys
and values, plus learned per-position embeddings). Block two (`decoder.action_layers`,
7): H (+1 for the keypose) fixed sinusoidal positional queries self-attend and
cross-attend to the fused observation features. Query h < H gives action a_{t+h}; the
last query gives the keypose (the skill's terminal absolute pose).

Switches: `decoder.skill_conditioning=False` builds block one without cross-attention
(an ACT-like baseline: no skill tokens anywhere); `decoder.predict_keypose=False`
drops the keypose query and head (the keypose output is then None).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from atomskill_jax.models.layers import (FSDP, TransformerLayer, compute_dtype, dense, layer_norm,
                                         sharded_param, sinusoidal_embedding)


class ActionDecoder(nnx.Module):
    def __init__(self, config, *, rngs: nnx.Rngs):
        dtype = compute_dtype(config.dtype)
        d = config.d_model
        cfg = config.decoder
        self.skill_conditioning = bool(cfg.skill_conditioning)
        self.predict_keypose = bool(cfg.predict_keypose)
        self.horizon = int(config.horizon)
        layer = lambda cross: TransformerLayer(  # noqa: E731
            d, config.num_heads, config.mlp_dim, rngs=rngs, dtype=dtype,
            dropout_rate=config.dropout, cross_attention=cross)
        self.skill_pos_embed = (
            sharded_param(0.02 * jax.random.normal(
                rngs.params(), (config.skill_encoder.num_tokens, d)), (None, FSDP))
            if self.skill_conditioning else None)
        self.fusion_layers = nnx.List([layer(self.skill_conditioning)
                                       for _ in range(cfg.fusion_layers)])
        self.fusion_norm = layer_norm(d, rngs=rngs, dtype=dtype)
        self.action_layers = nnx.List([layer(True) for _ in range(cfg.action_layers)])
        self.out_norm = layer_norm(d, rngs=rngs, dtype=dtype)
        # Heads onto a handful of action dimensions: small, replicated.
        self.action_head = dense(d, config.action_dim, rngs=rngs, dtype=dtype, shard=None)
        self.keypose_head = (dense(d, config.action_dim, rngs=rngs, dtype=dtype, shard=None)
                             if self.predict_keypose else None)
        self.d_model = d
        self.dtype = dtype

    def __call__(self, obs_tokens, skill_tokens=None, *, train: bool = False,
                 rngs: nnx.Rngs | None = None):
        """obs_tokens [B, T, d], skill_tokens [B, n, d] -> (chunk [B, H, A], keypose [B, A] | None)."""
        x = obs_tokens.astype(self.dtype)
        memory = None
        if self.skill_conditioning:
            if skill_tokens is None:
                raise ValueError("the decoder is skill-conditioned: pass skill tokens")
            memory = (skill_tokens + self.skill_pos_embed[...]).astype(self.dtype)
        for layer in self.fusion_layers:
            x = layer(x, memory, train=train, rngs=rngs)
        fused = self.fusion_norm(x)

        num_queries = self.horizon + int(self.predict_keypose)
        queries = sinusoidal_embedding(jnp.arange(num_queries), self.d_model).astype(self.dtype)
        q = jnp.broadcast_to(queries, (x.shape[0], *queries.shape))
        for layer in self.action_layers:
            q = layer(q, fused, train=train, rngs=rngs)
        q = self.out_norm(q)
        chunk = self.action_head(q[:, :self.horizon]).astype(jnp.float32)
        keypose = (self.keypose_head(q[:, self.horizon]).astype(jnp.float32)
                   if self.predict_keypose else None)
        return chunk, keypose
