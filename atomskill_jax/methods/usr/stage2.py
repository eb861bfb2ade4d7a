"""USR Stage II: a skill prior p_ψ and a Gaussian policy π_θ (BAKU-style head) over the
observation history, trained on the frozen Stage I encoder.

  history  each of the L frames O[t-L+1..t] tokenised by a scene encoder of its own
           (trainable; CLIP stays frozen), projected to stage2.dim, plus a frame and a
           token position; the instruction is one more token
  prior    [cls; instruction; history] -> logits over the K codes
  policy   [readout; condition; history] -> readout -> GaussianChunkHead -> (mean, log σ)
           of the chunk; the condition is sg(z) ("skill") or the instruction
           ("instruction": USR (No Skill), which has no prior)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from atomskill_jax.methods.usr.scene import SceneEncoder
from atomskill_jax.methods.usr.stage1 import _stack, _token
from atomskill_jax.models.layers import dense, layer_norm, sinusoidal_embedding


class HistoryEncoder(nnx.Module):
    def __init__(self, m, *, rngs: nnx.Rngs, clip_hidden: int = 0, clip_patches: int = 0):
        s = m.stage2
        d = int(s.dim)
        self.history = int(m.history)
        self.scene = SceneEncoder(m, rngs=rngs, clip_hidden=clip_hidden, clip_patches=clip_patches)
        self.proj = dense(self.scene.out_features, d, rngs=rngs)
        self.token_pos = _token(rngs, self.scene.num_tokens, d)
        self.language = dense(int(m.language_dim), d, rngs=rngs)
        self.dim = d

    def __call__(self, history, language, *, clip=None):
        """history: {key: [B, L, ...]} -> (tokens [B, L*N, d], instruction token [B, 1, d])."""
        # b stays a (possibly symbolic) dimension: exported policies batch symbolically.
        b, n_frames = next(iter(history.values())).shape[:2]
        n_frames = int(n_frames)
        if n_frames != self.history:
            raise ValueError(f"observation history has {n_frames} frames, model.history="
                             f"{self.history}")
        flat = {k: v.reshape(b * n_frames, *v.shape[2:]) for k, v in history.items()}
        tokens = self.proj(self.scene(flat, clip=clip))  # [B*L, N, d]
        n = tokens.shape[1]
        frame_pos = sinusoidal_embedding(jnp.arange(n_frames), self.dim)  # [L, d]
        tokens = (tokens.reshape(b, n_frames, n, self.dim) + frame_pos[None, :, None]
                  + self.token_pos.get_value()[None, None])
        lang = self.language(jnp.asarray(language, jnp.float32))[:, None]
        return tokens.reshape(b, n_frames * n, self.dim), lang


class Trunk(nnx.Module):
    """A small transformer whose first token reads out the sequence."""

    def __init__(self, m, layers: int, *, rngs: nnx.Rngs):
        s = m.stage2
        d = int(s.dim)
        self.readout = _token(rngs, 1, d)
        self.layers = _stack(d, int(s.num_heads), int(s.mlp_dim), layers, rngs=rngs,
                             dropout=float(m.dropout))
        self.norm = layer_norm(d, rngs=rngs)

    def __call__(self, tokens, *, train=False, rngs=None):
        b, _, d = tokens.shape
        x = jnp.concatenate([jnp.broadcast_to(self.readout.get_value()[None], (b, 1, d)), tokens], 1)
        for layer in self.layers:
            x = layer(x, train=train, rngs=rngs)
        return self.norm(x[:, 0])


class SkillPrior(nnx.Module):
    def __init__(self, m, *, rngs: nnx.Rngs):
        self.trunk = Trunk(m, int(m.stage2.prior_layers), rngs=rngs)
        self.head = dense(int(m.stage2.dim), int(m.num_codes), rngs=rngs, shard=None)

    def __call__(self, history_tokens, language_token, *, train=False, rngs=None):
        x = self.trunk(jnp.concatenate([language_token, history_tokens], 1), train=train, rngs=rngs)
        return self.head(x).astype(jnp.float32)


class GaussianPolicy(nnx.Module):
    def __init__(self, m, *, rngs: nnx.Rngs):
        from atomskill_jax.models.gaussian_head import GaussianChunkHead

        s = m.stage2
        self.skill = str(m.policy_condition) == "skill"
        # The condition token: sg(z) (code width model.dim) or the instruction.
        self.condition = dense(int(m.dim) if self.skill else int(m.language_dim), int(s.dim),
                               rngs=rngs)
        self.trunk = Trunk(m, int(s.policy_layers), rngs=rngs)
        self.head = GaussianChunkHead(int(s.dim), int(m.horizon), int(m.action_dim),
                                      hidden=tuple(s.head_hidden), rngs=rngs,
                                      std=None if s.std is None else float(s.std))

    def __call__(self, history_tokens, condition, *, train=False, rngs=None):
        cond = self.condition(jax.lax.stop_gradient(jnp.asarray(condition, jnp.float32)))[:, None]
        x = self.trunk(jnp.concatenate([cond, history_tokens], 1), train=train, rngs=rngs)
        mean, log_std = self.head(x)
        return mean.astype(jnp.float32), log_std


class Adapter(nnx.Module):
    """Stage II. Parameters under `stage2/`: history, prior (skill variant only), policy."""

    def __init__(self, m, *, rngs: nnx.Rngs, clip_hidden: int = 0, clip_patches: int = 0):
        self.skill = str(m.policy_condition) == "skill"
        self.history = HistoryEncoder(m, rngs=rngs, clip_hidden=clip_hidden,
                                      clip_patches=clip_patches)
        self.prior = SkillPrior(m, rngs=rngs) if self.skill else None
        self.policy = GaussianPolicy(m, rngs=rngs)
