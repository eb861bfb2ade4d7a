"""USR's task-aware fusion of scene tokens with the instruction (eq. 2):

    f_vl = softmax(f̂_l f̂_vᵀ / τ) (f̂_v + PE)

f̂_l, f̂_v: the projected language queries and scene tokens, L2-normalised (so f̂_l f̂_vᵀ
is a cosine similarity in [-1, 1] and τ alone sets how peaked the attention is); PE a
learned positional embedding over scene tokens (which token is the hand, which patch is
where); τ learnable, parametrised as log τ and clipped to [0.01, 1] (CLIP's logit-scale
bounds; init 0.07 as CLIP's). A sentence embedding [B, E] becomes `num_queries` query
tokens (its projection plus a learned offset per query), so each frame fuses into
several tokens; text tokens [B, N, E] (CLIP) use their first `num_queries` tokens.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from atomskill_jax.models.layers import dense

MIN_TAU, MAX_TAU = 0.01, 1.0


def l2_normalise(x, eps: float = 1e-6):
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


class TaskAwareFusion(nnx.Module):
    def __init__(self, lang_dim: int, scene_dim: int, dim: int, *, num_queries: int,
                 max_scene_tokens: int, rngs: nnx.Rngs, init_temperature: float = 0.07):
        if not MIN_TAU <= init_temperature <= MAX_TAU:
            raise ValueError(f"init_temperature must be in [{MIN_TAU}, {MAX_TAU}], "
                             f"got {init_temperature}")
        self.num_queries, self.max_scene_tokens = int(num_queries), int(max_scene_tokens)
        self.lang_proj = dense(lang_dim, dim, rngs=rngs)
        self.scene_proj = dense(scene_dim, dim, rngs=rngs)
        self.query_offsets = nnx.Param(0.02 * jax.random.normal(rngs.params(),
                                                                (num_queries, dim)))
        self.positions = nnx.Param(0.02 * jax.random.normal(rngs.params(),
                                                            (max_scene_tokens, dim)))
        self.log_tau = nnx.Param(jnp.asarray(math.log(init_temperature), jnp.float32))

    @property
    def temperature(self):
        return jnp.clip(jnp.exp(self.log_tau[...]), MIN_TAU, MAX_TAU)

    def queries(self, language):
        language = jnp.asarray(language, jnp.float32)
        if language.ndim == 2:  # one sentence embedding -> num_queries tokens
            return self.lang_proj(language)[:, None, :] + self.query_offsets[...][None]
        if language.ndim == 3:
            if language.shape[1] < self.num_queries:
                raise ValueError(f"{language.shape[1]} text tokens for {self.num_queries} "
                                 "queries")
            return self.lang_proj(language[:, :self.num_queries])
        raise ValueError(f"language must be [B, E] or [B, N, E], got shape {language.shape}")

    def __call__(self, language, scene_tokens):
        n = scene_tokens.shape[1]
        if n > self.max_scene_tokens:
            raise ValueError(f"{n} scene tokens; max_scene_tokens is {self.max_scene_tokens}")
        l_hat = l2_normalise(self.queries(language))
        v_hat = l2_normalise(self.scene_proj(jnp.asarray(scene_tokens, jnp.float32)))
        logits = jnp.einsum("bqd,bnd->bqn", l_hat, v_hat) / self.temperature
        attn = jax.nn.softmax(logits, axis=-1)
        return jnp.einsum("bqn,bnd->bqd", attn, v_hat + self.positions[...][None, :n])
