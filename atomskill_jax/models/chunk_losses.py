"""Losses on action chunks shared by methods (L1 over valid chunk steps, keypose L1)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def action_l1(pred: jax.Array, target: jax.Array, mask: jax.Array) -> tuple[jax.Array, dict]:
    """Mean |pred - target| over valid steps (mask [B, H] True) and action dimensions."""
    valid = mask.astype(jnp.float32)[..., None]
    err = jnp.abs(pred.astype(jnp.float32) - target.astype(jnp.float32)) * valid
    loss = jnp.sum(err) / jnp.maximum(jnp.sum(valid) * pred.shape[-1], 1.0)
    return loss, {"action_l1": loss, "valid_step_fraction": jnp.mean(valid)}


def keypose_l1(pred: jax.Array, target: jax.Array) -> tuple[jax.Array, dict]:
    loss = jnp.mean(jnp.abs(pred.astype(jnp.float32) - target.astype(jnp.float32)))
    return loss, {"keypose_l1": loss}
