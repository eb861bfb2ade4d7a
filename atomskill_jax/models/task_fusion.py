"""USR's task-aware encoder fusion (paper eq. 2): the instruction attends over scene tokens,

    f_vl = softmax(f̂_l f̂_vᵀ / τ) (f̂_v + PE)

f̂_l = normalise(W_l l) and f̂_v = normalise(W_v v) are the projected language queries and
scene tokens, L2-normalised, so f̂_l f̂_vᵀ is a cosine in [-1, 1] and τ alone sets how
peaked the attention is. The values are the normalised scene tokens plus PE, a learned
positional embedding over scene-token positions (init N(0, 0.25/dim): norm about 0.5,
half that of a unit-norm token, so content dominates at init); positions only enter the
values, as in the equation. The output has `dim` features and no further projection.

τ is learnable, stored as log τ (init log 0.07, CLIP's init) and clipped to
[0.01, 1.0] (CLIP's bound of logit scale <= 100 below; above 1 cosine logits give an
almost uniform average). Outside the range the clip's gradient is zero, as in CLIP.

Language:
  [B, E]      one sentence embedding (MiniLM): projected once, plus a learned offset per
              query (init N(0, 1/dim), about the norm of the projection) -> num_queries
              different queries, so each frame fuses into num_queries tokens.
  [B, Nl, E]  text tokens (CLIP): the FIRST num_queries tokens are the queries (no offsets;
              they differ already). Nl < num_queries is an error.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from atomskill_jax.models.layers import FSDP, dense, sharded_param

MIN_TEMPERATURE, MAX_TEMPERATURE = 0.01, 1.0


def l2_normalise(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """x / ||x|| with a floor on the norm: a zero token (a constant state part normalised
    to 0, with zero bias) maps to 0 with finite gradients instead of NaN."""
    sq = jnp.sum(x * x, axis=-1, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(sq, eps * eps))


class TaskAwareFusion(nnx.Module):
    def __init__(self, lang_dim: int, scene_dim: int, dim: int, *, num_queries: int,
                 max_scene_tokens: int, rngs: nnx.Rngs, init_temperature: float = 0.07):
        if not MIN_TEMPERATURE <= init_temperature <= MAX_TEMPERATURE:
            raise ValueError(f"TaskAwareFusion: init_temperature={init_temperature} outside "
                             f"[{MIN_TEMPERATURE}, {MAX_TEMPERATURE}]")
        if num_queries < 1 or max_scene_tokens < 1:
            raise ValueError(f"TaskAwareFusion: num_queries={num_queries} and max_scene_tokens="
                             f"{max_scene_tokens} must be >= 1")
        self.lang_dim, self.scene_dim, self.dim = int(lang_dim), int(scene_dim), int(dim)
        self.num_queries, self.max_scene_tokens = int(num_queries), int(max_scene_tokens)
        self.lang_proj = dense(lang_dim, dim, rngs=rngs)
        self.scene_proj = dense(scene_dim, dim, rngs=rngs)
        self.query_offsets = sharded_param(
            jax.random.normal(rngs.params(), (num_queries, dim)) / math.sqrt(dim), (None, FSDP))
        self.pos_embedding = sharded_param(
            0.5 * jax.random.normal(rngs.params(), (max_scene_tokens, dim)) / math.sqrt(dim),
            (None, FSDP))
        self.log_temperature = nnx.Param(jnp.asarray(math.log(init_temperature), jnp.float32))

    @property
    def temperature(self) -> jax.Array:
        """τ (scalar), clipped to [MIN_TEMPERATURE, MAX_TEMPERATURE]."""
        log_t = jnp.clip(self.log_temperature[...], math.log(MIN_TEMPERATURE),
                         math.log(MAX_TEMPERATURE))
        return jnp.exp(log_t)

    def queries(self, language: jax.Array) -> jax.Array:
        """Projected (not yet normalised) language queries [B, num_queries, dim]."""
        language = jnp.asarray(language, jnp.float32)
        if language.shape[-1] != self.lang_dim:
            raise ValueError(f"TaskAwareFusion: language width {language.shape[-1]} != "
                             f"lang_dim {self.lang_dim}")
        if language.ndim == 2:
            return self.lang_proj(language)[:, None, :] + self.query_offsets[...][None]
        if language.ndim == 3:
            if language.shape[1] < self.num_queries:
                raise ValueError(f"TaskAwareFusion: {language.shape[1]} language tokens, "
                                 f"num_queries={self.num_queries} needs at least that many")
            return self.lang_proj(language[:, :self.num_queries])
        raise ValueError(f"TaskAwareFusion: language must be [B, E] or [B, Nl, E], "
                         f"got shape {language.shape}")

    def __call__(self, language: jax.Array, scene_tokens: jax.Array) -> jax.Array:
        """language [B, E] | [B, Nl, E], scene_tokens [B, N, scene_dim] -> [B, num_queries, dim]."""
        scene_tokens = jnp.asarray(scene_tokens, jnp.float32)
        if scene_tokens.ndim != 3 or scene_tokens.shape[-1] != self.scene_dim:
            raise ValueError(f"TaskAwareFusion: scene_tokens must be [B, N, {self.scene_dim}], "
                             f"got shape {scene_tokens.shape}")
        n = scene_tokens.shape[1]
        if n > self.max_scene_tokens:
            raise ValueError(f"TaskAwareFusion: {n} scene tokens exceed max_scene_tokens="
                             f"{self.max_scene_tokens}")
        l_hat = l2_normalise(self.queries(language))
        v_hat = l2_normalise(self.scene_proj(scene_tokens))
        logits = jnp.einsum("bqd,bnd->bqn", l_hat, v_hat) / self.temperature
        weights = jax.nn.softmax(logits, axis=-1)
        values = v_hat + self.pos_embedding[...][None, :n]
        return jnp.einsum("bqn,bnd->bqd", weights, values)
