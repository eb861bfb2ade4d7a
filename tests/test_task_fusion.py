"""Task-aware fusion (eq. 2, models/task_fusion.py): shapes, a learnable τ, a hand check."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from atomskill_jax.models.task_fusion import TaskAwareFusion


def _fusion(**kw):
    return TaskAwareFusion(6, 5, 4, num_queries=3, max_scene_tokens=7, rngs=nnx.Rngs(0), **kw)


def test_shapes_for_a_sentence_embedding_and_for_text_tokens():
    f = _fusion()
    scene = jnp.ones((2, 7, 5))
    assert f(jnp.ones((2, 6)), scene).shape == (2, 3, 4)
    assert f(jnp.ones((2, 5, 6)), scene[:, :4]).shape == (2, 3, 4)


def test_matches_equation_2_by_hand():
    f = _fusion(init_temperature=0.5)
    r = np.random.default_rng(0)
    lang, scene = r.normal(size=(1, 6)).astype(np.float32), r.normal(size=(1, 4, 5)).astype(np.float32)
    wl, bl = np.asarray(f.lang_proj.kernel[...]), np.asarray(f.lang_proj.bias[...])
    ws, bs = np.asarray(f.scene_proj.kernel[...]), np.asarray(f.scene_proj.bias[...])
    q = (lang @ wl + bl)[:, None] + np.asarray(f.query_offsets[...])[None]
    v = scene @ ws + bs
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    v /= np.linalg.norm(v, axis=-1, keepdims=True)
    logits = np.einsum("bqd,bnd->bqn", q, v) / 0.5
    attn = np.exp(logits - logits.max(-1, keepdims=True))
    attn /= attn.sum(-1, keepdims=True)
    expected = np.einsum("bqn,bnd->bqd", attn, v + np.asarray(f.positions[...])[None, :4])
    np.testing.assert_allclose(f(lang, scene), expected, rtol=1e-4, atol=1e-5)


def test_temperature_is_learned():
    f = _fusion()
    graphdef, params = nnx.split(f, nnx.Param)
    lang, scene = jnp.ones((2, 6)), jax.random.normal(jax.random.PRNGKey(1), (2, 7, 5))
    target = jax.random.normal(jax.random.PRNGKey(2), (2, 3, 4))

    def loss(params):
        return jnp.mean((nnx.merge(graphdef, params)(lang, scene) - target) ** 2)

    grads = jax.grad(loss)(params)
    assert abs(float(grads["log_tau"][...])) > 0
    tx = optax.sgd(0.1)
    before = float(f.temperature)
    updates, _ = tx.update(grads, tx.init(params))
    f2 = nnx.merge(graphdef, optax.apply_updates(params, updates))
    assert float(f2.temperature) != before
