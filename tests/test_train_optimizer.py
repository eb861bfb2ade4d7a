"""The optimiser (atomskill_jax/training/optimizer.py), checked against formulas written
out here: warmup + cosine schedule to the `min_lr_ratio` floor, AdamW's update with
bias correction, which parameters decay (not 1-D or 0-D ones: biases, norm scales),
gradient clipping by the global norm, and the defaults of each key."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from atomskill_jax.training import optimizer


def _config(**values):
    return ml_collections.ConfigDict(values)


def _lrs(config, total, steps):
    schedule = optimizer.learning_rate_schedule(config, total)
    return np.array([float(schedule(s)) for s in steps])


def _warmup_cosine(step, *, lr, warmup, total, floor):
    if step < warmup:
        return lr * step / warmup
    progress = min(step - warmup, max(total - warmup, 1)) / max(total - warmup, 1)
    return lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def test_warmup_then_cosine_to_the_floor():
    config = _config(lr=2e-3, warmup_steps=4, min_lr_ratio=0.25, schedule="cosine")
    steps = [0, 1, 3, 4, 5, 12, 19, 20, 30]
    expected = [_warmup_cosine(s, lr=2e-3, warmup=4, total=20, floor=0.25) for s in steps]
    np.testing.assert_allclose(_lrs(config, 20, steps), expected, rtol=1e-6)
    # Spelled out: linear from 0, the peak at the end of warmup, halfway, the floor.
    np.testing.assert_allclose(_lrs(config, 20, [0, 2, 4, 12, 20, 30]),
                               [0, 1e-3, 2e-3, 2e-3 * 0.625, 5e-4, 5e-4], rtol=1e-6)


def test_cosine_defaults_no_warmup_and_decay_to_zero():
    config = _config(lr=1e-3)  # schedule, warmup_steps and min_lr_ratio at their defaults
    np.testing.assert_allclose(_lrs(config, 10, [0, 5, 10, 11]), [1e-3, 5e-4, 0, 0],
                               rtol=1e-6, atol=1e-12)


def test_run_no_longer_than_its_warmup():
    # The cosine part then lasts one step, straight to the floor.
    config = _config(lr=1.0, warmup_steps=3, min_lr_ratio=0.1)
    np.testing.assert_allclose(_lrs(config, 3, [0, 1, 2, 3, 4]), [0, 1 / 3, 2 / 3, 1.0, 0.1],
                               rtol=1e-6)


def test_one_warmup_step():
    # The tiny config's warmup: the first update at lr 0, then the cosine from its peak.
    np.testing.assert_allclose(_lrs(_config(lr=0.5, warmup_steps=1), 5, [0, 1, 3, 5]),
                               [0, 0.5, 0.25, 0], rtol=1e-6, atol=1e-12)


def test_constant_schedule_with_and_without_warmup():
    np.testing.assert_allclose(
        _lrs(_config(lr=0.5, schedule="constant", warmup_steps=2), 10, [0, 1, 2, 9, 20]),
        [0, 0.25, 0.5, 0.5, 0.5], rtol=1e-6)
    np.testing.assert_allclose(_lrs(_config(lr=0.5, schedule="constant"), 10, [0, 10]),
                               [0.5, 0.5], rtol=1e-6)


def test_unknown_schedule_is_refused_by_name():
    with pytest.raises(ValueError,
                       match=r"config.optim.schedule='linear'.*'cosine' or 'constant'"):
        optimizer.learning_rate_schedule(_config(lr=1.0, schedule="linear"), 10)


PARAMS = {"kernel": np.array([[1.0, -2.0], [0.5, 3.0]], np.float32),
          "codebook": np.array([[0.2, -0.4, 1.5]], np.float32),
          "bias": np.array([1.0, -1.0], np.float32),
          "scale": np.array(2.0, np.float32)}
DECAYS = {"kernel": True, "codebook": True, "bias": False, "scale": False}


def _grads(step):
    r = np.random.default_rng(step)
    return {k: (r.normal(size=v.shape) * (1 + step)).astype(np.float32)
            for k, v in PARAMS.items()}


def _adamw_reference(steps, *, lrs, b1, b2, eps, wd):
    """AdamW written out: moments, bias correction, decoupled decay of 2-D+ params."""
    p = {k: v.astype(np.float64) for k, v in PARAMS.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    for t in range(steps):
        g = _grads(t)
        for k in p:
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
            m_hat, v_hat = m[k] / (1 - b1 ** (t + 1)), v[k] / (1 - b2 ** (t + 1))
            update = m_hat / (np.sqrt(v_hat) + eps) + (wd * p[k] if DECAYS[k] else 0.0)
            p[k] = p[k] - lrs[t] * update
    return p


def _one_update(tx, params, grads):
    """tx's first update, compiled once (not one dispatch per small op)."""
    return jax.jit(lambda p, g: tx.update(g, tx.init(p), p)[0])(params, grads)


def _run(config, total, steps):
    tx, _ = optimizer.make_optimizer(config, total)
    params = jax.tree.map(jnp.asarray, PARAMS)
    state = tx.init(params)

    @jax.jit  # one compiled update, not one dispatch per small op
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for t in range(steps):
        params, state = step(params, state, jax.tree.map(jnp.asarray, _grads(t)))
    return params


def test_adamw_update_follows_the_schedule_and_config():
    config = _config(lr=0.1, weight_decay=0.3, b1=0.8, b2=0.95, eps=0.5, warmup_steps=2,
                     min_lr_ratio=0.2, clip_norm=0.0)
    lrs = [_warmup_cosine(t, lr=0.1, warmup=2, total=6, floor=0.2) for t in range(4)]
    expected = _adamw_reference(4, lrs=lrs, b1=0.8, b2=0.95, eps=0.5, wd=0.3)
    got = _run(config, 6, 4)
    for k in PARAMS:
        np.testing.assert_allclose(got[k], expected[k], rtol=2e-6, atol=1e-7, err_msg=k)


def test_adamw_defaults():
    config = _config(lr=0.1, weight_decay=0.0, schedule="constant")  # b1, b2, eps absent
    expected = _adamw_reference(3, lrs=[0.1] * 3, b1=0.9, b2=0.999, eps=1e-8, wd=0.0)
    got = _run(config, 3, 3)
    for k in PARAMS:  # float32 rounding of v at b2 = 0.999: a few 1e-6 relative
        np.testing.assert_allclose(got[k], expected[k], rtol=2e-5, atol=1e-7, err_msg=k)


def test_weight_decay_skips_biases_and_norm_scales_of_a_model():
    """Zero gradients: Adam's step is 0, so each parameter moves only by its decay."""

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.linear = nnx.Linear(3, 2, rngs=rngs)
            self.norm = nnx.LayerNorm(2, rngs=rngs)
            self.codebook = nnx.Param(jnp.ones((4, 2)))

    params = nnx.state(Net(nnx.Rngs(0)), nnx.Param)
    config = _config(lr=0.1, weight_decay=0.5, schedule="constant", clip_norm=1.0)
    tx, _ = optimizer.make_optimizer(config, 10)
    grads = jax.tree.map(jnp.zeros_like, params)
    new = optax.apply_updates(params, _one_update(tx, params, grads))
    flat_old = {jax.tree_util.keystr(p): np.asarray(x)
                for p, x in jax.tree_util.tree_leaves_with_path(params)}
    flat_new = {jax.tree_util.keystr(p): np.asarray(x)
                for p, x in jax.tree_util.tree_leaves_with_path(new)}
    decayed = {k for k in flat_old if "kernel" in k or "codebook" in k}
    assert len(decayed) == 2 and len(flat_old) == 5, sorted(flat_old)
    for key, old in flat_old.items():
        factor = 1 - 0.1 * 0.5 if key in decayed else 1.0
        np.testing.assert_allclose(flat_new[key], old * factor, rtol=1e-6, err_msg=key)


def _first_update(clip_norm, grads):
    # b1 = b2 = 0 and eps = 1: the first Adam step is g / (|g| + 1) elementwise, which
    # shows the scale of the (clipped) gradient; Adam alone would normalise it away.
    values = dict(lr=1.0, weight_decay=0.0, schedule="constant", b1=0.0, b2=0.0, eps=1.0)
    if clip_norm is not None:
        values["clip_norm"] = clip_norm
    tx, _ = optimizer.make_optimizer(_config(**values), 10)
    params = jax.tree.map(jnp.zeros_like, grads)
    return {k: np.asarray(u) for k, u in _one_update(tx, params, grads).items()}


def _adam_first(g):
    return -g / (np.abs(g) + 1.0)


def test_gradients_clipped_by_their_global_norm():
    grads = {"a": jnp.array([3.0]), "b": jnp.array([0.0, 4.0])}  # global norm 5
    got = _first_update(1.0, grads)
    np.testing.assert_allclose(got["a"], _adam_first(np.array([0.6])), rtol=1e-6)
    np.testing.assert_allclose(got["b"], _adam_first(np.array([0.0, 0.8])), rtol=1e-6)
    # Under the threshold: untouched.
    small = {"a": jnp.array([0.3]), "b": jnp.array([0.0, 0.4])}
    got = _first_update(1.0, small)
    np.testing.assert_allclose(got["a"], _adam_first(np.array([0.3])), rtol=1e-6)


@pytest.mark.parametrize("clip_norm", [0.0, -1.0, None])
def test_no_clipping_when_off_or_absent(clip_norm):
    grads = {"a": jnp.array([3.0]), "b": jnp.array([0.0, 4.0])}
    got = _first_update(clip_norm, grads)
    np.testing.assert_allclose(got["a"], _adam_first(np.array([3.0])), rtol=1e-6)
    np.testing.assert_allclose(got["b"], _adam_first(np.array([0.0, 4.0])), rtol=1e-6)
