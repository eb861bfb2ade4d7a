"""Rule annotation, vocabulary and the per-step skill fields."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from atomskill_jax.data import rlds_schema
from atomskill_jax.skills import vocabulary
from atomskill_jax.skills.annotate import (annotate_arrays, annotate_episode, make_annotator,
                                           segment_infos, skill_step_fields)
from atomskill_jax.skills.keyframes import segment_episode
from atomskill_jax.skills.types import SkillAnnotation

SAWYER = "metaworld_sawyer"
# MetaWorld experts ask for more than [-1, 1]; the env clips, as intended.
pytestmark = pytest.mark.filterwarnings("ignore:Constant.*may be too high")


@functools.lru_cache(maxsize=None)
def rollout(task: str, layout: int = 0):
    mw = pytest.importorskip("atomskill_jax.envs.metaworld")
    return mw.rollout_expert(task, layout, seed=0, max_steps=200, post_success_steps=5)


def instruction(task: str) -> str:
    from atomskill_jax.envs.metaworld_tasks import instruction as instr
    return instr(task)


def test_vocabulary_is_stable():
    # Ids are stored in datasets: the first entries must never move.
    assert vocabulary.LABELS[:6] == ("grasp", "place", "lift", "insert", "retreat", "reach")
    assert len(set(vocabulary.LABELS)) == len(vocabulary.LABELS)
    assert vocabulary.label_id("place") == 1
    with pytest.raises(KeyError, match="not a canonical skill label"):
        vocabulary.label_id("dance")
    # No synonym is claimed by two skills.
    seen = {}
    for s in vocabulary.VOCABULARY:
        for p in (s.label, *s.synonyms):
            assert seen.setdefault(vocabulary.normalize(p), s.label) == s.label, p


@pytest.mark.slow
@pytest.mark.parametrize("task,layout,expected", [
    ("pick-place", 0, [("close", "grasp"), ("end", "place")]),
    ("shelf-place", 0, [("close", "grasp"), ("end", "place")]),
    ("pick-out-of-hole", 0, [("close", "grasp"), ("end", "lift")]),
    ("box-close", 0, [("close", "grasp"), ("open", "place"), ("end", "retreat")]),
    ("sweep-into", 0, [("close", "grasp"), ("end", "sweep")]),
    ("sweep-into", 1, [("end", "sweep")]),  # closes around the puck from step 0
    ("drawer-close", 0, [("end", "close")]),
])
def test_rule_labels_on_metaworld_experts(task, layout, expected):
    ep = rollout(task, layout)
    result = annotate_arrays(ep["action"], ep["action_abs"], ep["proprio"], SAWYER, "rule",
                             episode_id=f"{task}/{layout}", task=task,
                             instruction=instruction(task))
    got = [(ev, a.label) for ev, a in zip(result.segmentation.events, result.annotations)]
    assert got == expected
    assert all(a.source == "rule" for a in result.annotations)
    descriptions = [a.description for a in result.annotations]
    if len(expected) == 1:
        assert descriptions == [instruction(task)]
    else:
        assert all(instruction(task) in d for d in descriptions)
        assert descriptions[0].startswith("reach for the object and grasp it")
    assert result.metadata == {"num_skills": len(expected), "annotator": "rule"}


def _segments(action, proprio, task, instr, embodiment=SAWYER):
    seg = segment_episode(action, proprio, embodiment)
    return seg, segment_infos(seg, action_abs=action, proprio=proprio, episode_id="e",
                              task=task, instruction=instr, embodiment=embodiment)


def _labels(action, proprio, task, instr, embodiment=SAWYER):
    _, infos = _segments(action, proprio, task, instr, embodiment)
    return [a.label for a in make_annotator("rule").annotate(infos)]


@pytest.mark.parametrize("task,instr,label", [
    ("drawer-close", "push the drawer closed", "close"),
    ("window-open", "push the window open", "open"),
    ("faucet-open", "rotate the faucet handle to open it", "turn"),
    ("coffee-button", "push the button on the coffee machine", "press"),
    ("lever-pull", "pull the lever up", "pull"),
    ("coffee-push", "push the mug under the coffee machine", "push"),
    ("reach", "reach the goal", "reach"),
])
def test_no_grasp_labels_from_task_words(task, instr, label):
    action = np.ones((50, 4))  # constant gripper: one skill
    assert _labels(action, None, task, instr) == [label]


@pytest.mark.parametrize("direction,label", [
    ((0.0, 0.0, -0.1), "press"), ((0.15, 0.0, 0.0), "push"), ((0.0, 0.0, 0.0), "reach"),
])
def test_no_grasp_labels_from_motion(direction, label):
    action = np.ones((50, 4))
    proprio = np.zeros((50, 4))
    proprio[:, :3] = np.linspace(0.0, 1.0, 50)[:, None] * np.asarray(direction)
    assert _labels(action, proprio, "", "") == [label]


def test_grasp_release_retreat_and_lift_from_motion():
    action = np.zeros((90, 4))
    action[30:60, 3] = 1.0
    assert _labels(action, None, "t", "do it") == ["grasp", "place", "retreat"]
    # Holding until the end, no task words: lift if the hand mostly rises.
    action = np.zeros((60, 4))
    action[30:, 3] = 1.0
    proprio = np.zeros((60, 4))
    proprio[30:, 2] = np.linspace(0.0, 0.2, 30)
    assert _labels(action, proprio, "", "") == ["grasp", "lift"]
    proprio[30:, 2] = 0.0
    proprio[30:, 0] = np.linspace(0.0, 0.2, 30)
    assert _labels(action, proprio, "", "") == ["grasp", "place"]


def test_bimanual_handover():
    t = np.arange(200)
    action = np.zeros((200, 14))
    action[:, 13] = np.interp(t, [0, 40, 50, 120, 130], [1, 1, 0, 0, 1])  # right grasps
    action[:, 6] = np.interp(t, [0, 100, 110, 170, 180], [1, 1, 0, 0, 1])  # left takes it
    labels = _labels(action, None, "transfer-cube", "hand the cube to the left arm", "aloha")
    assert labels == ["grasp", "handover", "place", "place", "retreat"]


def test_skill_step_fields():
    action_abs = np.arange(60 * 4, dtype=np.float64).reshape(60, 4)
    action = np.zeros((60, 4))
    action[20:, 3] = 1.0
    seg, infos = _segments(action, None, "pick-place", "pick up the puck and place it")
    anns = make_annotator("rule").annotate(infos)
    fields = skill_step_fields(action_abs, seg, anns)
    assert set(fields) == set(rlds_schema.SKILL_FIELDS)
    assert fields["skill_segment"].dtype == np.int32 and fields["skill_label_id"].dtype == np.int32
    assert fields["is_keyframe"].dtype == bool and fields["keypose"].dtype == np.float32
    assert fields["skill_segment"].tolist() == [0] * 21 + [1] * 39
    assert fields["skill_label"][:21] == ["grasp"] * 21 and fields["skill_label"][21:] == ["place"] * 39
    assert fields["skill_label_id"].tolist() == [0] * 21 + [1] * 39
    assert np.flatnonzero(fields["is_keyframe"]).tolist() == [20, 59]
    np.testing.assert_array_equal(fields["keypose"][:21], np.repeat(action_abs[20:21], 21, 0))
    np.testing.assert_array_equal(fields["keypose"][21:], np.repeat(action_abs[59:60], 39, 0))
    assert len(fields["skill_description"]) == 60
    bad = [SkillAnnotation("grasp", 5, "x", "rule"), anns[1]]
    with pytest.raises(ValueError, match="segment 0"):
        skill_step_fields(action_abs, seg, bad)
    with pytest.raises(ValueError, match="2 segments"):
        skill_step_fields(action_abs, seg, anns[:1])


def test_annotate_episode_fields_fit_the_schema():
    num = 50
    action = np.zeros((num, 4), np.float32)
    action[25:, 3] = 1.0
    proprio = np.zeros((num, 4), np.float32)
    fields = annotate_episode(
        action=action, action_abs=action + 1, proprio=proprio, embodiment=SAWYER,
        annotator=make_annotator("rule"), episode_id="e0", task="pick-place",
        instruction=b"pick up the puck and place it at the goal")
    episode = {
        "steps": {"observation": {"proprio": proprio}, "action": action, "action_abs": action + 1,
                  "reward": np.zeros(num), "discount": np.ones(num),
                  "is_first": np.arange(num) == 0, "is_last": np.arange(num) == num - 1,
                  "is_terminal": np.zeros(num, bool),
                  "language_instruction": ["pick up the puck"] * num,
                  "language_embedding": np.zeros((num, 384), np.float32), **fields},
        "episode_metadata": {"episode_id": "e0", "task": "pick-place"},
    }
    rlds_schema.validate_episode(episode, rlds_schema.EpisodeSpec(action_dim=4, proprio_dim=4))
    out = rlds_schema.to_tfds_example(episode)["steps"]
    assert out["skill_label"][0] == "grasp" and out["skill_label"][-1] == "place"
    assert "pick up the puck and place it at the goal" in out["skill_description"][0]
