"""Noise Substitution Vector Quantization (NSVQ; Vali & Bäckström 2022), USR's codebook.

Training replaces the quantisation error by noise of the same norm:
    x̃ = x + ||x − q|| · v / ||v||,   v ~ N(0, I) drawn per vector from an explicit key,
q the L2-nearest code. The decoder sees x̃; its gradient reaches x directly and both x
and the codebook through ||x − q|| (q is a gather from the codebook Param), so there is
no straight-through estimator and no commitment or codebook loss. Inference
(`train=False`) returns the hard nearest code q.

Codebook usage is explicit non-Param state (`CodeUsage`, never optimised): each
training call writes its per-code assignment counts into a ring of the last
`usage_window` calls. `replace_unused(key)` (the trainer's periodic hook) computes each
code's share of all assignments in that window and replaces every code whose share is
below `replace_threshold / K`, i.e. the threshold is a FRACTION OF THE FAIR SHARE 1/K
(0.01: fewer than 1% of what a uniformly used code would get). Following the NSVQ
paper's rule, a replaced code becomes a used code (drawn at random, distinct used codes
first) plus small Gaussian noise (`replace_noise` times the RMS of the used codes, so the
rule does not depend on the latent scale); then the window is emptied. (The paper's
reference code thresholds the mean count per batch instead; a share of the fair share
does not depend on batch size.) With an empty window (no training call since the last
reset) nothing is replaced. Optimiser moments of a replaced code are left as they are.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from atomskill_jax.models.layers import FSDP, sharded_param
from atomskill_jax.models.vector_quantizer import codebook_metrics, nearest_codes


class CodeUsage(nnx.Variable):
    """Non-trainable codebook usage bookkeeping (per-call counts ring, its position/fill)."""


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class NSVQOutput:
    quantized: jax.Array  # [..., D] x̃ in training, the hard code otherwise
    indices: jax.Array  # [...] int32, the nearest code
    hard: jax.Array  # [..., D] the nearest code q (gradient reaches the codebook only)
    commit_distance: jax.Array  # [...] ||x − q||
    metrics: dict


def safe_norm(x: jax.Array, axis: int = -1) -> jax.Array:
    """||x|| with gradient 0 (not NaN) at x = 0: a vector sitting on its code."""
    sq = jnp.sum(x * x, axis=axis)
    positive = sq > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def entropy_perplexity(counts: jax.Array) -> jax.Array:
    probs = counts / jnp.maximum(counts.sum(), 1.0)
    logp = jnp.log(jnp.where(probs > 0, probs, 1.0))
    return jnp.exp(-jnp.sum(probs * logp))


class NSVQ(nnx.Module):
    def __init__(self, num_codes: int, dim: int, *, rngs: nnx.Rngs, usage_window: int = 100,
                 replace_threshold: float = 0.01, init_scale: float = 1.0,
                 replace_noise: float = 0.01):
        if num_codes < 1 or dim < 1 or usage_window < 1:
            raise ValueError(f"NSVQ: num_codes={num_codes}, dim={dim}, usage_window={usage_window} "
                             "must all be >= 1")
        self.num_codes, self.dim = int(num_codes), int(dim)
        self.usage_window = int(usage_window)
        self.replace_threshold = float(replace_threshold)
        self.replace_noise = float(replace_noise)
        # N(0, init_scale²) codes: encoder outputs leave LayerNorm + Linear at about unit scale.
        self.codebook = sharded_param(
            init_scale * jax.random.normal(rngs.params(), (num_codes, dim)), (None, FSDP))
        self.window_counts = CodeUsage(jnp.zeros((self.usage_window, num_codes), jnp.float32))
        self.window_position = CodeUsage(jnp.zeros((), jnp.int32))  # next ring row to write
        self.window_calls = CodeUsage(jnp.zeros((), jnp.int32))  # filled rows, <= usage_window

    def nearest(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(hard nearest codes [..., D], indices [...]); no state change."""
        codebook = self.codebook[...].astype(jnp.float32)
        indices = nearest_codes(jax.lax.stop_gradient(x), jax.lax.stop_gradient(codebook))
        return codebook[indices], indices

    def __call__(self, x: jax.Array, *, rng=None, train: bool = False) -> NSVQOutput:
        if x.shape[-1] != self.dim:
            raise ValueError(f"NSVQ: input width {x.shape[-1]} != codebook dim {self.dim}")
        x = x.astype(jnp.float32)
        hard, indices = self.nearest(x)
        distance = safe_norm(x - hard)
        metrics = codebook_metrics(indices, self.num_codes)
        metrics["used_fraction"] = metrics.pop("codebook_usage")  # of the K codes, this batch
        metrics["commit_distance"] = jnp.mean(jax.lax.stop_gradient(distance))
        if train:
            if rng is None:
                raise ValueError("NSVQ(train=True) draws its noise from `rng`: pass a key")
            v = jax.random.normal(rng, x.shape, jnp.float32)
            quantized = x + (distance / safe_norm(v))[..., None] * v
            self._record(indices)
        else:
            quantized = hard
        metrics.update(self._window_metrics())
        return NSVQOutput(quantized, indices, hard, distance, metrics)

    def _record(self, indices):
        counts = jnp.bincount(indices.reshape(-1), length=self.num_codes).astype(jnp.float32)
        pos = self.window_position[...]
        self.window_counts[...] = self.window_counts[...].at[pos].set(counts)
        self.window_position[...] = (pos + 1) % self.usage_window
        self.window_calls[...] = jnp.minimum(self.window_calls[...] + 1, self.usage_window)

    def _window_share(self):
        counts = self.window_counts[...].sum(0)
        return counts, counts / jnp.maximum(counts.sum(), 1.0)

    def _unused_mask(self):
        _, share = self._window_share()
        has_data = self.window_calls[...] > 0
        return (share < self.replace_threshold / self.num_codes) & has_data

    def _window_metrics(self) -> dict:
        counts, _ = self._window_share()
        return {"window_perplexity": entropy_perplexity(counts),
                "window_used_fraction": jnp.mean((counts > 0).astype(jnp.float32)),
                "window_unused_codes": jnp.sum(self._unused_mask()).astype(jnp.float32),
                "window_calls": self.window_calls[...].astype(jnp.float32)}

    def replace_unused(self, rng) -> dict:
        """In place: codes under the usage threshold <- used codes + noise; empties the window.

        Returns metrics of the window it judged (before the reset) and `codes_replaced`."""
        metrics = self._window_metrics()
        unused = self._unused_mask()
        used = ~unused
        codebook = self.codebook[...]
        perm_key, noise_key = jax.random.split(rng)
        # Used codes in random order first; unused code number i takes used code i mod n_used,
        # so distinct used codes are copied while there are enough of them.
        order = jnp.argsort(jnp.where(used, jax.random.uniform(perm_key, (self.num_codes,)), 2.0))
        n_used = jnp.maximum(jnp.sum(used), 1)
        rank = jnp.cumsum(unused) - 1
        source = order[jnp.where(unused, rank, 0) % n_used]
        rms = jnp.sqrt(jnp.sum(jnp.where(used[:, None], codebook ** 2, 0.0))
                       / jnp.maximum(n_used * self.dim, 1))
        noise = self.replace_noise * rms * jax.random.normal(noise_key, codebook.shape)
        candidates = codebook[source] + noise.astype(codebook.dtype)
        self.codebook[...] = jnp.where(unused[:, None], candidates, codebook)
        self.window_counts[...] = jnp.zeros_like(self.window_counts[...])
        self.window_position[...] = jnp.zeros((), jnp.int32)
        self.window_calls[...] = jnp.zeros((), jnp.int32)
        metrics["codes_replaced"] = jnp.sum(unused).astype(jnp.float32)
        return metrics
