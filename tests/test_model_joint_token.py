"""observation.joint_low_dim_hidden: proprio, state and language read by one deep MLP
into one token, in place of the per-input proprio and state tokens."""

import numpy as np
import pytest
from flax import nnx

from atomskill_jax.methods.atomskill.config import tiny_model_config
from atomskill_jax.models.obs_encoders import ObservationEncoder


def _config(joint):
    c = tiny_model_config()
    c.cameras = ()
    c.observation.joint_low_dim_hidden = joint
    return c


def _inputs(seed=0, b=3):
    c = tiny_model_config()
    r = np.random.default_rng(seed)
    obs = {"proprio": r.normal(size=(b, c.proprio_dim)).astype(np.float32),
           "state": r.normal(size=(b, c.state_dim)).astype(np.float32)}
    return obs, r.normal(size=(b, c.language_dim)).astype(np.float32)


def test_joint_token_replaces_the_proprio_and_state_tokens():
    obs, lang = _inputs()
    per_input = ObservationEncoder(_config(()), rngs=nnx.Rngs(0))
    joint = ObservationEncoder(_config((24, 24)), rngs=nnx.Rngs(0))
    assert per_input(obs, lang).shape[1] == 3  # proprio, state, language
    assert joint(obs, lang).shape[1] == 2  # joint, language
    assert joint.proprio_mlp is None and joint.state_mlp is None
    assert len(joint.joint_mlp.layers) == 2


@pytest.mark.parametrize("field", ["proprio", "state", "language"])
def test_joint_token_reads_every_input(field):
    """Each input moves the joint token (and only it, apart from language's own token)."""
    enc = ObservationEncoder(_config((24,)), rngs=nnx.Rngs(0))
    obs, lang = _inputs()
    base = np.asarray(enc(obs, lang))
    if field == "language":
        lang = lang + 1.0
    else:
        obs = dict(obs, **{field: obs[field] + 1.0})
    moved = np.asarray(enc(obs, lang))
    assert np.abs(moved[:, 0] - base[:, 0]).max() > 1e-3
    if field != "language":
        np.testing.assert_allclose(moved[:, 1], base[:, 1], atol=1e-6)


def test_missing_state_is_named():
    enc = ObservationEncoder(_config((24,)), rngs=nnx.Rngs(0))
    obs, lang = _inputs()
    del obs["state"]
    with pytest.raises(KeyError, match="state"):
        enc(obs, lang)
