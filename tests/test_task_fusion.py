"""TaskAwareFusion (models/task_fusion.py): eq. 2 by hand, shapes, learnable temperature."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from atomskill_jax.models.task_fusion import TaskAwareFusion

E, C, DIM, Q, NMAX = 6, 5, 8, 3, 7

forward = nnx.jit(lambda f, language, scene: f(language, scene))  # one compile, not per op


def make(**kw):
    return TaskAwareFusion(E, C, DIM, num_queries=Q, max_scene_tokens=NMAX, rngs=nnx.Rngs(0), **kw)


def linear(layer, x):
    return x @ np.asarray(layer.kernel[...]) + np.asarray(layer.bias[...])


def normalise(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def reference(f, language, scene):
    """Eq. 2 in numpy from the module's own parameters."""
    lang = np.asarray(language, np.float64)
    if lang.ndim == 2:
        queries = linear(f.lang_proj, lang)[:, None] + np.asarray(f.query_offsets[...])[None]
    else:
        queries = linear(f.lang_proj, lang[:, :Q])
    l_hat = normalise(queries)
    v_hat = normalise(linear(f.scene_proj, np.asarray(scene, np.float64)))
    tau = math.exp(float(f.log_temperature[...]))
    logits = np.einsum("bqd,bnd->bqn", l_hat, v_hat) / tau
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    pe = np.asarray(f.pos_embedding[...])[: scene.shape[1]]
    return np.einsum("bqn,bnd->bqd", w, v_hat + pe[None])


@pytest.mark.parametrize("tokens", [False, True])
def test_matches_equation_2_by_hand(tokens):
    f = make(init_temperature=0.2)
    rng = np.random.default_rng(1)
    language = jnp.asarray(rng.standard_normal((2, 4, E) if tokens else (2, E)), jnp.float32)
    scene = jnp.asarray(rng.standard_normal((2, 5, C)), jnp.float32)
    out = np.asarray(forward(f, language, scene))
    assert out.shape == (2, Q, DIM)
    np.testing.assert_allclose(out, reference(f, language, scene), rtol=1e-4, atol=1e-5)
    # Several distinct fused tokens per frame, also from one sentence embedding.
    assert np.abs(out[:, 0] - out[:, 1]).max() > 1e-3


def test_shapes_and_refusals():
    f = make()
    scene = jnp.ones((3, NMAX, C))
    shape = lambda lang, sc: nnx.eval_shape(lambda m: m(lang, sc), f).shape  # noqa: E731
    assert shape(jnp.ones((3, E)), scene) == (3, Q, DIM)
    assert shape(jnp.ones((3, 10, E)), scene[:, :2]) == (3, Q, DIM)
    with pytest.raises(ValueError, match="max_scene_tokens"):
        f(jnp.ones((3, E)), jnp.ones((3, NMAX + 1, C)))
    with pytest.raises(ValueError, match="num_queries"):
        f(jnp.ones((3, Q - 1, E)), scene)
    with pytest.raises(ValueError, match="lang_dim"):
        f(jnp.ones((3, E + 1)), scene)


def test_zero_scene_token_has_finite_gradients():
    f = make()
    f.scene_proj.bias[...] = jnp.zeros((DIM,))
    graphdef, params = nnx.split(f, nnx.Param)
    scene = jnp.zeros((1, 2, C)).at[0, 0].set(1.0)  # token 1 projects to exactly 0
    g = jax.jit(jax.grad(lambda p: jnp.sum(nnx.merge(graphdef, p)(jnp.ones((1, E)), scene))))(params)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(g))


def test_temperature_is_a_param_that_learns():
    f = make()
    assert isinstance(f.log_temperature, nnx.Param)
    np.testing.assert_allclose(f.temperature, 0.07, rtol=1e-6)
    graphdef, params = nnx.split(f, nnx.Param)
    language = jnp.asarray(np.random.default_rng(2).standard_normal((4, E)), jnp.float32)
    scene = jnp.asarray(np.random.default_rng(3).standard_normal((4, 6, C)), jnp.float32)
    target = jnp.asarray(np.random.default_rng(4).standard_normal((4, Q, DIM)), jnp.float32)

    def loss(p):
        return jnp.mean((nnx.merge(graphdef, p)(language, scene) - target) ** 2)

    tx = optax.adam(1e-2)
    opt = tx.init(params)
    grads = jax.jit(jax.grad(loss))(params)
    assert abs(float(grads["log_temperature"][...])) > 0
    updates, opt = jax.jit(tx.update)(grads, opt, params)
    new = jax.jit(optax.apply_updates)(params, updates)
    model = nnx.merge(graphdef, new)
    assert abs(float(model.temperature) - 0.07) > 1e-4
    # Clipped to a sane range however far log τ moves.
    model.log_temperature[...] = jnp.asarray(10.0)
    assert float(model.temperature) == pytest.approx(1.0)
    model.log_temperature[...] = jnp.asarray(-10.0)
    assert float(model.temperature) == pytest.approx(0.01)
