"""The skill sampler's training loss against values computed by hand: the noised input
x_t = √ᾱ_t x0 + √(1-ᾱ_t) ε at uniformly drawn timesteps, the x0- or ε-target, label
dropout to the null label (exactly which positions, for a fixed key) and the label
head's cross-entropy and accuracy on the true labels.

The denoiser is stubbed (it records what it is given); the loss is called eagerly, so
the recorded inputs are concrete arrays. The reference draws follow the sampler's
key use in SkillSampler.loss: split(key, 3) -> (timesteps, noise, label dropout);
a change there must be mirrored here.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from atomskill_jax.methods.atomskill.config import tiny_model_config
from atomskill_jax.models.diffusion import SkillSampler, beta_schedule

B, N, T = 64, 2, 10  # one batch size: one set of kernels


def _sampler(**overrides):
    config = tiny_model_config()
    config.sampler.update(num_train_timesteps=T, beta_schedule="cosine", **overrides)
    return SkillSampler(config, rngs=nnx.Rngs(0)), config


def _inputs(config):
    b = B
    obs = jax.random.normal(jax.random.key(1), (b, 3, config.d_model))
    x0 = 1.5 + jax.random.normal(jax.random.key(2), (b, N, config.d_model))
    labels = jnp.arange(b, dtype=jnp.int32) % config.num_skill_labels
    return obs, x0, labels


def _recording_stub(seen):
    def denoise(x, t, pooled, labels):
        seen.update(x=np.asarray(x), t=np.asarray(t), pooled=np.asarray(pooled),
                    labels=np.asarray(labels))
        return x + 0.1  # a known function of the noised input
    return denoise


def _draws(key, b, shape, rate):
    t_key, noise_key, drop_key = jax.random.split(key, 3)
    t = np.asarray(jax.random.randint(t_key, (b,), 0, T))
    noise = np.asarray(jax.random.normal(noise_key, shape, jnp.float32), np.float64)
    dropped = np.asarray(jax.random.bernoulli(drop_key, rate, (b,))) if rate > 0 else None
    return t, noise, dropped


@pytest.mark.parametrize("prediction_type", ["sample", "epsilon"])
def test_diffusion_loss_is_the_mse_to_the_target_at_the_noised_input(prediction_type):
    sampler, config = _sampler(prediction_type=prediction_type, label_dropout=0.0)
    seen = {}
    sampler.denoise = _recording_stub(seen)
    obs, x0, labels = _inputs(config)
    key = jax.random.key(5)
    mse, _, metrics = sampler.loss(key, obs, x0, labels, train=True)

    t, noise, _ = _draws(key, B, x0.shape, 0.0)
    np.testing.assert_array_equal(seen["t"], t)
    assert set(t.tolist()) == set(range(T))  # 64 uniform draws over [0, T) hit every one
    ab = np.cumprod(1 - beta_schedule("cosine", T))[t][:, None, None]
    x_t = np.sqrt(ab) * np.asarray(x0, np.float64) + np.sqrt(1 - ab) * noise
    np.testing.assert_allclose(seen["x"], x_t, rtol=1e-5, atol=1e-5)
    target = np.asarray(x0, np.float64) if prediction_type == "sample" else noise
    expected = np.mean((x_t + 0.1 - target) ** 2)
    assert float(mse) == pytest.approx(expected, rel=1e-5)
    assert float(metrics["diffusion_mse"]) == float(mse)


@pytest.mark.parametrize("rate", [0.25, 0.5])
def test_label_dropout_replaces_exactly_the_drawn_positions_by_the_null_label(rate):
    sampler, config = _sampler(label_dropout=rate)
    seen = {}
    sampler.denoise = _recording_stub(seen)
    obs, x0, labels = _inputs(config)
    key = jax.random.key(9)
    sampler.loss(key, obs, x0, labels, train=True)
    _, _, dropped = _draws(key, B, x0.shape, rate)
    null = config.num_skill_labels
    np.testing.assert_array_equal(seen["labels"], np.where(dropped, null, labels))
    assert abs(dropped.mean() - rate) < 0.15  # about `rate` of them


@pytest.mark.parametrize("rate, train, dropped_fraction", [
    (0.0, True, 0.0), (1.0, True, 1.0), (1.0, False, 0.0)])
def test_label_dropout_extremes_and_evaluation(rate, train, dropped_fraction):
    sampler, config = _sampler(label_dropout=rate)
    seen = {}
    sampler.denoise = _recording_stub(seen)
    obs, x0, labels = _inputs(config)
    sampler.loss(jax.random.key(3), obs, x0, labels, train=train)
    null = config.num_skill_labels
    assert np.mean(seen["labels"] == null) == dropped_fraction
    if dropped_fraction == 0.0:
        np.testing.assert_array_equal(seen["labels"], labels)


def test_label_head_cross_entropy_uses_the_true_labels():
    # Every label is dropped for the denoiser; the label head still learns the real one.
    sampler, config = _sampler(label_dropout=1.0, condition_on_skill_step=True)
    seen = {}
    sampler.denoise = _recording_stub(seen)
    obs, x0, _ = _inputs(config)
    step = jnp.arange(B, dtype=jnp.int32)
    pooled = sampler.pool(obs, step)
    logits = np.asarray(sampler.label_logits(pooled), np.float64)
    best = logits.argmax(-1)
    num_labels = config.num_skill_labels
    labels = np.where(np.arange(B) < B // 2, best, (best + 1) % num_labels).astype(np.int32)
    _, ce, metrics = sampler.loss(jax.random.key(0), obs, x0, jnp.asarray(labels), train=True,
                                  skill_step=step)
    np.testing.assert_allclose(seen["pooled"], pooled, rtol=1e-6)  # pooled with the step
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    assert float(ce) == pytest.approx(-np.mean(log_probs[np.arange(B), labels]), rel=1e-5)
    assert float(metrics["label_ce"]) == float(ce)
    assert float(metrics["label_accuracy"]) == 0.5


def test_loss_without_a_skill_step_pools_as_at_a_skill_start():
    sampler, config = _sampler(label_dropout=0.0, condition_on_skill_step=True)
    seen = {}
    sampler.denoise = _recording_stub(seen)
    obs, x0, labels = _inputs(config)
    sampler.loss(jax.random.key(0), obs, x0, labels, train=False)
    np.testing.assert_allclose(seen["pooled"], sampler.pool(obs, jnp.zeros((B,), jnp.int32)),
                               rtol=1e-6)
