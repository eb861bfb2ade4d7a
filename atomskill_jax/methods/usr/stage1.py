"""USR Stage I: the cross-modal VQ-VAE with one codebook shared by two pathways.

  visuo-linguistic  E_task(o_t, l), E_task(o_{t+H}, l) -> E_trans -> x_vl
  action            E_act(a[t:t+H]) -> x_act
  both              NSVQ (one codebook) -> z;  D_act(z, f_vl_t) -> â[t:t+H]

E_task fuses each frame's scene tokens with the instruction by temperature-scaled
cross-attention (eq. 2, models/task_fusion.py). The loss of one pathway is the masked
reconstruction error of its chunk (eq. 4 sums both; model.py alternates them).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from atomskill_jax.methods.usr.scene import SceneEncoder
from atomskill_jax.models.layers import TransformerLayer, dense, layer_norm, sinusoidal_embedding


def _token(rngs: nnx.Rngs, n: int, dim: int) -> nnx.Param:
    return nnx.Param(jax.random.normal(rngs.params(), (n, dim)) * 0.02)


def _stack(dim, heads, mlp, n, *, rngs, dropout, cross=False):
    return nnx.List([TransformerLayer(dim, heads, mlp, rngs=rngs, dropout_rate=dropout,
                                      cross_attention=cross) for _ in range(int(n))])


class TaskEncoder(nnx.Module):
    """E_task: scene tokens fused with the instruction -> f_vl [B, Q, dim]."""

    def __init__(self, m, *, rngs: nnx.Rngs, clip_hidden: int = 0, clip_patches: int = 0):
        from atomskill_jax.models.task_fusion import TaskAwareFusion

        self.scene = SceneEncoder(m, rngs=rngs, clip_hidden=clip_hidden, clip_patches=clip_patches)
        if self.scene.num_tokens > int(m.max_scene_tokens):
            raise ValueError(f"{self.scene.num_tokens} scene tokens exceed model.max_scene_tokens="
                             f"{m.max_scene_tokens}")
        self.fusion = TaskAwareFusion(int(m.language_dim), self.scene.out_features, int(m.dim),
                                      num_queries=int(m.fusion_queries),
                                      max_scene_tokens=int(m.max_scene_tokens), rngs=rngs,
                                      init_temperature=float(m.init_temperature))

    def __call__(self, observation, language, *, clip=None):
        return self.fusion(jnp.asarray(language, jnp.float32), self.scene(observation, clip=clip))


class TransitionEncoder(nnx.Module):
    """E_trans: a transformer over [latent token; f_vl_t + e_0; f_vl_{t+H} + e_1] -> x_vl."""

    def __init__(self, m, *, rngs: nnx.Rngs):
        d = int(m.dim)
        self.latent = _token(rngs, 1, d)
        self.frame = _token(rngs, 2, d)
        self.layers = _stack(d, int(m.num_heads), int(m.mlp_dim), m.trans_layers, rngs=rngs,
                             dropout=float(m.dropout))
        self.norm = layer_norm(d, rngs=rngs)
        self.out = dense(d, d, rngs=rngs)

    def __call__(self, f_now, f_future, *, train=False, rngs=None):
        b = f_now.shape[0]
        frame = self.frame.get_value()
        x = jnp.concatenate([jnp.broadcast_to(self.latent.get_value()[None], (b, 1, f_now.shape[-1])),
                             f_now + frame[0], f_future + frame[1]], axis=1)
        for layer in self.layers:
            x = layer(x, train=train, rngs=rngs)
        return self.out(self.norm(x[:, 0]))


class ActionEncoder(nnx.Module):
    """E_act: a transformer over the embedded chunk a[t:t+H] (+ time features) -> x_act.
    Steps past the episode end hold the last action (as the data pads them): no mask."""

    def __init__(self, m, *, rngs: nnx.Rngs):
        d = int(m.dim)
        self.dim = d
        self.embed = dense(int(m.action_dim), d, rngs=rngs, shard=None)
        self.latent = _token(rngs, 1, d)
        self.layers = _stack(d, int(m.num_heads), int(m.mlp_dim), m.act_layers, rngs=rngs,
                             dropout=float(m.dropout))
        self.norm = layer_norm(d, rngs=rngs)
        self.out = dense(d, d, rngs=rngs)

    def __call__(self, chunk, *, train=False, rngs=None):
        b, h, _ = chunk.shape
        x = self.embed(jnp.asarray(chunk, jnp.float32)) + sinusoidal_embedding(jnp.arange(h), self.dim)[None]
        x = jnp.concatenate([jnp.broadcast_to(self.latent.get_value()[None], (b, 1, x.shape[-1])), x], 1)
        for layer in self.layers:
            x = layer(x, train=train, rngs=rngs)
        return self.out(self.norm(x[:, 0]))


class ActionDecoder(nnx.Module):
    """D_act(z, f_vl_t): H learned queries cross-attending to [z; f_vl_t] -> chunk [B, H, A]."""

    def __init__(self, m, *, rngs: nnx.Rngs):
        d = int(m.dim)
        self.queries = _token(rngs, int(m.horizon), d)
        self.code_in = dense(d, d, rngs=rngs)
        self.layers = _stack(d, int(m.num_heads), int(m.mlp_dim), m.decoder_layers, rngs=rngs,
                             dropout=float(m.dropout), cross=True)
        self.norm = layer_norm(d, rngs=rngs)
        self.out = dense(d, int(m.action_dim), rngs=rngs, shard=None)

    def __call__(self, z, f_now, *, train=False, rngs=None):
        memory = jnp.concatenate([self.code_in(z)[:, None], f_now], axis=1)
        q = self.queries.get_value()
        x = jnp.broadcast_to(q[None], (z.shape[0], *q.shape))
        for layer in self.layers:
            x = layer(x, memory, train=train, rngs=rngs)
        return self.out(self.norm(x)).astype(jnp.float32)


def reconstruction(pred, target, mask, kind: str) -> jax.Array:
    """Mean per-element error over valid chunk steps (mask [B, H]) and action dims."""
    err = pred - jnp.asarray(target, jnp.float32)
    err = jnp.abs(err) if kind == "l1" else jnp.square(err)
    valid = jnp.asarray(mask, jnp.float32)[..., None]
    return jnp.sum(err * valid) / jnp.maximum(jnp.sum(valid) * pred.shape[-1], 1.0)


class SkillModel(nnx.Module):
    """Stage I. Parameters under `stage1/`: task (E_task), trans, act, codebook, decoder."""

    def __init__(self, m, *, rngs: nnx.Rngs, clip_hidden: int = 0, clip_patches: int = 0):
        from atomskill_jax.models.nsvq import NSVQ

        if str(m.recon_loss) not in ("l1", "mse"):
            raise ValueError(f"model.recon_loss must be 'l1' or 'mse', got {m.recon_loss!r}")
        self.recon_kind = str(m.recon_loss)
        self.task = TaskEncoder(m, rngs=rngs, clip_hidden=clip_hidden, clip_patches=clip_patches)
        self.trans = TransitionEncoder(m, rngs=rngs)
        self.act = ActionEncoder(m, rngs=rngs)
        self.codebook = NSVQ(int(m.num_codes), int(m.dim), rngs=rngs,
                             usage_window=int(m.usage_window),
                             replace_threshold=float(m.replace_threshold))
        self.decoder = ActionDecoder(m, rngs=rngs)

    def vl_latent(self, batch, *, clip=None, train=False, rngs=None):
        """(x_vl [B, dim], f_vl_t [B, Q, dim]) from the current and the future frame."""
        lang = batch["language_embedding"]
        f_now = self.task(batch["observation"], lang, clip=clip)
        f_future = self.task(batch["observation_future"], lang, clip=clip)
        return self.trans(f_now, f_future, train=train, rngs=rngs), f_now

    def code(self, batch, *, clip=None):
        """The frozen encoder's code with the future observation: (z [B, dim], index [B]),
        the hard nearest code (what Stage II distils)."""
        x, _ = self.vl_latent(batch, clip=clip)
        z, index = self.codebook.nearest(x)
        return jax.lax.stop_gradient(z), jax.lax.stop_gradient(index)

    def pathway_loss(self, pathway: str, batch, rng, *, clip=None, train=False):
        """(reconstruction loss, codebook metrics) of one pathway ('vl' or 'act').

        'act' reads f_vl_t under stop_gradient: its step trains E_act, the codebook and
        D_act only, never E_task (see model.py)."""
        k_drop, k_vq = jax.random.split(rng)
        rngs = nnx.Rngs(dropout=k_drop)
        if pathway == "vl":
            x, f_now = self.vl_latent(batch, clip=clip, train=train, rngs=rngs)
        else:
            f_now = jax.lax.stop_gradient(self.task(batch["observation"], batch["language_embedding"],
                                                    clip=clip))
            x = self.act(batch["action_chunk"], train=train, rngs=rngs)
        q = self.codebook(x, rng=k_vq, train=train)
        pred = self.decoder(q.quantized, f_now, train=train, rngs=rngs)
        loss = reconstruction(pred, batch["action_chunk"], batch["action_chunk_mask"],
                              self.recon_kind)
        return loss, dict(q.metrics)
