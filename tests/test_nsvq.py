"""NSVQ (models/nsvq.py): noise substitution, gradients, inference, usage window, jit."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from atomskill_jax.models.nsvq import NSVQ

K, D = 8, 4


def make(**kw):
    return NSVQ(K, D, rngs=nnx.Rngs(0), **kw)


def clustered_codebook(vq):
    """Codes 0..3 on the axes (used), codes 4..7 far away (never nearest)."""
    codes = np.zeros((K, D), np.float32)
    codes[:4] = np.eye(D) * 2.0
    codes[4:] = 100.0 + np.arange(4 * D, dtype=np.float32).reshape(4, D)
    vq.codebook[...] = jnp.asarray(codes)
    return codes


def near_used(key, n=32):
    """Points near codes 0..3."""
    which = jax.random.randint(key, (n,), 0, 4)
    return jnp.eye(D)[which] * 2.0 + 0.1 * jax.random.normal(jax.random.fold_in(key, 1), (n, D))


def test_gradient_reaches_the_encoder_output_and_the_codebook():
    vq = make()
    x = jax.random.normal(jax.random.key(1), (6, D))
    w = jax.random.normal(jax.random.key(2), (6, D))
    graphdef, params, rest = nnx.split(vq, nnx.Param, ...)

    def loss(params, x):
        m = nnx.merge(graphdef, params, rest, copy=True)
        return jnp.sum(m(x, rng=jax.random.key(3), train=True).quantized * w)

    g_params, g_x = jax.grad(loss, argnums=(0, 1))(params, x)
    g_code = np.asarray(g_params["codebook"][...])
    g_x = np.asarray(g_x)
    _, idx = vq.nearest(x)
    chosen = np.zeros(K, bool)
    chosen[np.asarray(idx)] = True
    # Codebook: nonzero exactly on the rows some vector was assigned to.
    assert np.all(np.abs(g_code[chosen]).sum(-1) > 1e-6), g_code
    assert np.all(g_code[~chosen] == 0.0)
    # Encoder output: identity plus the ||x - q|| term, so not the straight-through w.
    assert np.all(np.isfinite(g_x)) and np.abs(g_x - np.asarray(w)).max() > 1e-3


def test_noisy_vector_lies_at_the_quantisation_distance():
    vq = make()
    x = jax.random.normal(jax.random.key(4), (3, 5, D)) * 2.0
    out = vq(x, rng=jax.random.key(5), train=True)
    q = np.asarray(vq.codebook[...])[np.asarray(out.indices)]
    np.testing.assert_allclose(out.hard, q)
    d_true = np.linalg.norm(np.asarray(x) - q, axis=-1)
    d_noisy = np.linalg.norm(np.asarray(out.quantized) - np.asarray(x), axis=-1)
    np.testing.assert_allclose(d_noisy, d_true, rtol=1e-5)
    np.testing.assert_allclose(out.commit_distance, d_true, rtol=1e-5)
    assert out.quantized.shape == x.shape and out.indices.shape == (3, 5)
    # Noise, not the code: the training output is (almost surely) not q.
    assert np.abs(np.asarray(out.quantized) - q).max() > 1e-3
    # Different keys, different directions.
    other = vq(x, rng=jax.random.key(6), train=True).quantized
    assert np.abs(np.asarray(other) - np.asarray(out.quantized)).max() > 1e-3


def test_vector_on_its_code_has_finite_gradients():
    vq = make()
    x = vq.codebook[...][:3]
    graphdef, state = nnx.split(vq)

    def loss(x):
        m = nnx.merge(graphdef, state, copy=True)
        return jnp.sum(m(x, rng=jax.random.key(0), train=True).quantized)

    g = jax.grad(loss)(x)
    assert np.all(np.isfinite(np.asarray(g)))


def test_inference_returns_the_hard_nearest_code_and_keeps_usage():
    vq = make()
    x = jax.random.normal(jax.random.key(7), (10, D))
    before = np.asarray(vq.window_counts[...]).copy()
    out = vq(x, train=False)
    codes = np.asarray(vq.codebook[...])
    brute = ((np.asarray(x)[:, None] - codes[None]) ** 2).sum(-1).argmin(-1)
    np.testing.assert_array_equal(out.indices, brute)
    np.testing.assert_allclose(out.quantized, codes[brute])
    z, idx = vq.nearest(x)
    np.testing.assert_array_equal(idx, brute)
    np.testing.assert_allclose(z, codes[brute])
    np.testing.assert_array_equal(vq.window_counts[...], before)
    assert 0 < float(out.metrics["perplexity"]) <= K
    assert 0 < float(out.metrics["used_fraction"]) <= 1


def test_unused_codes_are_replaced_and_used_codes_are_not():
    vq = make(usage_window=4, replace_threshold=0.01)
    codes = clustered_codebook(vq)
    assert float(vq.replace_unused(jax.random.key(0))["codes_replaced"]) == 0  # empty window
    for i in range(3):
        vq(near_used(jax.random.key(10 + i)), rng=jax.random.key(20 + i), train=True)
    m = vq.replace_unused(jax.random.key(30))
    assert float(m["codes_replaced"]) == 4
    assert float(m["window_calls"]) == 3 and float(m["window_used_fraction"]) == 0.5
    new = np.asarray(vq.codebook[...])
    np.testing.assert_array_equal(new[:4], codes[:4])
    # Each replaced code is a used code plus small noise; distinct used codes first.
    dist = np.linalg.norm(new[4:, None] - codes[None, :4], axis=-1)
    assert np.all(dist.min(-1) < 0.2) and np.all(dist.min(-1) > 0), dist
    assert len(set(dist.argmin(-1))) == 4
    assert int(vq.window_calls[...]) == 0 and float(np.asarray(vq.window_counts[...]).sum()) == 0


def test_usage_older_than_the_window_is_forgotten():
    vq = make(usage_window=2)
    clustered_codebook(vq)
    far = jnp.asarray(np.asarray(vq.codebook[...])[4:6])  # uses codes 4 and 5 once
    vq(far, rng=jax.random.key(0), train=True)
    vq(near_used(jax.random.key(1)), rng=jax.random.key(2), train=True)
    # Codes 4, 5 still in the window: only 6, 7 unused.
    snap = nnx.clone(nnx.state(vq))
    assert float(vq._window_metrics()["window_unused_codes"]) == 2
    vq(near_used(jax.random.key(3)), rng=jax.random.key(4), train=True)  # pushes the first call out
    m = vq.replace_unused(jax.random.key(5))
    assert float(m["codes_replaced"]) == 4
    nnx.update(vq, snap)
    assert float(vq.replace_unused(jax.random.key(5))["codes_replaced"]) == 2


def test_threshold_is_a_fraction_of_the_fair_share():
    vq = make(usage_window=4, replace_threshold=0.5)
    clustered_codebook(vq)
    # 31 vectors on code 0, one on code 1: code 1's share 1/32 < 0.5 / 8 -> replaced.
    x = jnp.concatenate([jnp.tile(vq.codebook[...][:1], (31, 1)), vq.codebook[...][1:2]])
    vq(x, rng=jax.random.key(0), train=True)
    assert float(vq.replace_unused(jax.random.key(1))["codes_replaced"]) == K - 1


def test_works_under_jit_through_split_and_merge():
    vq = make(usage_window=4)
    clustered_codebook(vq)
    graphdef, state = nnx.split(vq)

    @jax.jit
    def step(state, x, key):
        m = nnx.merge(graphdef, state, copy=True)
        out = m(x, rng=key, train=True)
        return out.quantized, out.metrics, nnx.state(m)

    @jax.jit
    def replace(state, key):
        m = nnx.merge(graphdef, state, copy=True)
        metrics = m.replace_unused(key)
        return metrics, nnx.state(m)

    for i in range(2):
        q, metrics, state = step(state, near_used(jax.random.key(i)), jax.random.key(100 + i))
    assert int(state["window_calls"][...]) == 2
    eager = make(usage_window=4)
    clustered_codebook(eager)
    for i in range(2):
        eq = eager(near_used(jax.random.key(i)), rng=jax.random.key(100 + i), train=True).quantized
    np.testing.assert_allclose(q, eq, rtol=1e-5, atol=1e-6)
    metrics, state = replace(state, jax.random.key(7))
    assert float(metrics["codes_replaced"]) == 4
    merged = nnx.merge(graphdef, state)
    assert int(merged.window_calls[...]) == 0
    assert np.abs(np.asarray(merged.codebook[...])[4:]).max() < 5
