"""The USR policy runtime (methods/usr/policy.py) on a fresh tiny model with fake assets."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from atomskill_jax.data.normalization import FieldStatistics
from atomskill_jax.methods import registry
from atomskill_jax.methods.usr.model import code_vectors
from atomskill_jax.policies.base import TaskInfo
from configs.usr import get_config

SPEC = registry.spec_by_name("usr")


def field(dim, mean, std):
    mean, std = np.full(dim, mean, np.float32), np.full(dim, std, np.float32)
    return FieldStatistics(mean=mean, std=std, min=mean - 3 * std, max=mean + 3 * std,
                           p01=mean - 2 * std, p99=mean + 2 * std).to_json()


def fake_assets(c):
    fields = {"observation/state": field(39, 0.5, 2.0), "observation/proprio": field(4, 0.5, 2.0),
              "action": field(4, 0.1, 0.5), "action_abs": field(4, 0.0, 1.0)}
    stats = {"format_version": 1, "split": "train", "num_episodes": 2, "num_steps": 20,
             "fingerprint": {}, "fields": fields}
    return {"config": json.loads(c.to_json_best_effort()), "statistics": [stats],
            "datasets": ["fake"]}


def observation(rng, lang):
    state = rng.normal(size=(2, 39)).astype(np.float32)
    return {"state": state, "proprio": state[:, :4].copy(), "language_embedding": lang}


TASKS = [TaskInfo(task="reach", instruction="reach", layout=0),
         TaskInfo(task="push", instruction="push", layout=1)]


def test_history_padding_shapes_and_reset():
    c = get_config("tiny")
    model = SPEC.create(c, nnx.Rngs(0))
    policy = SPEC.make_policy(model, fake_assets(c), {"requery_every": 2})
    assert policy.spec.action_dim == 4 and "state" in policy.spec.observation_keys
    rng = np.random.default_rng(0)
    lang = rng.normal(size=(2, int(c.model.language_dim))).astype(np.float32)
    policy.reset(TASKS)
    obs = [observation(rng, lang) for _ in range(5)]
    a = policy.infer(obs[0])
    assert a.shape == (2, 4) and np.isfinite(a).all()
    L = int(c.model.history)
    norm0 = (obs[0]["state"] - 0.5) / 2.0
    h = policy.history["state"]
    assert h.shape == (2, L, 39)
    for i in range(L):  # the first step repeats the first observation, as training pads
        np.testing.assert_allclose(h[:, i], norm0, rtol=1e-6)
    for o in obs[1:]:
        assert policy.infer(o).shape == (2, 4)
    h = policy.history["state"]
    for i in range(L):  # the newest frame last
        np.testing.assert_allclose(h[:, i], (obs[5 - L + i]["state"] - 0.5) / 2.0, rtol=1e-6)
    policy.reset(TASKS)  # a new episode forgets the old history
    policy.infer(obs[4])
    np.testing.assert_allclose(policy.history["state"][:, 0], (obs[4]["state"] - 0.5) / 2.0,
                               rtol=1e-6)


def test_the_priors_code_drives_the_policy():
    c = get_config("tiny")
    rng = np.random.default_rng(1)
    lang = rng.normal(size=(2, int(c.model.language_dim))).astype(np.float32)
    obs = observation(rng, lang)
    actions = {}
    for forced in (1, 5):
        model = SPEC.create(c, nnx.Rngs(0))
        bias = np.zeros(int(c.model.num_codes), np.float32)
        bias[forced] = 1e4  # the prior now always picks code `forced`
        model.stage2.prior.head.bias.set_value(jnp.asarray(bias))
        policy = SPEC.make_policy(model, fake_assets(c), {})
        policy.reset(TASKS)
        actions[forced] = policy.infer(obs)
        np.testing.assert_array_equal(policy.last_codes, [forced, forced])
        # The action is the Gaussian mean's first step given that code, unnormalised.
        hist = jax.tree.map(jnp.asarray, policy.history)
        tokens, _ = model.stage2.history(hist, jnp.asarray(lang))
        z = code_vectors(model.stage1.codebook, model.num_codes, model.code_dim)[
            jnp.full(2, forced)]
        mean, _ = model.stage2.policy(tokens, z)
        np.testing.assert_allclose(actions[forced], np.asarray(mean)[:, 0] * 0.5 + 0.1,
                                   rtol=1e-4, atol=1e-5)
    assert not np.allclose(actions[1], actions[5])


def test_unknown_option_and_missing_key_are_refused():
    c = get_config("tiny")
    model = SPEC.create(c, nnx.Rngs(0))
    with pytest.raises(ValueError, match="unknown runtime options.*resample_every"):
        SPEC.make_policy(model, fake_assets(c), {"resample_every": 3})
    with pytest.raises(ValueError, match="requery_every"):
        SPEC.make_policy(model, fake_assets(c), {"requery_every": 0})
    policy = SPEC.make_policy(model, fake_assets(c), {"name": "x", "seed": 3})
    assert policy.spec.name == "x"
    policy.reset(TASKS)
    with pytest.raises(KeyError, match="state"):
        policy.infer({"proprio": np.zeros((2, 4), np.float32),
                      "language_embedding": np.zeros((2, 8), np.float32)})
    assert SPEC.resolve_options(c, {"ensemble_m": "off"}) == {"requery_every": 1,
                                                              "ensemble_m": None}
