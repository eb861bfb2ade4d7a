"""DDIM sampling of the skill sampler against values computed by hand.

The denoiser is stubbed by a known function of (x, t, labels), so the sampler's output
before the nearest-code snap has a closed form: the noise schedule, the DDIM update
(x0- and ε-prediction, the x0 clip, η > 0 with its σ_t) and classifier-free guidance
are each checked exactly. The reference below is written from the DDIM paper
(Song et al. 2021, eq. 12 and 16) in float64, independently of the sampler's code.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from atomskill_jax.methods.atomskill.config import tiny_model_config
from atomskill_jax.models.diffusion import SkillSampler, beta_schedule, ddim_timesteps

B, N = 3, 2


def _sample(sampler, *args, **kwargs):
    # A stubbed chain is a few tiny ops: run it op by op (cached kernels) rather than
    # compile a new scan for every stub and step count.
    with jax.disable_jit():
        return sampler.sample(*args, **kwargs)


def _sampler(**overrides):
    config = tiny_model_config()
    config.sampler.update(overrides)
    return SkillSampler(config, rngs=nnx.Rngs(0)), config


def _obs(config):
    return jax.random.normal(jax.random.key(1), (B, 3, config.d_model))


def _draws(key, shape, num_steps):
    """The sampler's random draws: x_T from the first half of `key`, one normal per DDIM
    step from the second (how SkillSampler.sample splits its key; a change
    there must be mirrored here)."""
    noise_key, step_key = jax.random.split(key)
    x_t = np.asarray(jax.random.normal(noise_key, shape, jnp.float32), np.float64)
    zs = [np.asarray(jax.random.normal(k, shape), np.float64)
          for k in jax.random.split(step_key, num_steps)]
    return x_t, zs


def _reference(x, zs, steps, betas, out_fn, *, prediction, eta, clip):
    """DDIM by hand: x_t' = √ᾱ' x̂0 + √(1-ᾱ'-σ²) ε̂ + σ z; ᾱ' = 1 after the last step."""
    ab = np.cumprod(1.0 - np.asarray(betas, np.float64))
    for i, t in enumerate(steps):
        a_t = ab[t]
        a_prev = ab[steps[i + 1]] if i + 1 < len(steps) else 1.0
        out = out_fn(x, t)
        x0 = out if prediction == "sample" else (x - math.sqrt(1 - a_t) * out) / math.sqrt(a_t)
        if clip > 0:
            x0 = np.clip(x0, -clip, clip)
        eps = (x - math.sqrt(a_t) * x0) / math.sqrt(1 - a_t)
        sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t)) * math.sqrt(1 - a_t / a_prev)
        x = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev - sigma ** 2) * eps + sigma * zs[i]
    return x


# -- noise schedule and timesteps ---------------------------------------------------

def test_linear_beta_schedule_is_ddpm_scaled_to_the_number_of_steps():
    np.testing.assert_allclose(beta_schedule("linear", 1000), np.linspace(1e-4, 0.02, 1000))
    # T=10: endpoints x100, the end capped at 0.999 (β=2 would make ᾱ negative).
    np.testing.assert_allclose(beta_schedule("linear", 10), np.linspace(0.01, 0.999, 10))
    np.testing.assert_allclose(beta_schedule("linear", 100, 2e-4, 0.01),
                               np.linspace(2e-3, 0.1, 100))


def test_cosine_beta_schedule_follows_nichol_and_dhariwal():
    T, s = 10, 0.008
    f = np.cos((np.arange(T + 1) / T + s) / (1 + s) * np.pi / 2) ** 2
    expected = np.minimum(1 - f[1:] / f[:-1], 0.999)
    np.testing.assert_allclose(beta_schedule("cosine", T), expected, rtol=1e-12)
    assert beta_schedule("cosine", T)[-1] == 0.999  # f(T) = 0: capped
    sampler, _ = _sampler(beta_schedule="cosine", num_train_timesteps=T)
    np.testing.assert_allclose(sampler.alphas_cumprod(), np.cumprod(1 - expected), rtol=1e-5,
                               atol=1e-8)


def test_unknown_beta_schedule_is_refused_by_name():
    with pytest.raises(ValueError, match="sampler.beta_schedule.*'sigmoid'"):
        beta_schedule("sigmoid", 10)


def test_ddim_timesteps_descend_from_the_last_to_zero():
    assert ddim_timesteps(10, 3).tolist() == [9, 4, 0]  # round(4.5) = 4
    assert ddim_timesteps(50, 5).tolist() == [49, 37, 24, 12, 0]
    assert ddim_timesteps(5, 10).tolist() == [4, 3, 2, 1, 0]  # at most T distinct steps
    # One step starts from pure noise too (it used to be t=0: noise taken as clean).
    assert ddim_timesteps(10, 1).tolist() == [9]
    assert ddim_timesteps(10, 0).tolist() == [9]  # at least one


# -- the DDIM update ----------------------------------------------------------------

def _stub_sample(x, t):
    return 0.5 * x + 0.05 * t  # depends on x and t, so every step shows in the result


def _stub_eps(x, t):
    return 0.3 * x - 0.05 * t


X0 = dict(prediction_type="sample", beta_schedule="cosine", clip_x0=0.0)
EPS = dict(prediction_type="epsilon", beta_schedule="linear", clip_x0=1.0)  # x̂0 clipped to ±1
CASES = {  # name: (sampler overrides, the stub, eta)
    "x0": (X0, _stub_sample, 0.0),
    "x0_eta": (X0, _stub_sample, 0.7),
    "eps_clip": (EPS, _stub_eps, 0.0),
    "eps_clip_eta1": (EPS, _stub_eps, 1.0),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("num_steps", [1, 3, 10])
def test_ddim_chain_matches_the_closed_form(case, num_steps):
    overrides, stub, eta = CASES[case]
    sampler, config = _sampler(num_train_timesteps=10, ddim_eta=eta, **overrides)
    sampler.denoise = lambda x, t, pooled, labels: stub(x, t[:, None, None].astype(jnp.float32))
    shape = (B, N, config.d_model)
    key = jax.random.key(7)
    out = _sample(sampler, key, _obs(config), shape, num_steps=num_steps)
    steps = ddim_timesteps(10, num_steps)
    x_t, zs = _draws(key, shape, len(steps))
    betas = beta_schedule(overrides["beta_schedule"], 10)  # from the name, not the sampler
    expected = _reference(x_t, zs, steps, betas, stub, prediction=overrides["prediction_type"],
                          eta=eta, clip=overrides["clip_x0"])
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    if overrides["clip_x0"] > 0:  # the last step returns the clipped x̂0
        assert float(jnp.abs(out).max()) <= overrides["clip_x0"] + 1e-6


def test_two_ddim_steps_written_out():
    # T=10, 2 steps: t = 9 then t = 0. x0-prediction, η = 0.5, stub x̂0 = 0.5 x + 0.05 t.
    sampler, config = _sampler(num_train_timesteps=10, prediction_type="sample", clip_x0=0.0,
                               beta_schedule="cosine", ddim_eta=0.5)
    sampler.denoise = lambda x, t, pooled, labels: _stub_sample(x, t[:, None, None])
    shape = (B, N, config.d_model)
    out = _sample(sampler, jax.random.key(3), _obs(config), shape, num_steps=2)
    x9, (z9, _) = _draws(jax.random.key(3), shape, 2)
    ab = np.cumprod(1 - beta_schedule("cosine", 10))
    x0 = 0.5 * x9 + 0.45
    eps = (x9 - np.sqrt(ab[9]) * x0) / np.sqrt(1 - ab[9])
    # σ² = η² (1-ᾱ')/(1-ᾱ) (1-ᾱ/ᾱ'), ᾱ = ᾱ_9, ᾱ' = ᾱ_0
    var = 0.25 * (1 - ab[0]) / (1 - ab[9]) * (1 - ab[9] / ab[0])
    x0_step = np.sqrt(ab[0]) * x0 + np.sqrt(1 - ab[0] - var) * eps + np.sqrt(var) * z9
    np.testing.assert_allclose(out, 0.5 * x0_step, rtol=1e-4, atol=1e-5)  # last: x = x̂0(t=0)


def test_default_steps_and_eta_come_from_the_config():
    sampler, config = _sampler(num_train_timesteps=10, ddim_steps=3, ddim_eta=0.0,
                               prediction_type="sample", clip_x0=0.0)
    sampler.denoise = lambda x, t, pooled, labels: _stub_sample(x, t[:, None, None])
    shape = (B, N, config.d_model)
    out = _sample(sampler, jax.random.key(5), _obs(config), shape)
    np.testing.assert_allclose(out, _sample(sampler, jax.random.key(5), _obs(config), shape,
                                                   num_steps=3), rtol=1e-6)
    assert not np.allclose(out, _sample(sampler, jax.random.key(5), _obs(config), shape,
                                               num_steps=2), atol=1e-3)


def test_eta_adds_noise_to_the_same_start():
    # One key: the same x_T. η = 0 and η = 1 differ only by the per-step noise σ_t z.
    outs = []
    for eta in (0.0, 1.0):
        sampler, config = _sampler(num_train_timesteps=10, ddim_eta=eta, prediction_type="sample",
                                   clip_x0=0.0)
        sampler.denoise = lambda x, t, pooled, labels: _stub_sample(x, t[:, None, None])
        outs.append(_sample(sampler, jax.random.key(11), _obs(config), (B, N, config.d_model),
                                   num_steps=3))
    assert not np.allclose(outs[0], outs[1], atol=1e-3)


# -- classifier-free guidance -------------------------------------------------------

COND, UNCOND = 2.0, -1.0


def _guidance_stub(sampler, seen):
    """x̂0 = 0.5 x + (COND + 0.5 label for a label, UNCOND for the null label)."""
    null = sampler.num_labels

    def denoise(x, t, pooled, labels):
        seen.append((x.shape[0], np.asarray(labels).tolist()))
        offset = jnp.where(labels == null, UNCOND, COND + 0.5 * labels)
        return 0.5 * x + offset[:, None, None]

    return denoise


@pytest.mark.parametrize("scale", [0.0, 3.0, -0.5])
def test_guidance_extrapolates_from_unconditional_to_conditional(scale):
    # One DDIM step (t=T-1 -> clean) returns x̂0 itself: u + s (c - u) exactly.
    sampler, config = _sampler(prediction_type="sample", clip_x0=0.0)
    seen = []
    sampler.denoise = _guidance_stub(sampler, seen)
    labels = np.array([0, 1, 3])
    shape = (B, N, config.d_model)
    out = _sample(sampler, jax.random.key(2), _obs(config), shape, num_steps=1, guidance=scale,
                  label_id=labels)
    x_t, _ = _draws(jax.random.key(2), shape, 1)
    cond = 0.5 * x_t + (COND + 0.5 * labels)[:, None, None]
    uncond = 0.5 * x_t + UNCOND
    np.testing.assert_allclose(out, uncond + scale * (cond - uncond), rtol=1e-5, atol=1e-5)
    # One UNet pass over [conditional; null-label] copies of the batch.
    assert seen == [(2 * B, labels.tolist() + [sampler.num_labels] * B)]


def test_guidance_over_several_steps_and_from_the_config():
    sampler, config = _sampler(prediction_type="sample", clip_x0=0.0, guidance_scale=2.5,
                               num_train_timesteps=10, ddim_eta=0.3)
    sampler.denoise = _guidance_stub(sampler, [])
    labels = np.array([2, 0, 1])
    shape = (B, N, config.d_model)
    out = _sample(sampler, jax.random.key(4), _obs(config), shape, num_steps=3, label_id=labels)

    def guided(x, t):
        cond, uncond = 0.5 * x + (COND + 0.5 * labels)[:, None, None], 0.5 * x + UNCOND
        return uncond + 2.5 * (cond - uncond)

    steps = ddim_timesteps(10, 3)
    x_t, zs = _draws(jax.random.key(4), shape, len(steps))
    expected = _reference(x_t, zs, steps, beta_schedule("cosine", 10), guided,
                          prediction="sample", eta=0.3, clip=0.0)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_guidance_one_is_a_single_conditional_pass():
    sampler, config = _sampler(prediction_type="sample", clip_x0=0.0)
    seen = []
    sampler.denoise = _guidance_stub(sampler, seen)
    labels = np.array([1, 1, 2])
    shape = (B, N, config.d_model)
    out = _sample(sampler, jax.random.key(2), _obs(config), shape, num_steps=1, guidance=1.0,
                  label_id=labels)
    x_t, _ = _draws(jax.random.key(2), shape, 1)
    np.testing.assert_allclose(out, 0.5 * x_t + (COND + 0.5 * labels)[:, None, None], rtol=1e-5,
                               atol=1e-5)
    assert seen == [(B, labels.tolist())]
