"""StateTokenizer (models/state_tokens.py): exact part slicing, shapes, the MetaWorld layout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from atomskill_jax.models.state_tokens import (METAWORLD_STATE_FIELDS, METAWORLD_STATE_PARTS,
                                               StateTokenizer, parts_for)

DIM = 8


def test_metaworld_layout_tiles_the_39_values():
    assert parts_for(39) == METAWORLD_STATE_PARTS and len(METAWORLD_STATE_PARTS) == 9
    for layout in (METAWORLD_STATE_FIELDS, METAWORLD_STATE_PARTS):
        ends = [(a, b) for _, a, b in layout]
        assert ends[0][0] == 0 and ends[-1][1] == 39
        assert all(b == a2 for (_, b), (a2, _) in zip(ends[:-1], ends[1:]))  # contiguous
    fields = dict((n, (a, b)) for n, a, b in METAWORLD_STATE_FIELDS)
    parts = dict((n, (a, b)) for n, a, b in METAWORLD_STATE_PARTS)
    assert parts["object1_pose"] == (fields["object1_pos"][0], fields["object1_quat"][1]) == (4, 11)
    assert parts["prev_object2_pose"] == (29, 36) and parts["goal"] == (36, 39)
    # The previous frame repeats the current frame's 18 values at offset 18.
    for name in ("hand", "gripper", "object1_pose", "object2_pose"):
        a, b = parts[name]
        assert parts["prev_" + name] == (a + 18, b + 18)


def test_generic_slices():
    assert parts_for(10, slice_size=4) == (("slice0", 0, 4), ("slice1", 4, 8), ("slice2", 8, 10))
    with pytest.raises(ValueError):
        parts_for(0)


def test_changing_one_part_changes_only_its_token():
    tok = StateTokenizer(METAWORLD_STATE_PARTS, DIM, rngs=nnx.Rngs(0))
    fn = jax.jit(lambda s: tok(s))
    state = jnp.asarray(np.random.default_rng(0).standard_normal((2, 39)), jnp.float32)
    base = np.asarray(fn(state))
    assert base.shape == (2, 9, DIM)
    for i, (name, a, b) in enumerate(METAWORLD_STATE_PARTS):
        out = np.asarray(fn(state.at[:, a:b].add(1.0)))
        changed = np.abs(out - base).max(axis=(0, 2)) > 0
        assert changed[i] and changed.sum() == 1, (name, changed)


def test_goal_only():
    tok = StateTokenizer(METAWORLD_STATE_PARTS, DIM, rngs=nnx.Rngs(1))
    state = jnp.zeros((1, 39))
    base = np.asarray(tok(state))
    out = np.asarray(tok(state.at[:, 36:39].set(0.5)))
    np.testing.assert_array_equal(out[:, :8], base[:, :8])
    assert np.abs(out[:, 8] - base[:, 8]).max() > 0
    # A zero part still gives distinct tokens (part embeddings), not all equal.
    assert np.abs(base[0, 2] - base[0, 3]).max() > 0


def test_shapes_with_proprio_and_history_axes():
    tok = StateTokenizer(parts_for(10, 4), DIM, rngs=nnx.Rngs(0), proprio_dim=3)
    out = tok(jnp.ones((2, 5, 10)), jnp.ones((2, 5, 3)))
    assert out.shape == (2, 5, 4, DIM) and tok.num_tokens == 4
    base = np.asarray(tok(jnp.ones((2, 10)), jnp.ones((2, 3))))
    moved = np.asarray(tok(jnp.ones((2, 10)), jnp.zeros((2, 3))))
    np.testing.assert_array_equal(moved[:, :3], base[:, :3])
    assert np.abs(moved[:, 3] - base[:, 3]).max() > 0
    with pytest.raises(ValueError, match="proprio"):
        tok(jnp.ones((2, 10)))
    with pytest.raises(ValueError, match="10"):
        tok(jnp.ones((2, 11)), jnp.ones((2, 3)))
    plain = StateTokenizer(parts_for(10, 4), DIM, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="proprio_dim=0"):
        plain(jnp.ones((2, 10)), jnp.ones((2, 3)))
