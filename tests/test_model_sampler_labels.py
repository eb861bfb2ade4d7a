"""The skill sampler's label conditioning with the real (randomly initialised) UNet, on
the continuous output before any codebook snap: a given label changes the sample; the
predicted label is the label head's argmax; `label_source="none"` is the null-label
path whatever the label head says; guidance 0 and 1 are the null-label and the plain
conditional samples. Also the conditioning wiring (pool, denoise) and config defaults.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from atomskill_jax.methods.atomskill.config import tiny_model_config
from atomskill_jax.models.diffusion import SkillSampler
from atomskill_jax.models.layers import sinusoidal_embedding
from atomskill_jax.models.unet1d import mish

B, N = 4, 2


def _sampler(**overrides):
    config = tiny_model_config()
    config.sampler.update(overrides)
    return SkillSampler(config, rngs=nnx.Rngs(0)), config


@pytest.fixture(scope="module")
def predicted():
    """One sampler for the label-head tests: each structure compiles once."""
    return _sampler(label_source="predicted")


def _obs(config, seed=1):
    return jax.random.normal(jax.random.key(seed), (B, 3, config.d_model))


@nnx.jit(static_argnames=("guidance",))
def _sample(sampler, key, obs, label_id, guidance=1.0):
    return sampler.sample(key, obs, (B, N, sampler.d_model), num_steps=3, guidance=guidance,
                          label_id=label_id)


@nnx.jit(static_argnames=("guidance",))
def _sample_own_label(sampler, key, obs, guidance=1.0):
    return sampler.sample(key, obs, (B, N, sampler.d_model), num_steps=3, guidance=guidance)


def _push_label_head_to(sampler, label):
    """Make the label head predict `label` for every input (a large output bias)."""
    bias = np.zeros(sampler.label_head.fc2.bias.shape, np.float32)
    bias[label] = 1e4
    sampler.label_head.fc2.bias[...] = jnp.asarray(bias)


def test_a_given_label_changes_the_continuous_sample(predicted):
    sampler, config = predicted
    obs, key = _obs(config), jax.random.key(0)
    outs = [np.asarray(_sample(sampler, key, obs, jnp.full((B,), label, jnp.int32)))
            for label in (0, 1, config.num_skill_labels)]
    for i in range(3):
        for j in range(i):
            assert np.abs(outs[i] - outs[j]).max() > 1e-3, (i, j)
    # Per example: the label of example 0 does not leak into example 1.
    mixed = np.asarray(_sample(sampler, key, obs, jnp.array([0, 1, 0, 1], jnp.int32)))
    np.testing.assert_allclose(mixed[0::2], outs[0][0::2], atol=1e-5)
    np.testing.assert_allclose(mixed[1::2], outs[1][1::2], atol=1e-5)


def test_predicted_label_is_the_label_heads_argmax(predicted):
    sampler, config = predicted
    obs, key = _obs(config), jax.random.key(0)
    for label in (2, 5):
        _push_label_head_to(sampler, label)
        assert np.asarray(sampler.choose_labels(sampler.pool(obs))).tolist() == [label] * B
        np.testing.assert_allclose(_sample_own_label(sampler, key, obs),
                                   _sample(sampler, key, obs, jnp.full((B,), label, jnp.int32)),
                                   atol=1e-5)


def test_label_source_none_is_the_null_label_whatever_the_label_head_says():
    sampler, config = _sampler(label_source="none")
    obs, key = _obs(config), jax.random.key(0)
    null_label = config.num_skill_labels
    null = np.asarray(_sample(sampler, key, obs, jnp.full((B,), null_label, jnp.int32)))
    for label in (2, 5):
        _push_label_head_to(sampler, label)
        np.testing.assert_allclose(_sample_own_label(sampler, key, obs), null, atol=1e-5)
    assert np.asarray(sampler.choose_labels(sampler.pool(obs))).tolist() == [null_label] * B
    # Labels given explicitly still win (the caller asked for them).
    assert np.asarray(sampler.choose_labels(sampler.pool(obs), 3)).tolist() == [3] * B


def test_guidance_zero_is_the_null_label_sample(predicted):
    # The [conditional; null] batch: guidance 0 keeps only the null half. (The exact
    # u + s (c - u) is checked with a stub in test_model_sampler_ddim.)
    sampler, config = predicted
    obs, key = _obs(config), jax.random.key(0)
    null = jnp.full((B,), config.num_skill_labels, jnp.int32)
    np.testing.assert_allclose(_sample(sampler, key, obs, jnp.array([0, 1, 2, 3], jnp.int32),
                                       guidance=0.0),
                               _sample(sampler, key, obs, null), atol=1e-4)


def test_unknown_label_source_is_refused_by_name():
    with pytest.raises(ValueError, match="sampler.label_source.*'oracle'"):
        _sampler(label_source="oracle")


# -- conditioning wiring (a saved model's parameters keep their meaning) ------------

def test_denoise_is_the_unet_on_film_of_obs_label_and_time(predicted):
    sampler, config = predicted
    x = jax.random.normal(jax.random.key(3), (B, N, config.d_model))
    pooled = jax.random.normal(jax.random.key(4), (B, config.d_model))
    t = jnp.array([0, 3, 7, 9])
    labels = jnp.array([0, 2, 4, config.num_skill_labels])
    seen = {}

    def unet(x_in, cond):  # records what the UNet is given
        seen.update(x=x_in, cond=cond)
        return 2.0 * x_in

    time = sampler.time_mlp(sinusoidal_embedding(t, config.d_model))
    cond = jnp.concatenate([sampler.obs_cond(pooled), sampler.label_embed(labels), time], -1)
    real_unet, sampler.unet = sampler.unet, unet
    try:
        out = sampler.denoise(x, t, pooled, labels)
    finally:
        sampler.unet = real_unet
    np.testing.assert_allclose(seen["cond"], mish(cond), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(seen["x"], x)
    np.testing.assert_array_equal(out, 2.0 * x)


def test_pool_is_the_normed_attention_of_one_learned_query():
    sampler, config = _sampler(condition_on_skill_step=True, max_skill_step=8)
    obs = _obs(config)
    q = jnp.broadcast_to(sampler.pool_query[...], (B, 1, config.d_model))
    plain = sampler.pool_norm(sampler.pool_attn(q, obs, obs)[:, 0])
    step = jnp.array([0, 3, 8, 20])
    expected = plain + sampler.skill_step_proj(
        sinusoidal_embedding(jnp.minimum(step, 8), config.d_model))
    np.testing.assert_allclose(sampler.pool(obs, step), expected, rtol=1e-5, atol=1e-6)
    # The query starts small (0.02 x a standard normal from the first params key).
    np.testing.assert_allclose(sampler.pool_query[...],
                               0.02 * jax.random.normal(nnx.Rngs(0).params(), (1, config.d_model)),
                               rtol=1e-6)


def test_parameter_layout_follows_the_config():
    # What a saved checkpoint holds: widths from d_model, cond_dim, the label count (+1:
    # the null label), the label-head width, the UNet multipliers and kernel.
    sampler, config = _sampler(cond_dim=24, label_head_hidden=40, unet_channel_mults=(1, 2),
                               unet_kernel=5, condition_on_skill_step=True)
    d, labels = config.d_model, config.num_skill_labels
    shapes = {p: v[...].shape for p, v in nnx.to_flat_state(nnx.state(sampler, nnx.Param))}
    expected = {
        ("pool_query",): (1, d),
        ("obs_cond", "kernel"): (d, 24),
        ("label_embed", "embedding"): (labels + 1, 24),
        ("time_mlp", "fc1", "kernel"): (d, 4 * d),
        ("time_mlp", "fc2", "kernel"): (4 * d, 24),
        ("label_head", "fc1", "kernel"): (d, 40),
        ("label_head", "fc2", "kernel"): (40, labels),
        ("skill_step_proj", "kernel"): (d, d),
        ("unet", "down", 0, 0, "film", "kernel"): (3 * 24, 2 * d),  # FiLM of [obs, label, time]
        ("unet", "down", 1, 0, "film", "kernel"): (3 * 24, 2 * 2 * d),
        ("unet", "down", 0, 0, "block1", "conv", "kernel"): (5, d, d),
        ("unet", "final", "kernel"): (1, d, d),
    }
    assert {p: shapes.get(p) for p in expected} == expected


def test_configs_without_the_newer_sampler_keys_get_the_old_behaviour():
    config = tiny_model_config()
    for key in ("prediction_type", "clip_x0", "condition_on_skill_step", "max_skill_step"):
        del config.sampler[key]
    sampler = SkillSampler(config, rngs=nnx.Rngs(0))
    assert sampler.prediction_type == "epsilon"  # DDPM's choice, before the option existed
    assert sampler.clip_x0 == 0.0 and sampler.skill_step_proj is None
    assert sampler.max_skill_step == 64
