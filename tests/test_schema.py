"""The RLDS schema: validation names the episode and field at fault."""

import numpy as np
import pytest

from atomskill_jax.data import rlds_schema


def _episode(num_steps=5, spec=rlds_schema.EpisodeSpec(action_dim=4, proprio_dim=4, state_dim=39)):
    steps = {
        "observation": {"state": np.zeros((num_steps, 39)), "proprio": np.zeros((num_steps, 4))},
        "action": np.zeros((num_steps, 4)),
        "action_abs": np.zeros((num_steps, 4)),
        "reward": np.zeros(num_steps),
        "discount": np.ones(num_steps),
        "is_first": np.arange(num_steps) == 0,
        "is_last": np.arange(num_steps) == num_steps - 1,
        "is_terminal": np.zeros(num_steps, bool),
        "language_instruction": ["do it"] * num_steps,
        "language_embedding": np.zeros((num_steps, 384)),
    }
    return {"steps": steps, "episode_metadata": {"episode_id": "ep7", "task": "t"}}, spec


def test_valid_episode_passes():
    ep, spec = _episode()
    rlds_schema.validate_episode(ep, spec)


@pytest.mark.parametrize("mutate, field, words", [
    (lambda s: s["action"].__setitem__((2, 1), np.nan), "action", "non-finite"),
    (lambda s: s["action_abs"].__setitem__((0, 0), np.inf), "action_abs", "first at step 0"),
    (lambda s: s["observation"].__setitem__("state", np.zeros((5, 12))), "observation/state", "shape"),
    (lambda s: s.__setitem__("action", np.zeros((0, 4))), "action", "empty"),
    (lambda s: s.pop("reward"), "reward", "missing"),
])
def test_bad_fields_are_named(mutate, field, words):
    ep, spec = _episode()
    mutate(ep["steps"])
    with pytest.raises(rlds_schema.EpisodeError) as err:
        rlds_schema.validate_episode(ep, spec)
    assert err.value.field == field
    assert "ep7" in str(err.value) and words in str(err.value)
