"""Noise Substitution Vector Quantization (Vali & Bäckström, 2022), with code usage
tracking and replacement of unused codes.

Training: q̃ = x + ‖x − q‖ · v/‖v‖, v ~ N(0, I), q the nearest code. The noise stands in
for the quantisation error with its exact magnitude, so gradients reach the encoder
output x directly and the codebook through ‖x − q‖: no straight-through estimator and
no commitment loss. Inference: the hard nearest code q.

Usage: every training call adds each code's assignment count to a window (a
`CodeUsage` variable, not a Param). `replace_unused` replaces the codes whose share of
the window's assignments is below `replace_threshold` × 1/K (a fair share) by used
codes (drawn in proportion to their use) plus small Gaussian noise, the NSVQ paper's
rule, then starts a new window. Call it every `usage_window` steps (a train hook).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx


class CodeUsage(nnx.Variable):
    """Assignments per code since the last replacement (non-Param: not optimised)."""


@dataclasses.dataclass
class NSVQOutput:
    quantized: jax.Array  # [..., D]: the noise-substituted vector (training) or q
    indices: jax.Array  # [...] nearest code
    hard: jax.Array  # [..., D] the nearest code q
    distance: jax.Array  # [...] ‖x − q‖
    metrics: dict


jax.tree_util.register_dataclass(NSVQOutput, data_fields=["quantized", "indices", "hard",
                                                           "distance", "metrics"],
                                 meta_fields=[])


class NSVQ(nnx.Module):
    def __init__(self, num_codes: int, dim: int, *, rngs: nnx.Rngs, usage_window: int = 100,
                 replace_threshold: float = 0.01, init_scale: float = 1.0,
                 replace_noise: float = 0.01):
        if num_codes < 2:
            raise ValueError(f"NSVQ needs at least 2 codes, got {num_codes}")
        self.num_codes, self.dim = int(num_codes), int(dim)
        self.usage_window = int(usage_window)
        self.replace_threshold = float(replace_threshold)
        self.replace_noise = float(replace_noise)
        self.codes = nnx.Param(jax.random.uniform(
            rngs.params(), (num_codes, dim), jnp.float32, -init_scale, init_scale)
            / jnp.sqrt(dim))
        self.usage = CodeUsage(jnp.zeros((num_codes,), jnp.float32))

    def nearest(self, x):
        """(q [..., D], indices [...]): the hard nearest code."""
        codes = self.codes[...]
        flat = x.reshape(-1, self.dim).astype(jnp.float32)
        d2 = (jnp.sum(flat ** 2, -1, keepdims=True) - 2 * flat @ codes.T
              + jnp.sum(codes ** 2, -1)[None])
        idx = jnp.argmin(d2, -1)
        return codes[idx].reshape(x.shape), idx.reshape(x.shape[:-1])

    def __call__(self, x, *, rng=None, train: bool = False) -> NSVQOutput:
        x = jnp.asarray(x, jnp.float32)
        hard, idx = self.nearest(x)
        distance = jnp.linalg.norm(x - hard, axis=-1)
        if train:
            if rng is None:
                raise ValueError("NSVQ in training needs `rng` for the substituted noise")
            v = jax.random.normal(rng, x.shape, jnp.float32)
            direction = v / jnp.maximum(jnp.linalg.norm(v, axis=-1, keepdims=True), 1e-12)
            quantized = x + distance[..., None] * direction
            counts = jnp.sum(jax.nn.one_hot(idx.reshape(-1), self.num_codes), 0)
            self.usage[...] = self.usage[...] + jax.lax.stop_gradient(counts)
        else:
            quantized = hard
        probs = jnp.mean(jax.nn.one_hot(idx.reshape(-1), self.num_codes), 0)
        perplexity = jnp.exp(-jnp.sum(probs * jnp.log(probs + 1e-10)))
        metrics = {"perplexity": perplexity,
                   "codes_used_fraction": jnp.mean((probs > 0).astype(jnp.float32)),
                   "quantization_distance": jnp.mean(distance)}
        return NSVQOutput(quantized, idx, hard, distance, metrics)

    def replace_unused(self, rng) -> dict:
        """Replace the codes under `replace_threshold` of a fair share of this window by
        noisy copies of used ones; start a new window. Returns metrics."""
        usage = self.usage[...]
        total = jnp.sum(usage)
        share = usage / jnp.maximum(total, 1.0)
        unused = share < self.replace_threshold / self.num_codes
        unused = unused & (total > 0)  # an empty window says nothing
        k_pick, k_noise = jax.random.split(rng)
        p = jnp.where(unused, 0.0, share)
        p = jnp.where(jnp.sum(p) > 0, p / jnp.maximum(jnp.sum(p), 1e-12),
                      jnp.full_like(p, 1.0 / self.num_codes))
        donors = jax.random.choice(k_pick, self.num_codes, (self.num_codes,), p=p)
        codes = self.codes[...]
        noise = self.replace_noise * jax.random.normal(k_noise, codes.shape)
        self.codes[...] = jnp.where(unused[:, None], codes[donors] + noise, codes)
        self.usage[...] = jnp.zeros_like(usage)
        return {"replaced": jnp.sum(unused).astype(jnp.float32),
                "window_perplexity": jnp.exp(-jnp.sum(share * jnp.log(share + 1e-10))),
                "window_codes_used": jnp.sum(usage > 0).astype(jnp.float32)}
