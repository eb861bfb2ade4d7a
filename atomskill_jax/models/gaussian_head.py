"""BAKU-style isotropic Gaussian head over a whole action chunk (USR Stage II policy).

An MLP (layers.MLPStack) maps the policy's readout [B, D] to the chunk mean [B, H, A];
one standard deviation serves every element: fixed when `std` is given (no parameter
at all, as BAKU's deterministic head with a fixed-σ distribution), else one learned
scalar log σ (init log `init_std`, clipped to [LOG_STD_MIN, LOG_STD_MAX] so the NLL can
not collapse σ onto a perfectly fitted batch). Trained by `gaussian_nll`; the policy acts
with the mean.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from atomskill_jax.models.layers import MLPStack

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0
HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


class GaussianChunkHead(nnx.Module):
    def __init__(self, in_dim: int, horizon: int, action_dim: int, *, hidden: tuple = (256, 256),
                 rngs: nnx.Rngs, std: float | None = None, init_std: float = 1.0):
        if std is not None and not std > 0:
            raise ValueError(f"GaussianChunkHead: std must be > 0 (or None: learned), got {std}")
        if not init_std > 0:
            raise ValueError(f"GaussianChunkHead: init_std must be > 0, got {init_std}")
        self.horizon, self.action_dim = int(horizon), int(action_dim)
        self.net = MLPStack(int(in_dim), tuple(int(h) for h in hidden),
                            self.horizon * self.action_dim, rngs=rngs, out_shard=None)
        self.fixed_log_std = None if std is None else float(math.log(std))
        self.log_std = (nnx.Param(jnp.asarray(math.log(init_std), jnp.float32))
                        if std is None else None)

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """x [..., D] -> (mean [..., H, A] float32, log σ [] float32)."""
        mean = self.net(x).astype(jnp.float32)
        mean = mean.reshape(*x.shape[:-1], self.horizon, self.action_dim)
        if self.log_std is None:
            log_std = jnp.asarray(self.fixed_log_std, jnp.float32)
        else:
            log_std = jnp.clip(self.log_std[...].astype(jnp.float32), LOG_STD_MIN, LOG_STD_MAX)
        return mean, log_std


def gaussian_nll(mean, log_std, target, mask) -> tuple[jax.Array, dict]:
    """-log N(target; mean, σ²), averaged over valid chunk steps and action dims.

    mean, target [B, H, A]; log_std [] or [A] (anything broadcasting to mean); mask [B, H]
    (bool or 0/1) marks the steps inside the episode. Metrics: `nll` (= the loss),
    `action_l1` / `action_mse` of the mean over the same elements, `std` (mean σ)."""
    mean = jnp.asarray(mean, jnp.float32)
    target = jnp.asarray(target, jnp.float32)
    if mean.shape != target.shape:
        raise ValueError(f"gaussian_nll: mean {mean.shape} and target {target.shape} differ")
    valid = jnp.asarray(mask, jnp.float32)
    if valid.shape != mean.shape[:-1]:
        raise ValueError(f"gaussian_nll: mask {valid.shape} must be the chunk's {mean.shape[:-1]}")
    log_std = jnp.broadcast_to(jnp.asarray(log_std, jnp.float32), mean.shape)
    err = target - mean
    nll = 0.5 * jnp.square(err * jnp.exp(-log_std)) + log_std + HALF_LOG_2PI
    valid = valid[..., None]
    count = jnp.maximum(jnp.sum(valid) * mean.shape[-1], 1.0)
    loss = jnp.sum(nll * valid) / count
    return loss, {"nll": loss,
                  "action_l1": jnp.sum(jnp.abs(err) * valid) / count,
                  "action_mse": jnp.sum(jnp.square(err) * valid) / count,
                  "std": jnp.mean(jnp.exp(log_std))}
