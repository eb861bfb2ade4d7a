"""GaussianChunkHead and gaussian_nll (models/gaussian_head.py)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy.stats import norm

from atomskill_jax.models.gaussian_head import GaussianChunkHead, gaussian_nll

B, H, A = 3, 4, 2


def data(seed=0):
    rng = np.random.default_rng(seed)
    mean = rng.standard_normal((B, H, A)).astype(np.float32)
    target = rng.standard_normal((B, H, A)).astype(np.float32)
    mask = np.ones((B, H), bool)
    mask[0, 2:] = False
    mask[2, 3:] = False
    return mean, target, mask


@pytest.mark.parametrize("log_std", [math.log(0.3), np.log([0.5, 2.0])])
def test_nll_matches_the_closed_form_on_valid_steps(log_std):
    mean, target, mask = data()
    loss, metrics = gaussian_nll(jnp.asarray(mean), jnp.asarray(log_std), target, mask)
    sigma = np.broadcast_to(np.exp(log_std), mean.shape)
    ref = -norm.logpdf(target, loc=mean, scale=sigma)[mask].mean()
    np.testing.assert_allclose(loss, ref, rtol=1e-5)
    np.testing.assert_allclose(metrics["action_l1"], np.abs(target - mean)[mask].mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["action_mse"], ((target - mean) ** 2)[mask].mean(), rtol=1e-5)


def test_mask_excludes_padded_steps():
    mean, target, mask = data()
    loss, _ = gaussian_nll(mean, 0.0, target, mask)
    garbage = np.where(mask[..., None], target, 1e3)
    loss2, m2 = gaussian_nll(mean, 0.0, garbage, mask)
    np.testing.assert_allclose(loss2, loss, rtol=1e-6)
    full, _ = gaussian_nll(mean, 0.0, garbage, np.ones_like(mask))
    assert float(full) > 1e4
    with pytest.raises(ValueError, match="mask"):
        gaussian_nll(mean, 0.0, target, mask[:, :2])


def test_fixed_std_has_no_parameter_and_learned_std_learns():
    x = jnp.asarray(np.random.default_rng(1).standard_normal((B, 5)), jnp.float32)
    fixed = GaussianChunkHead(5, H, A, hidden=(8,), rngs=nnx.Rngs(0), std=0.1)
    mean, log_std = fixed(x)
    assert mean.shape == (B, H, A) and log_std.shape == ()
    np.testing.assert_allclose(log_std, math.log(0.1), rtol=1e-6)
    assert fixed.log_std is None

    learned = GaussianChunkHead(5, H, A, hidden=(8,), rngs=nnx.Rngs(0), init_std=0.5)
    assert isinstance(learned.log_std, nnx.Param)
    # Same MLP from the same seed: the mean does not depend on how σ is chosen.
    np.testing.assert_allclose(learned(x)[0], mean, rtol=1e-6)
    _, target, mask = data()
    graphdef, params = nnx.split(learned, nnx.Param)

    def loss(p):
        m, s = nnx.merge(graphdef, p)(x)
        return gaussian_nll(m, s, target, mask)[0]

    grads = jax.jit(jax.grad(loss))(params)
    m, _ = nnx.jit(lambda h, x: h(x))(learned, x)
    mse = float((((np.asarray(m) - target) ** 2)[mask]).mean())
    # d NLL / d log σ = 1 - mse / σ²
    np.testing.assert_allclose(grads["log_std"][...], 1.0 - mse / 0.25, rtol=1e-4)
    learned.log_std[...] = jnp.asarray(-50.0)
    assert float(learned(x)[1]) == -5.0  # clipped: σ cannot collapse
