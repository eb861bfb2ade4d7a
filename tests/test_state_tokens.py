"""State tokens (models/state_tokens.py): exact part slicing and shapes."""

import numpy as np
from flax import nnx

from atomskill_jax.models.state_tokens import METAWORLD_STATE_PARTS, StateTokenizer, parts_for


def test_metaworld_parts_cover_the_39_values_once():
    covered = sorted(i for _, a, b in METAWORLD_STATE_PARTS for i in range(a, b))
    assert covered == list(range(39)) and parts_for(39) == METAWORLD_STATE_PARTS
    assert [p[0] for p in parts_for(10, slice_size=4)] == ["slice0", "slice1", "slice2"]


def test_changing_only_the_goal_changes_only_the_goal_token():
    tok = StateTokenizer(METAWORLD_STATE_PARTS, 8, rngs=nnx.Rngs(0), proprio_dim=4)
    s = np.random.default_rng(0).normal(size=(2, 39)).astype(np.float32)
    p = np.zeros((2, 4), np.float32)
    a = np.asarray(tok(s, p))
    s2 = s.copy()
    s2[:, 36:39] += 1.0
    b = np.asarray(tok(s2, p))
    assert a.shape == (2, 10, 8)
    changed = np.abs(a - b).sum(axis=(0, 2)) > 0
    assert changed.tolist() == [False] * 8 + [True, False]  # goal is part 8; proprio last
