"""Skill-token corruption (training ψ on partly wrong skills): each token is replaced by
a codebook vector at the configured rate, only in training, and 0 changes nothing."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from atomskill_jax.methods.atomskill.model import AtomSkill, fake_batch
from atomskill_jax.methods.atomskill.config import tiny_model_config


def _model(rate):
    config = tiny_model_config()
    config.decoder.skill_token_corruption = rate
    return AtomSkill(config, rngs=nnx.Rngs(0)), config


def _is_codebook_row(tokens, codebook):
    dist = ((np.asarray(tokens)[..., None, :] - np.asarray(codebook)) ** 2).sum(-1)
    return dist.min(-1) < 1e-10


def test_corruption_rate_replaces_tokens_by_codes():
    model, config = _model(0.5)
    codebook = model.vq.codebook[...]
    tokens = 5.0 + jax.random.normal(jax.random.key(0), (400, 4, config.d_model))  # off-book
    out = model._corrupt_tokens(jax.random.key(1), tokens)
    replaced = _is_codebook_row(out, codebook)
    kept = np.all(np.asarray(out) == np.asarray(tokens), axis=-1)
    assert np.all(replaced | kept) and not np.any(replaced & kept)
    assert 0.45 < replaced.mean() < 0.55
    model.token_corruption = 1.0
    assert _is_codebook_row(model._corrupt_tokens(jax.random.key(1), tokens), codebook).all()


@nnx.jit(static_argnames="train")
def _action_l1(model, key, batch, train):
    # jitted: the eager loss dispatched (and compiled) each of its ops on its own
    return model.compute_loss(key, batch, train=train)[1]["action_l1"]


def test_corruption_only_in_training():
    batch = fake_batch(tiny_model_config(), 4)
    clean, noisy = _model(0.0)[0], _model(0.9)[0]  # same seed: same parameters
    fresh = {"clean": nnx.clone(clean), "noisy": nnx.clone(noisy)}  # training updates state
    key = jax.random.key(0)
    loss_eval = [_action_l1(m, key, batch, False) for m in (clean, noisy)]
    assert jnp.allclose(loss_eval[0], loss_eval[1])
    loss_train = [_action_l1(fresh[n], key, batch, True) for n in ("clean", "noisy")]
    assert not jnp.allclose(loss_train[0], loss_train[1])


def test_corruption_outside_0_1_is_refused():
    import pytest

    with pytest.raises(ValueError, match="skill_token_corruption"):
        _model(1.5)
