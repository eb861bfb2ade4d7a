"""How AtomSkill uses the sampler: it trains ρ on codes standardised with the codebook's
mean and spread, and maps a sample back (x * scale + mean) before snapping it to the
nearest code; the labels, steps and guidance it is asked for reach the sampler.

The codebook is set to 8 codes on a line, far from the origin: then leaving out the
un-standardisation, or only its scale or only its mean, snaps to other codes (checked
below), so the snap no longer hides it.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from atomskill_jax.methods.atomskill.model import AtomSkill, fake_batch
from atomskill_jax.methods.atomskill.config import tiny_model_config
from atomskill_jax.models.diffusion import codebook_standardisation

B = 2


@pytest.fixture(scope="module")
def setup():
    config = tiny_model_config()
    config.cameras = ()  # no ResNet: a cheaper model; images play no part here
    config.loss_weights.update(diffusion=0.5, label_head=4.0)
    model = AtomSkill(config, rngs=nnx.Rngs(0))
    k, d = config.vq.codebook_size, config.d_model
    direction = 2.0 * np.random.default_rng(0).normal(size=d)
    codebook = 5.0 + np.arange(k)[:, None] * direction  # codes on a line, mean far from 0
    model.vq.codebook[...] = jnp.asarray(codebook, jnp.float32)
    return model, config, codebook


def _nearest(points, codebook):
    return np.argmin(((points[..., None, :] - codebook) ** 2).sum(-1), -1)


def _standardisation(codebook):
    mean = codebook.mean(0)
    return mean, np.sqrt(np.mean((codebook - mean) ** 2))


def test_codebook_standardisation_is_the_mean_and_rms_spread():
    codebook = np.random.default_rng(1).normal(3.0, 2.0, size=(8, 5))
    mean, scale = codebook_standardisation(jnp.asarray(codebook, jnp.float32))
    want_mean, want_scale = _standardisation(codebook)
    np.testing.assert_allclose(mean, want_mean, rtol=1e-5)
    assert float(scale) == pytest.approx(want_scale, rel=1e-5)
    _, collapsed = codebook_standardisation(jnp.ones((8, 5)))  # one code: no division by 0
    assert float(collapsed) == pytest.approx(1e-6)
    grad = jax.grad(lambda c: jnp.sum(codebook_standardisation(c)[0])
                    + codebook_standardisation(c)[1])(jnp.asarray(codebook, jnp.float32))
    assert float(jnp.abs(grad).max()) == 0.0  # a fixed map: no gradient into the codebook


def test_sample_skill_unstandardises_before_the_snap(setup):
    model, config, codebook = setup
    n, d = config.skill_encoder.num_tokens, config.d_model
    want = np.random.default_rng(2).permutation(config.vq.codebook_size).reshape(B, n)
    mean, scale = _standardisation(codebook)
    x = (codebook[want] - mean) / scale  # what a perfect sampler returns
    x = x + 0.02 * np.random.default_rng(3).normal(size=x.shape)
    for wrong in (x, x * scale, x + mean):  # no un-standardisation, no mean, no scale
        assert (_nearest(wrong, codebook) != want).any()  # the test can tell them apart

    seen = {}

    def sample(key, obs_tokens, shape, **kwargs):
        seen.update(obs=obs_tokens, shape=shape, **kwargs)
        return jnp.asarray(x, jnp.float32)

    real, model.sampler.sample = model.sampler.sample, sample
    batch = fake_batch(config, B)
    try:
        tokens = model.sample_skill(jax.random.key(0), batch["observation"],
                                    batch["language_embedding"], 4, 2.5,
                                    label_id=jnp.array([1, 3]), skill_step=jnp.array([0, 5]))
    finally:
        model.sampler.sample = real
    np.testing.assert_allclose(tokens, codebook[want], rtol=1e-6)
    assert seen["shape"] == (B, n, d)
    assert (seen["num_steps"], seen["guidance"]) == (4, 2.5)
    np.testing.assert_array_equal(seen["label_id"], [1, 3])
    np.testing.assert_array_equal(seen["skill_step"], [0, 5])
    np.testing.assert_allclose(
        seen["obs"], model.obs_encoder(batch["observation"], batch["language_embedding"]),
        rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("train", [True, False])
def test_sampler_stage_trains_on_standardised_codes_and_weights_the_terms(setup, train):
    model, config, codebook = setup
    batch = fake_batch(config, 4)
    seen = {}

    def loss(key, obs_tokens, x0, labels, *, train, skill_step=None):
        seen.update(x0=x0, labels=labels, train=train)
        return jnp.float32(2.0), jnp.float32(3.0), {}

    real, model.sampler.loss = model.sampler.loss, loss
    try:
        total, metrics = model.compute_loss(jax.random.key(0), batch, train=train, stage="sampler")
    finally:
        model.sampler.loss = real
    z_e = np.asarray(model.skill_encoder(batch["skill"]["actions"]), np.float64)
    mean, scale = _standardisation(codebook)
    np.testing.assert_allclose(seen["x0"], (codebook[_nearest(z_e, codebook)] - mean) / scale,
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(seen["labels"], batch["skill"]["label_id"])
    assert seen["train"] is train  # label dropout only while training
    assert float(total) == pytest.approx(0.5 * 2.0 + 4.0 * 3.0)
    assert float(metrics["loss"]) == float(total)
