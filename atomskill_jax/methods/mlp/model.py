"""A plain MLP behaviour-cloning baseline: the floor a skill model has to beat.

Normalised proprio, state and the instruction's sentence embedding (one vector per
task: as informative as a task one-hot) are concatenated and mapped by an MLP
straight to a whole action chunk [H, A]. With `model.cameras`, each camera's image
adds its flattened ResNet feature map to that vector (image_features.py). No skills,
no keypose: it exists so every method in a results table is trained on the same data,
normalised the same way and evaluated by the same chunk runtime
(`policies/chunk_policy.py`, which runs the ACT-like baseline's skill-less path
identically).

Config (`configs/mlp.py`): `model.mlp.hidden` (widths of the hidden layers),
`model.mlp.loss` ("l1" like ACT and AtomSkill, "mse" or "huber"), `model.dropout`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from atomskill_jax.methods.mlp.image_features import FlatImageFeatures
from atomskill_jax.models.chunk_losses import action_l1
from atomskill_jax.models.layers import MLPStack, compute_dtype

LOSSES = ("l1", "mse", "huber")


def chunk_loss(pred, target, mask, kind: str) -> tuple[jax.Array, dict]:
    """Mean per-element loss over valid chunk steps (mask [B, H]) and action dimensions,
    with the chunk L1 always reported so runs with different losses compare."""
    l1, _ = action_l1(pred, target, mask)
    if kind == "l1":
        return l1, {"action_loss": l1, "action_l1": l1}
    pred, target = pred.astype(jnp.float32), target.astype(jnp.float32)
    if kind == "mse":
        err = jnp.square(pred - target)
    elif kind == "huber":  # quadratic within one standard deviation of the normalised action
        err = optax.huber_loss(pred, target, delta=1.0)
    else:
        raise ValueError(f"model.mlp.loss must be one of {LOSSES}, got {kind!r}")
    valid = mask.astype(jnp.float32)[..., None]
    loss = jnp.sum(err * valid) / jnp.maximum(jnp.sum(valid) * pred.shape[-1], 1.0)
    return loss, {"action_loss": loss, "action_l1": l1}


class MLPPolicy(nnx.Module):
    def __init__(self, config, *, rngs: nnx.Rngs):
        if bool(config.decoder.get("skill_conditioning", False)):
            raise ValueError("MLPPolicy has no skill space: set model.decoder.skill_conditioning"
                             "=False (configs/mlp.py does)")
        if bool(config.decoder.get("predict_keypose", False)):
            raise ValueError("MLPPolicy predicts no keypose: set model.decoder.predict_keypose"
                             "=False (configs/mlp.py does)")
        m = config.mlp
        if str(m.loss) not in LOSSES:
            raise ValueError(f"model.mlp.loss must be one of {LOSSES}, got {m.loss!r}")
        self.dtype = compute_dtype(config.dtype)
        self.use_state = int(config.state_dim) > 0
        self.images = (FlatImageFeatures(config, rngs=rngs, dtype=self.dtype)
                       if tuple(config.cameras) else None)
        n_in = int(config.proprio_dim) + int(config.state_dim) + int(config.language_dim)
        n_in += self.images.out_features if self.images is not None else 0
        self.horizon, self.action_dim = int(config.horizon), int(config.action_dim)
        # The head onto H x A outputs stays replicated (a few hundred columns).
        self.net = MLPStack(n_in, tuple(m.hidden), self.horizon * self.action_dim, rngs=rngs,
                            dtype=self.dtype, dropout_rate=float(config.dropout), out_shard=None)
        self.loss_kind = str(m.loss)

    def _chunk(self, observation, language_embedding, *, train=False, rngs=None):
        parts = [jnp.asarray(observation["proprio"], self.dtype)]
        if self.use_state:
            parts.append(jnp.asarray(observation["state"], self.dtype))
        parts.append(jnp.asarray(language_embedding, self.dtype))
        if self.images is not None:
            parts.append(self.images(observation).astype(self.dtype))
        x = jnp.concatenate(parts, axis=-1)
        out = self.net(x, train=train, rngs=rngs).astype(jnp.float32)
        return out.reshape(x.shape[0], self.horizon, self.action_dim)

    def compute_loss(self, rng, batch, *, train: bool, stage: str = "skill"):
        if stage != "skill":
            raise ValueError(f"MLPPolicy trains in stage 'skill' only, got {stage!r}")
        chunk = self._chunk(batch["observation"], batch["language_embedding"], train=train,
                            rngs=nnx.Rngs(dropout=rng))
        loss, metrics = chunk_loss(chunk, batch["action_chunk"], batch["action_chunk_mask"],
                                   self.loss_kind)
        metrics["loss"] = loss
        return loss, metrics

    def predict_actions(self, observation, language_embedding, skill_tokens=None):
        """(action chunk [B, H, A], None): the policy runtime's call."""
        del skill_tokens
        return self._chunk(observation, language_embedding), None


def trainable_filter(stage: str):
    if stage != "skill":
        raise ValueError(f"MLPPolicy trains in stage 'skill' only, got {stage!r}")
    return nnx.Param


def fake_batch(config, batch_size: int, seed: int = 0) -> dict:
    """A numpy batch of the default trajectory transform's structure (the MLP reads
    observation, with its cameras' images, language_embedding, action_chunk and its
    mask)."""
    from atomskill_jax.data.fake_batches import default_example_batch

    return default_example_batch(
        batch_size, action_dim=int(config.action_dim), proprio_dim=int(config.proprio_dim),
        state_dim=int(config.state_dim), language_dim=int(config.language_dim),
        cameras=tuple(config.cameras), image_size=tuple(config.image_size),
        horizon=int(config.horizon), skill_length=int(config.get("skill_length", 2)),
        num_labels=int(config.get("num_skill_labels", 1)), seed=seed)
