"""Vector quantiser for skill tokens (AtomSkill sec. 3.2, K=32 codes).

z_q = nearest code by L2 (float32 distances); the decoder sees z_e + sg(z_q - z_e), so
its gradient reaches the encoder unchanged (straight-through). Loss (VQ-VAE):
    L_VQ = ||sg(z_e) - z_q||^2 + λ ||z_e - sg(z_q)||^2      (means over elements)

Codebook usage is explicit state, a `CodebookState` Variable (not a Param, so the
optimiser never touches it): an EMA of each code's share of assignments, plus a ring
buffer of recent encoder outputs. `reinit_dead_codes` (pure) replaces codes whose
usage EMA fell below `dead_usage_fraction / K` by random recent encoder outputs; the
trainer calls `VectorQuantizer.reinit_dead_codes(key)` every N steps. (Optimiser
moments of a replaced code are left as they are: Adam's normalised step is bounded.)
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from atomskill_jax.models.layers import FSDP, sharded_param


class CodebookState(nnx.Variable):
    """Non-trainable codebook bookkeeping (usage EMA, recent encodings, write count)."""


@dataclasses.dataclass
class Quantized:
    straight_through: jax.Array  # [..., d] value z_q, gradient of z_e
    codes: jax.Array  # [..., d] z_q (no gradient path to the encoder)
    indices: jax.Array  # [...] int32
    loss: jax.Array  # scalar L_VQ
    metrics: dict


def nearest_codes(z: jax.Array, codebook: jax.Array) -> jax.Array:
    """Index of the L2-nearest code for each vector z [..., d] (float32)."""
    z = z.astype(jnp.float32)
    codebook = codebook.astype(jnp.float32)
    dist = (jnp.sum(z * z, -1, keepdims=True) - 2.0 * z @ codebook.T
            + jnp.sum(codebook * codebook, -1))
    return jnp.argmin(dist, axis=-1).astype(jnp.int32)


def vq_loss(z_e: jax.Array, z_q: jax.Array, commitment: float) -> tuple[jax.Array, dict]:
    codebook_term = jnp.mean((jax.lax.stop_gradient(z_e) - z_q) ** 2)
    commit_term = jnp.mean((z_e - jax.lax.stop_gradient(z_q)) ** 2)
    loss = codebook_term + commitment * commit_term
    return loss, {"vq_codebook": codebook_term, "vq_commitment": commit_term}


def codebook_metrics(indices: jax.Array, num_codes: int) -> dict:
    """Perplexity exp(H(p)) of the batch's code frequencies, codes used and unused."""
    counts = jnp.bincount(indices.reshape(-1), length=num_codes).astype(jnp.float32)
    probs = counts / jnp.maximum(counts.sum(), 1.0)
    entropy = -jnp.sum(jnp.where(probs > 0, probs * jnp.log(jnp.where(probs > 0, probs, 1.0)), 0.0))
    used = jnp.sum(counts > 0)
    return {"perplexity": jnp.exp(entropy), "codes_used": used.astype(jnp.float32),
            "batch_dead_codes": (num_codes - used).astype(jnp.float32),
            "codebook_usage": used.astype(jnp.float32) / num_codes}


def dead_code_mask(usage: jax.Array, dead_usage_fraction: float) -> jax.Array:
    return usage < dead_usage_fraction / usage.shape[0]


def reinit_dead_codes(codebook, usage, recent, num_recent, key, *, dead_usage_fraction: float,
                      noise: float = 1e-3):
    """Pure: dead codes <- random rows of the recent-encodings buffer (plus small noise).

    Returns (codebook, usage, number replaced). With an empty buffer nothing changes.
    Replaced codes restart at the uniform share so they get time to attract vectors.
    """
    num_codes, dim = codebook.shape
    valid = jnp.minimum(num_recent, recent.shape[0])
    dead = dead_code_mask(usage, dead_usage_fraction) & (valid > 0)
    pick_key, noise_key = jax.random.split(key)
    rows = jax.random.randint(pick_key, (num_codes,), 0, jnp.maximum(valid, 1))
    candidates = recent[rows] + noise * jax.random.normal(noise_key, (num_codes, dim))
    new_codebook = jnp.where(dead[:, None], candidates.astype(codebook.dtype), codebook)
    new_usage = jnp.where(dead, 1.0 / num_codes, usage)
    return new_codebook, new_usage, jnp.sum(dead)


class VectorQuantizer(nnx.Module):
    def __init__(self, config, *, rngs: nnx.Rngs):
        cfg = config.vq
        d = config.d_model
        self.num_codes = int(cfg.codebook_size)
        self.commitment = float(cfg.commitment)
        self.usage_decay = float(cfg.usage_decay)
        self.dead_usage_fraction = float(cfg.dead_usage_fraction)
        # Unit-variance codes: z_e leaves a LayerNorm + linear, so it has about that scale.
        self.codebook = sharded_param(jax.random.normal(rngs.params(), (self.num_codes, d)),
                                      (None, FSDP))
        self.usage = CodebookState(jnp.full((self.num_codes,), 1.0 / self.num_codes))
        # [size, d]: as large as a big kernel (1 MiB in the paper model), split like one.
        self.recent = CodebookState(jnp.zeros((int(cfg.recent_buffer_size), d), jnp.float32),
                                    out_sharding=(None, FSDP), eager_sharding=False)
        self.num_recent = CodebookState(jnp.zeros((), jnp.int32))  # filled rows, <= size
        self.write_position = CodebookState(jnp.zeros((), jnp.int32))

    def __call__(self, z_e: jax.Array, *, update_state: bool = False) -> Quantized:
        """z_e [..., d] -> Quantized. `update_state` (training) updates usage and buffer."""
        codebook = self.codebook[...].astype(jnp.float32)
        z_e = z_e.astype(jnp.float32)
        indices = nearest_codes(z_e, codebook)
        z_q = codebook[indices]
        loss, metrics = vq_loss(z_e, z_q, self.commitment)
        metrics.update(codebook_metrics(indices, self.num_codes))
        if update_state:
            self._update_state(jax.lax.stop_gradient(z_e), indices)
        metrics["dead_codes"] = jnp.sum(
            dead_code_mask(self.usage[...], self.dead_usage_fraction)).astype(jnp.float32)
        straight_through = z_e + jax.lax.stop_gradient(z_q - z_e)
        return Quantized(straight_through, z_q, indices, loss, metrics)

    def quantize(self, z: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Nearest code vectors and indices, no state change (used after diffusion)."""
        codebook = self.codebook[...].astype(jnp.float32)
        indices = nearest_codes(z, codebook)
        return codebook[indices], indices

    def _update_state(self, z_e, indices):
        counts = jnp.bincount(indices.reshape(-1), length=self.num_codes).astype(jnp.float32)
        share = counts / jnp.maximum(counts.sum(), 1.0)
        self.usage[...] = self.usage_decay * self.usage[...] + (1 - self.usage_decay) * share
        flat = z_e.reshape(-1, z_e.shape[-1])
        size = self.recent.shape[0]
        flat = flat[-size:]  # a batch larger than the buffer keeps only its last rows
        start = self.write_position[...]
        positions = (start + jnp.arange(flat.shape[0])) % size
        self.recent[...] = self.recent[...].at[positions].set(flat)
        self.write_position[...] = (start + flat.shape[0]) % size
        self.num_recent[...] = jnp.minimum(self.num_recent[...] + flat.shape[0], size)

    def reinit_dead_codes(self, key) -> dict:
        """In place: replace dead codes from recent encodings; returns metrics."""
        codebook, usage, replaced = reinit_dead_codes(
            self.codebook[...], self.usage[...], self.recent[...], self.num_recent[...], key,
            dead_usage_fraction=self.dead_usage_fraction)
        self.codebook[...] = codebook
        self.usage[...] = usage
        return {"codes_reinitialised": replaced.astype(jnp.float32)}
