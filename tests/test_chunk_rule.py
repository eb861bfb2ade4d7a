"""Equation 2 of the AtomSkill paper: a chunk a[t:t+H-1] belongs to the skill of the
segment that contains it. With `decoder.chunk_rule="segment"` (the default) the decoder
learns, under step t's skill, only the chunk's steps up to the end of t's segment; with
"start" (before) the whole chunk, the next skill's actions included. Checked on a
hand-made episode: the masks, and the loss, which under "segment" does not see the next
skill's actions at all."""

import jax
import numpy as np
import pytest
from flax import nnx

from atomskill_jax.data.tf_setup import tf
from atomskill_jax.data.traj_transforms import training_steps

H, L = 4, 8
SEGMENTS = (3, 2, 6)  # steps per segment: the middle one is shorter than H


def _episode(actions: np.ndarray) -> dict:
    seg = np.concatenate([np.full(n, i) for i, n in enumerate(SEGMENTS)]).astype(np.int32)
    t = len(seg)
    r = np.random.default_rng(0)
    ends = np.cumsum(SEGMENTS) - 1
    return {"action": tf.constant(actions), "skill_segment": tf.constant(seg),
            "episode_index": tf.constant(0, tf.int64),
            "observation": {"state": tf.constant(r.normal(size=(t, 5)).astype(np.float32)),
                            "proprio": tf.constant(r.normal(size=(t, 6)).astype(np.float32)),
                            "image_front": tf.zeros((t, 32, 32, 3), tf.uint8)},
            "language_embedding": tf.constant(r.normal(size=(t, 8)).astype(np.float32)),
            "skill_label_id": tf.constant(seg),
            "keypose": tf.constant(actions[ends[seg]])}


def _batch(actions):
    out = training_steps(_episode(actions), dataset_index=0, horizon=H, resample_length=L)
    return jax.tree.map(lambda x: np.asarray(x), out)


def _model(rule: str):
    from atomskill_jax.methods.atomskill.config import tiny_model_config
    from atomskill_jax.methods.atomskill.model import AtomSkill

    m = tiny_model_config()
    m.horizon, m.skill_length, m.language_dim = H, L, 8
    m.decoder.chunk_rule = rule
    return AtomSkill(m, rngs=nnx.Rngs(0))


def test_the_segment_rule_masks_the_next_skills_steps():
    actions = np.arange(sum(SEGMENTS) * 4, dtype=np.float32).reshape(-1, 4)
    batch = _batch(actions)
    segment = np.asarray(_model("segment")._chunk_mask(batch))
    start = np.asarray(_model("start")._chunk_mask(batch))
    # Segment 0 = steps 0..2: at t=1 the chunk covers 1..4, of which 1, 2 are its own.
    assert segment[1].tolist() == [True, True, False, False]
    assert start[1].tolist() == [True, True, True, True]
    # Segment 1 (steps 3, 4) is shorter than H: at t=3 two steps count, at t=4 one.
    assert segment[3].tolist() == [True, True, False, False]
    assert segment[4].tolist() == [True, False, False, False]
    # Inside the last segment, the episode's end masks as before (both rules).
    assert segment[9].tolist() == start[9].tolist() == [True, True, False, False]
    assert segment[5].tolist() == start[5].tolist() == [True] * 4
    # Every step keeps at least its own action.
    assert segment[:, 0].all()


@pytest.mark.parametrize("rule,moves", [("segment", False), ("start", True)])
def test_the_next_skills_actions_reach_the_loss_only_under_the_start_rule(rule, moves):
    """Change only what lies past each step's segment (the chunk targets beyond the end
    of its segment): the segment rule's action loss does not move."""
    actions = np.random.default_rng(1).normal(size=(sum(SEGMENTS), 4)).astype(np.float32)
    batch = _batch(actions)
    model = _model(rule)
    changed = {**batch, "action_chunk": batch["action_chunk"].copy()}
    steps = batch["timestep"][:, None] + np.arange(H)[None, :]
    beyond = steps > batch["skill"]["end"][:, None]
    assert beyond.any()
    changed["action_chunk"][beyond] += 5.0

    @jax.jit
    def action_loss(graphdef, state, b):
        model = nnx.merge(graphdef, state)
        return model.compute_loss(jax.random.key(0), b, train=False, stage="skill")[1][
            "action_l1"]

    graphdef, state = nnx.split(model)
    before, after = (float(action_loss(graphdef, state, b)) for b in (batch, changed))
    assert (abs(after - before) > 1e-3) == moves, (before, after)


def test_an_unknown_rule_is_refused():
    with pytest.raises(ValueError, match="chunk_rule='middle'"):
        _model("middle")
