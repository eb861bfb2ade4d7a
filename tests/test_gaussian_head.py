"""The Gaussian chunk head (models/gaussian_head.py): NLL closed form, mask, std modes."""

import math

import jax.numpy as jnp
import numpy as np
from flax import nnx

from atomskill_jax.models.gaussian_head import GaussianChunkHead, gaussian_nll


def test_nll_closed_form_and_mask():
    mean = np.zeros((1, 2, 1), np.float32)
    target = np.array([[[1.0], [100.0]]], np.float32)
    mask = np.array([[True, False]])
    loss, metrics = gaussian_nll(mean, math.log(2.0), target, mask)
    expected = 0.5 * (1.0 / 2.0) ** 2 + math.log(2.0) + 0.5 * math.log(2 * math.pi)
    assert float(loss) == np.float32(expected) or abs(float(loss) - expected) < 1e-5
    assert abs(float(metrics["action_l1"]) - 1.0) < 1e-6  # the padded step is ignored


def test_fixed_and_learned_std():
    fixed = GaussianChunkHead(3, 4, 2, hidden=(8,), rngs=nnx.Rngs(0), std=0.5)
    mean, log_std = fixed(jnp.ones((5, 3)))
    assert mean.shape == (5, 4, 2) and abs(float(log_std) - math.log(0.5)) < 1e-6
    assert not any("log_std" in str(k) for k, _ in nnx.to_flat_state(nnx.state(fixed, nnx.Param)))
    learned = GaussianChunkHead(3, 4, 2, hidden=(8,), rngs=nnx.Rngs(0))
    assert float(learned(jnp.ones((1, 3)))[1]) == 0.0
    assert isinstance(learned.log_std, nnx.Param)
