"""A BAKU-style isotropic Gaussian head over a whole action chunk: an MLP gives the mean
[B, H, A]; one standard deviation for every element (fixed when `std` is given, else a
learned scalar log σ). Trained by the Gaussian negative log-likelihood over valid chunk
steps; the policy acts with the mean.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from atomskill_jax.models.layers import MLPStack

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


class GaussianChunkHead(nnx.Module):
    def __init__(self, in_dim: int, horizon: int, action_dim: int, *, hidden: tuple = (256, 256),
                 rngs: nnx.Rngs, std: float | None = None):
        self.horizon, self.action_dim = int(horizon), int(action_dim)
        self.net = MLPStack(in_dim, tuple(hidden), self.horizon * self.action_dim, rngs=rngs,
                            out_shard=None)
        if std is not None and std <= 0:
            raise ValueError(f"std must be positive (or None: learned), got {std}")
        self.fixed_log_std = None if std is None else float(math.log(std))
        self.log_std = None if std is not None else nnx.Param(jnp.zeros((), jnp.float32))

    def __call__(self, x):
        mean = self.net(x).astype(jnp.float32).reshape(x.shape[0], self.horizon,
                                                       self.action_dim)
        if self.log_std is None:
            log_std = jnp.asarray(self.fixed_log_std, jnp.float32)
        else:
            log_std = jnp.clip(self.log_std[...], LOG_STD_MIN, LOG_STD_MAX)
        return mean, log_std


def gaussian_nll(mean, log_std, target, mask) -> tuple[jax.Array, dict]:
    """Mean NLL per valid element of N(target; mean, σ²I); mask [B, H] marks valid steps."""
    mean, target = mean.astype(jnp.float32), target.astype(jnp.float32)
    log_std = jnp.broadcast_to(jnp.asarray(log_std, jnp.float32), mean.shape)
    nll = (0.5 * jnp.square((target - mean) / jnp.exp(log_std)) + log_std
           + 0.5 * math.log(2 * math.pi))
    valid = jnp.asarray(mask, jnp.float32)[..., None]
    count = jnp.maximum(jnp.sum(valid) * mean.shape[-1], 1.0)
    loss = jnp.sum(nll * valid) / count
    l1 = jnp.sum(jnp.abs(target - mean) * valid) / count
    return loss, {"nll": loss, "action_l1": l1, "log_std": jnp.mean(log_std)}
