"""NSVQ (models/nsvq.py): noise substitution, gradients, inference, usage window, jit."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from atomskill_jax.models.nsvq import NSVQ

K, D = 8, 4

# Jitted calls: one compilation each instead of one per eager op (much faster on CPU).
train_call = nnx.jit(lambda m, x, k: m(x, rng=k, train=True))
infer_call = nnx.jit(lambda m, x: m(x, train=False))
replace = nnx.jit(lambda m, k: m.replace_unused(k))


def make(**kw):
    return NSVQ(K, D, rngs=nnx.Rngs(0), **kw)


def clustered_codebook(vq):
    """Codes 0..3 on the axes (used), codes 4..7 far away (never nearest)."""
    codes = np.zeros((K, D), np.float32)
    codes[:4] = np.eye(D) * 2.0
    codes[4:] = 100.0 + np.arange(4 * D, dtype=np.float32).reshape(4, D)
    vq.codebook[...] = jnp.asarray(codes)
    return codes


def near_used(seed, n=32):
    """Points near codes 0..3 (numpy data: no PRNG kernels to compile)."""
    rng = np.random.default_rng(seed)
    which = rng.integers(0, 4, n)
    return jnp.asarray(np.eye(D)[which] * 2.0 + 0.1 * rng.standard_normal((n, D)), jnp.float32)


def test_gradient_reaches_the_encoder_output_and_the_codebook():
    vq = make()
    x = jnp.asarray(np.random.default_rng(1).standard_normal((6, D)), jnp.float32)
    w = jnp.asarray(np.random.default_rng(2).standard_normal((6, D)), jnp.float32)
    graphdef, params, rest = nnx.split(vq, nnx.Param, ...)

    def loss(params, x):
        m = nnx.merge(graphdef, params, rest, copy=True)
        return jnp.sum(m(x, rng=jax.random.key(3), train=True).quantized * w)

    g_params, g_x = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)
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
    x = jnp.asarray(np.random.default_rng(4).standard_normal((3, 5, D)), jnp.float32) * 2.0
    out = train_call(vq, x, jax.random.key(5))
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
    other = train_call(vq, x, jax.random.key(6)).quantized
    assert np.abs(np.asarray(other) - np.asarray(out.quantized)).max() > 1e-3


def test_vector_on_its_code_has_finite_gradients():
    vq = make()
    x = vq.codebook[...][:3]
    graphdef, state = nnx.split(vq)

    def loss(x):
        m = nnx.merge(graphdef, state, copy=True)
        return jnp.sum(m(x, rng=jax.random.key(0), train=True).quantized)

    g = jax.jit(jax.grad(loss))(x)
    assert np.all(np.isfinite(np.asarray(g)))


def test_inference_returns_the_hard_nearest_code_and_keeps_usage():
    vq = make()
    x = jnp.asarray(np.random.default_rng(7).standard_normal((10, D)), jnp.float32)
    before = np.asarray(vq.window_counts[...]).copy()
    out = infer_call(vq, x)
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
    assert float(replace(vq, jax.random.key(0))["codes_replaced"]) == 0  # empty window
    for i in range(3):
        train_call(vq, near_used(10 + i), jax.random.key(20 + i))
    m = replace(vq, jax.random.key(30))
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
    train_call(vq, far, jax.random.key(0))
    train_call(vq, near_used(1), jax.random.key(2))
    # Codes 4, 5 still in the window: only 6, 7 unused.
    snap = nnx.clone(nnx.state(vq))
    assert float(vq._window_metrics()["window_unused_codes"]) == 2
    train_call(vq, near_used(3), jax.random.key(4))  # pushes the first call out
    m = replace(vq, jax.random.key(5))
    assert float(m["codes_replaced"]) == 4
    nnx.update(vq, snap)
    assert float(replace(vq, jax.random.key(5))["codes_replaced"]) == 2


def test_threshold_is_a_fraction_of_the_fair_share():
    vq = make(usage_window=4, replace_threshold=0.5)
    clustered_codebook(vq)
    # 31 vectors on code 0, one on code 1: code 1's share 1/32 < 0.5 / 8 -> replaced.
    x = jnp.concatenate([jnp.tile(vq.codebook[...][:1], (31, 1)), vq.codebook[...][1:2]])
    train_call(vq, x, jax.random.key(0))
    assert float(replace(vq, jax.random.key(1))["codes_replaced"]) == K - 1


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
    def replace_split(state, key):
        m = nnx.merge(graphdef, state, copy=True)
        metrics = m.replace_unused(key)
        return metrics, nnx.state(m)

    for i in range(2):
        q, metrics, state = step(state, near_used(i), jax.random.key(100 + i))
    assert int(state["window_calls"][...]) == 2
    eager = make(usage_window=4)
    clustered_codebook(eager)
    for i in range(2):
        eq = train_call(eager, near_used(i), jax.random.key(100 + i)).quantized
    np.testing.assert_allclose(q, eq, rtol=1e-5, atol=1e-6)
    metrics, state = replace_split(state, jax.random.key(7))
    assert float(metrics["codes_replaced"]) == 4
    merged = nnx.merge(graphdef, state)
    assert int(merged.window_calls[...]) == 0
    assert np.abs(np.asarray(merged.codebook[...])[4:]).max() < 5
