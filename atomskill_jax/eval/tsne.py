"""Exact t-SNE (van der Maaten & Hinton, "Visualizing Data using t-SNE", JMLR 2008).

    y = tsne(x, perplexity=30.0, seed=0)          # x [N, D] -> y [N, 2]

Written here rather than taken from scikit-learn so that drawing the AtomSkill
paper's Figure 5 (t-SNE of skill embeddings coloured by skill label) adds no
dependency. "Exact" means O(N^2) memory and time, no Barnes-Hut tree: right for the
few hundred to ~2000 skill segments one plots (N=2000: a few seconds per 100
iterations on two CPU cores), wrong for 100k points.

Steps, as in the paper and its reference implementation:
1. Per point i, a Gaussian bandwidth beta_i = 1 / (2 sigma_i^2) found by binary search
   so the conditional distribution p_{j|i} has entropy log(perplexity) (nats); done in
   numpy float64, vectorised over all rows at once.
2. Symmetrised joint P = (p_{j|i} + p_{i|j}) / 2N.
3. Student-t (one degree of freedom) similarities Q in the 2-D map; gradient
   4 sum_j (p_ij - q_ij)(y_i - y_j) / (1 + |y_i - y_j|^2).
4. Early exaggeration (P times 12 for the first 250 iterations), momentum 0.5 then
   0.8, per-coordinate adaptive gains (Jacobs 1988: +0.2 when the gradient changes
   sign against the update, x0.8 otherwise, floor 0.01), the map re-centred every
   step. Learning rate "auto" = max(N / exaggeration / 4, 50) (Belkina et al. 2019,
   scikit-learn's default), which behaves for both small and large N.
The descent (step 3-4) runs as one jitted `lax.fori_loop` in float32; the result is
a deterministic function of (x, parameters, seed) on a given machine.
"""

from __future__ import annotations

import numpy as np


def _squared_distances(x: np.ndarray) -> np.ndarray:
    sq = np.sum(x * x, axis=1)
    d = sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)
    np.fill_diagonal(d, 0.0)
    return np.maximum(d, 0.0)


def effective_perplexity(perplexity: float, n: int) -> float:
    """The perplexity used for n points: at most (n - 1) / 3 (a point needs about
    3 x perplexity neighbours for a meaningful bandwidth), but for tiny n up to 2, and
    always below n - 1 (the entropy of a uniform row, the most a bandwidth can reach)."""
    if perplexity <= 1.0:
        raise ValueError(f"perplexity must be > 1, got {perplexity}")
    if n < 3:
        raise ValueError(f"perplexity calibration needs at least 3 points, got {n}")
    return float(min(perplexity, max((n - 1) / 3.0, min(2.0, n - 1.5))))


def conditional_affinities(x: np.ndarray, perplexity: float = 30.0, *, tol: float = 1e-5,
                           max_iter: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """(p_{j|i} [N, N] with rows summing to 1 and a zero diagonal, beta [N]).

    Binary search per row on beta = 1/(2 sigma^2) for entropy H_i = log(perplexity)
    (natural log): H(beta) decreases in beta, so beta doubles while H is too high and
    halves while too low until bracketed, then bisects. All rows advance together.
    """
    x = np.asarray(x, np.float64)
    n = x.shape[0]
    d = _squared_distances(x)
    # Shift each row by its nearest-neighbour distance: p_{j|i} is unchanged, exp
    # cannot underflow to all zeros for far-away points.
    off = ~np.eye(n, dtype=bool)
    d_min = np.where(off, d, np.inf).min(axis=1, keepdims=True)
    d = np.where(off, d - d_min, 0.0)
    target = np.log(perplexity)
    beta = np.ones(n)
    # Scale the start to the data, so the search begins near the answer.
    mean_d = np.where(off, d, 0.0).sum(axis=1) / max(n - 1, 1)
    beta = np.where(mean_d > 0, 1.0 / np.maximum(mean_d, 1e-300), 1.0)
    lo = np.zeros(n)
    hi = np.full(n, np.inf)

    def rows(beta):
        p = np.where(off, np.exp(-d * beta[:, None]), 0.0)
        s = p.sum(axis=1)
        s = np.maximum(s, 1e-300)
        h = np.log(s) + beta * (d * p).sum(axis=1) / s
        return p / s[:, None], h

    p, h = rows(beta)
    for _ in range(max_iter):
        diff = h - target
        if np.all(np.abs(diff) < tol):
            break
        too_flat = diff > 0  # entropy too high: narrower Gaussian, larger beta
        lo = np.where(too_flat, beta, lo)
        hi = np.where(too_flat, hi, beta)
        new = np.where(np.isinf(hi), beta * 2.0, (lo + hi) / 2.0)
        beta = np.where(np.abs(diff) < tol, beta, new)
        p, h = rows(beta)
    return p, beta


def joint_affinities(x: np.ndarray, perplexity: float = 30.0) -> np.ndarray:
    """Symmetric P [N, N] summing to 1: (p_{j|i} + p_{i|j}) / 2N."""
    p, _ = conditional_affinities(x, perplexity)
    p = (p + p.T) / (2.0 * p.shape[0])
    return np.maximum(p, 1e-12 / p.shape[0] ** 2)


def _descend(p, y0, *, num_iter, learning_rate, exaggeration, exaggeration_iter,
             momentum_switch_iter, min_gain):
    import jax
    import jax.numpy as jnp

    @jax.jit
    def run(p, y0):
        n = y0.shape[0]
        eye = jnp.eye(n, dtype=y0.dtype)

        def step(it, carry):
            y, update, gains = carry
            scale = jnp.where(it < exaggeration_iter, exaggeration, 1.0)
            momentum = jnp.where(it < momentum_switch_iter, 0.5, 0.8)
            sq = jnp.sum(y * y, axis=1)
            dist = sq[:, None] + sq[None, :] - 2.0 * y @ y.T
            num = (1.0 / (1.0 + jnp.maximum(dist, 0.0))) * (1.0 - eye)
            q = jnp.maximum(num / jnp.sum(num), 1e-12)
            w = (scale * p - q) * num
            grad = 4.0 * (jnp.sum(w, axis=1, keepdims=True) * y - w @ y)
            same_sign = (grad > 0) == (update > 0)
            gains = jnp.maximum(jnp.where(same_sign, gains * 0.8, gains + 0.2), min_gain)
            update = momentum * update - learning_rate * gains * grad
            y = y + update
            return y - jnp.mean(y, axis=0), update, gains

        zeros = jnp.zeros_like(y0)
        y, _, _ = jax.lax.fori_loop(0, num_iter, step, (y0, zeros, jnp.ones_like(y0)))
        return y

    return run(jnp.asarray(p, jnp.float32), jnp.asarray(y0, jnp.float32))


def kl_divergence(p: np.ndarray, y: np.ndarray) -> float:
    """KL(P || Q) of a map y under joint affinities p (the objective t-SNE minimises)."""
    y = np.asarray(y, np.float64)
    num = 1.0 / (1.0 + _squared_distances(y))
    np.fill_diagonal(num, 0.0)
    q = np.maximum(num / num.sum(), 1e-12)
    p = np.asarray(p, np.float64)
    return float(np.sum(p * np.log(np.maximum(p, 1e-12) / q)))


def tsne(x, *, perplexity: float = 30.0, num_dims: int = 2, num_iter: int = 1000,
         learning_rate: float | str = "auto", exaggeration: float = 12.0,
         exaggeration_iter: int = 250, momentum_switch_iter: int = 250,
         min_gain: float = 0.01, seed: int = 0) -> np.ndarray:
    """Embed x [N, D] into [N, num_dims] (float64 numpy).

    The perplexity is capped at (N - 1) / 3 for small N (see `effective_perplexity`).
    Duplicate points are fine (they land together). The initial map is N(0, 1e-4^2)
    from `numpy.random.default_rng(seed)`, as in the paper.
    """
    x = np.asarray(x, np.float64)
    if x.ndim != 2:
        raise ValueError(f"tsne expects points [N, D], got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("tsne: the points contain NaN or inf")
    n = x.shape[0]
    if n < 3:  # nothing to calibrate: at most two points on a line
        if n == 0:
            raise ValueError("tsne: no points")
        y = np.zeros((n, num_dims))
        y[:, 0] = [0.0] if n == 1 else [-1.0, 1.0]
        return y
    p = joint_affinities(x, effective_perplexity(perplexity, n))
    if learning_rate == "auto":
        learning_rate = max(n / exaggeration / 4.0, 50.0)
    y0 = np.random.default_rng(seed).normal(scale=1e-4, size=(n, num_dims))
    y = _descend(p, y0, num_iter=int(num_iter), learning_rate=float(learning_rate),
                 exaggeration=float(exaggeration), exaggeration_iter=int(exaggeration_iter),
                 momentum_switch_iter=int(momentum_switch_iter), min_gain=float(min_gain))
    y = np.asarray(y, np.float64)
    if not np.all(np.isfinite(y)):
        raise FloatingPointError("tsne: the embedding diverged (try a smaller learning_rate)")
    return y


__all__ = ["conditional_affinities", "effective_perplexity", "joint_affinities",
           "kl_divergence", "tsne"]
