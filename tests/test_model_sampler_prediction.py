"""The sampler's prediction type: with x0-prediction, DDIM returns the model's x0 (a
denoiser that knows the answer yields exactly it, whatever the noise), and the loss
targets x0; with ε-prediction the loss targets the noise. Unknown types are refused."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from atomskill_jax.methods.atomskill.config import tiny_model_config
from atomskill_jax.models.diffusion import SkillSampler


def _sampler(prediction_type, **overrides):
    config = tiny_model_config()
    config.sampler.prediction_type = prediction_type
    config.sampler.update(overrides)
    return SkillSampler(config, rngs=nnx.Rngs(0)), config


def test_ddim_with_an_exact_x0_predictor_returns_that_x0():
    sampler, config = _sampler("sample", clip_x0=0.0, num_train_timesteps=50, ddim_steps=7)
    target = jax.random.normal(jax.random.key(3), (4, 2, config.d_model))
    sampler.denoise = lambda x, t, pooled, labels: jnp.broadcast_to(target, x.shape)
    obs = jax.random.normal(jax.random.key(1), (4, 3, config.d_model))
    for seed in (0, 1):
        out = sampler.sample(jax.random.key(seed), obs, target.shape)
        assert jnp.allclose(out, target, atol=1e-4)


def test_ddim_with_an_exact_eps_predictor_recovers_x0():
    # x_T is pure noise ε; a denoiser that returns the ε consistent with a fixed x0 at every
    # step walks DDIM (η=0) back to that x0.
    sampler, config = _sampler("epsilon", clip_x0=0.0, num_train_timesteps=50, ddim_steps=50,
                               beta_schedule="linear")
    target = jax.random.normal(jax.random.key(3), (2, 2, config.d_model))
    ab = sampler.alphas_cumprod()

    def exact_eps(x, t, pooled, labels):
        a = ab[t][:, None, None]
        return (x - jnp.sqrt(a) * target) / jnp.sqrt(1 - a)

    sampler.denoise = exact_eps
    obs = jnp.zeros((2, 3, config.d_model))
    out = sampler.sample(jax.random.key(0), obs, target.shape)
    assert jnp.allclose(out, target, atol=1e-3)


@pytest.mark.parametrize("prediction_type", ["sample", "epsilon"])
def test_loss_targets_follow_the_prediction_type(prediction_type):
    sampler, config = _sampler(prediction_type, label_dropout=0.0)
    x0 = 3.0 + jax.random.normal(jax.random.key(3), (8, 2, config.d_model))  # far from noise
    obs = jax.random.normal(jax.random.key(1), (8, 3, config.d_model))
    labels = jnp.zeros((8,), jnp.int32)
    sampler.denoise = lambda x, t, pooled, lab: jnp.broadcast_to(x0, x.shape)  # "predicts" x0
    mse, _, _ = sampler.loss(jax.random.key(0), obs, x0, labels, train=True)
    if prediction_type == "sample":
        assert float(mse) < 1e-10
    else:
        assert float(mse) > 5.0  # x0 is not the noise


def test_unknown_prediction_type_is_refused():
    with pytest.raises(ValueError, match="prediction_type"):
        _sampler("v")


def test_skill_step_conditioning_reaches_the_pooled_features():
    sampler, config = _sampler("sample", condition_on_skill_step=True, max_skill_step=8)
    obs = jax.random.normal(jax.random.key(1), (3, 3, config.d_model))
    at_start = sampler.pool(obs)  # sampling: no step given = a skill's first step
    assert jnp.allclose(at_start, sampler.pool(obs, jnp.zeros((3,), jnp.int32)))
    later = sampler.pool(obs, jnp.array([0, 4, 8]))
    assert jnp.allclose(later[0], at_start[0])
    assert not jnp.allclose(later[1], at_start[1], atol=1e-4)
    assert jnp.allclose(sampler.pool(obs, jnp.array([0, 4, 50]))[2], later[2])  # clipped at 8
    plain, _ = _sampler("sample", condition_on_skill_step=False)
    assert jnp.allclose(plain.pool(obs, jnp.array([0, 4, 8])), plain.pool(obs))


def test_sampler_stage_feeds_steps_since_the_skill_began():
    from atomskill_jax.methods.atomskill.model import AtomSkill, fake_batch

    config = tiny_model_config()
    config.sampler.condition_on_skill_step = True
    batch = fake_batch(config, 4)

    # Traced once under jit (run eagerly, the model's construction and loss dispatched
    # ~15 s of one-op programs); the spy returns what the loss was given, so the compiled
    # program keeps only that and XLA drops the rest. The Python the spy sees is the same.
    @jax.jit
    def skill_steps_given(batch):
        model = AtomSkill(config, rngs=nnx.Rngs(0))
        seen = []
        original = model.sampler.loss

        def spy(*args, skill_step=None, **kwargs):
            seen.append(skill_step)
            return original(*args, skill_step=skill_step, **kwargs)

        model.sampler.loss = spy
        model.compute_loss(jax.random.key(0), batch, train=False, stage="sampler")
        return seen

    seen = skill_steps_given(batch)
    expected = batch["timestep"] - batch["skill"]["start"]
    assert seen and jnp.array_equal(seen[0], expected)
    assert int(jnp.max(expected)) > 0  # the fake batch has examples past a skill's start
