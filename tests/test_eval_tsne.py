"""The exact t-SNE of eval/tsne.py: calibrated bandwidths, separated clusters stay
separated, deterministic given a seed."""

import numpy as np
import pytest

from atomskill_jax.eval import tsne as T


def _clusters(k=5, m=60, dim=20, spread=10.0, seed=0):
    r = np.random.default_rng(seed)
    centers = r.normal(size=(k, dim)) * spread
    x = np.concatenate([c + r.normal(size=(m, dim)) for c in centers])
    return x, np.repeat(np.arange(k), m)


def _knn_agreement(y, labels, k=5):
    d = ((y[:, None] - y[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    nearest = np.argsort(d, axis=1)[:, :k]
    return float((labels[nearest] == labels[:, None]).mean())


def _row_entropy(p):
    safe = np.where(p > 0, p, 1.0)
    return -np.sum(p * np.log(safe), axis=1)


@pytest.mark.parametrize("perplexity", [5.0, 30.0])
def test_calibrated_row_entropies_match_log_perplexity(perplexity):
    # Clusters of very different density: one bandwidth could not fit every row.
    r = np.random.default_rng(1)
    x = np.concatenate([r.normal(size=(100, 10)) * 0.01, r.normal(size=(100, 10)) * 50.0 + 3])
    p, beta = T.conditional_affinities(x, perplexity)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-12)
    assert np.all(np.diag(p) == 0) and np.all(beta > 0)
    np.testing.assert_allclose(_row_entropy(p), np.log(perplexity), atol=1e-4)
    # Dense rows need much narrower Gaussians (larger beta) than sparse ones.
    assert np.median(beta[:100]) > 1e4 * np.median(beta[100:])

    joint = T.joint_affinities(x, perplexity)
    np.testing.assert_allclose(joint, joint.T)
    assert abs(joint.sum() - 1.0) < 1e-6


def test_separated_clusters_stay_separated_and_runs_are_deterministic():
    x, labels = _clusters()
    y = T.tsne(x, perplexity=30.0, seed=0)
    assert y.shape == (len(x), 2) and np.all(np.isfinite(y))
    assert _knn_agreement(y, labels) > 0.95
    # Every cluster lies apart: its nearest other cluster's centroid is farther away
    # than its own points are from its centroid.
    centroids = np.stack([y[labels == c].mean(0) for c in range(5)])
    radius = max(np.linalg.norm(y[labels == c] - centroids[c], axis=1).max() for c in range(5))
    gaps = np.linalg.norm(centroids[:, None] - centroids[None], axis=-1)
    np.fill_diagonal(gaps, np.inf)
    assert gaps.min() > radius
    # The descent lowered the objective far below that of an unstructured map.
    p = T.joint_affinities(x, 30.0)
    random_map = np.random.default_rng(0).normal(size=y.shape) * y.std()
    assert T.kl_divergence(p, y) < 0.5 * T.kl_divergence(p, random_map)

    np.testing.assert_array_equal(T.tsne(x, perplexity=30.0, seed=0), y)
    assert not np.allclose(T.tsne(x, perplexity=30.0, seed=1), y)


def test_small_inputs_and_bad_input():
    r = np.random.default_rng(0)
    for n in (1, 2, 3, 4, 7):
        y = T.tsne(r.normal(size=(n, 5)), perplexity=30.0, num_iter=100)
        assert y.shape == (n, 2) and np.all(np.isfinite(y))
    assert T.effective_perplexity(30.0, 31) == 10.0 and T.effective_perplexity(5.0, 1000) == 5.0
    with pytest.raises(ValueError, match="NaN"):
        T.tsne(np.full((5, 2), np.nan))
    with pytest.raises(ValueError, match="perplexity"):
        T.tsne(r.normal(size=(10, 2)), perplexity=1.0)
