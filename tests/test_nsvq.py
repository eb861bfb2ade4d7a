"""NSVQ (models/nsvq.py): gradient flow to encoder and codebook, the substituted vector's
distance, hard codes at inference, replacement of unused codes, under jit via split/merge."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from atomskill_jax.models.nsvq import NSVQ


def _vq(k=4, d=3, **kw):
    return NSVQ(k, d, rngs=nnx.Rngs(0), **kw)


def test_training_output_lies_at_the_quantisation_distance_and_gradients_flow():
    vq = _vq()
    x = jax.random.normal(jax.random.PRNGKey(1), (5, 3))
    out = vq(x, rng=jax.random.PRNGKey(2), train=True)
    hard, _ = vq.nearest(x)
    np.testing.assert_allclose(np.linalg.norm(out.quantized - x, axis=-1),
                               np.linalg.norm(hard - x, axis=-1), rtol=1e-5)
    assert not np.allclose(out.quantized, hard)  # noise, not the code itself

    graphdef, params, rest = nnx.split(vq, nnx.Param, ...)

    def loss(params, x):
        model = nnx.merge(graphdef, params, rest, copy=True)
        return jnp.sum(model(x, rng=jax.random.PRNGKey(2), train=True).quantized ** 2)

    g_params, g_x = jax.grad(loss, argnums=(0, 1))(params, x)
    assert np.abs(np.asarray(g_params["codes"][...])).sum() > 0  # via ||x - q||
    assert np.abs(np.asarray(g_x)).sum() > 0


def test_inference_returns_the_hard_nearest_code():
    vq = _vq()
    codes = np.asarray(vq.codes[...])
    x = codes[[2, 0, 3]] + 1e-3
    out = vq(x)
    np.testing.assert_array_equal(np.asarray(out.indices), [2, 0, 3])
    np.testing.assert_allclose(out.quantized, codes[[2, 0, 3]])


def test_unused_codes_are_replaced_used_ones_kept_under_jit():
    vq = _vq(k=4, d=2, replace_threshold=0.5)
    with jax.disable_jit(False):
        codes = np.asarray(vq.codes[...]).copy()
    x = jnp.asarray(codes[[0, 0, 1, 1, 0]]) + 1e-4  # codes 2 and 3 never used
    graphdef, state = nnx.split(vq)

    @jax.jit
    def step(state, x, key):
        model = nnx.merge(graphdef, state)
        model(x, rng=key, train=True)
        metrics = model.replace_unused(jax.random.fold_in(key, 1))
        return nnx.state(model), metrics

    state, metrics = step(state, x, jax.random.PRNGKey(0))
    vq = nnx.merge(graphdef, state)
    new = np.asarray(vq.codes[...])
    assert float(metrics["replaced"]) == 2.0
    np.testing.assert_array_equal(new[:2], codes[:2])
    assert not np.allclose(new[2:], codes[2:])
    # replacements are noisy copies of used codes
    for row in new[2:]:
        assert min(np.linalg.norm(row - codes[0]), np.linalg.norm(row - codes[1])) < 0.1
    assert np.asarray(vq.usage[...]).sum() == 0  # a new window
