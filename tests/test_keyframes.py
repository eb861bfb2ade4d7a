"""Keyframe segmentation on real MetaWorld expert rollouts and synthetic signals."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from atomskill_jax.skills import embodiments
from atomskill_jax.skills.embodiments import GripperSpec, get_embodiment, register_embodiment
from atomskill_jax.skills.keyframes import Segmentation, segment_episode

SAWYER = "metaworld_sawyer"
# MetaWorld experts ask for more than [-1, 1]; the env clips, as intended.
pytestmark = pytest.mark.filterwarnings("ignore:Constant.*may be too high")
SAWYER_SPEC = get_embodiment(SAWYER)


@functools.lru_cache(maxsize=None)
def rollout(task: str, layout: int = 0, noise_std: float = 0.0):
    mw = pytest.importorskip("atomskill_jax.envs.metaworld")
    return mw.rollout_expert(task, layout, seed=0, noise_std=noise_std, max_steps=200,
                             post_success_steps=5)


def level_changes(signal: np.ndarray) -> np.ndarray:
    """Steps where the commanded level differs from the previous step's."""
    return np.flatnonzero(np.abs(np.diff(signal)) > 1e-6) + 1


def check_invariants(seg: Segmentation, num_steps: int, min_len: int) -> None:
    """Segments cover the episode in order, without overlap, keyframe at each end."""
    assert seg.segments[0][0] == 0 and seg.segments[-1][1] == num_steps - 1
    for (s0, e0), (s1, _) in zip(seg.segments[:-1], seg.segments[1:]):
        assert s1 == e0 + 1
    for i, (s, e) in enumerate(seg.segments):
        assert s <= e
        assert (seg.segment_index[s:e + 1] == i).all()
        if len(seg.segments) > 1:
            assert e - s + 1 >= min_len
    assert np.flatnonzero(seg.is_keyframe).tolist() == [e for _, e in seg.segments]
    assert seg.segment_index.dtype == np.int32 and seg.is_keyframe.dtype == bool
    assert len(seg.events) == len(seg.segments) == len(seg.event_grippers)
    assert all(ev in ("close", "open") for ev in seg.events[:-1])
    assert seg.events[-1] in ("close", "open", "end")


@pytest.mark.slow
@pytest.mark.parametrize("task,levels", [
    ("pick-place", (0.0, 1.0)),
    ("pick-out-of-hole", (0.0, 0.1)),
    ("box-close", (0.5, 1.0)),
    ("sweep-into", (-1.0, 0.7)),
    ("shelf-place", (-1.0, 0.7)),
])
def test_grasp_cut_at_expert_close(task, levels):
    ep = rollout(task, 0)
    grip = ep["action"][:, 3]
    # The expert's levels as measured (not +-1): detection must not rely on signs.
    np.testing.assert_allclose(np.unique(grip), levels, atol=1e-6)
    close_step = int(level_changes(grip)[0])
    assert grip[close_step] > grip[close_step - 1]
    seg = segment_episode(ep["action"], ep["proprio"], SAWYER)
    check_invariants(seg, len(grip), SAWYER_SPEC.min_segment_len)
    assert seg.num_segments >= 2
    # The grasp skill ends on the step that first commands the closed level.
    assert seg.segments[0] == (0, close_step)
    assert seg.events[0] == "close" and seg.is_keyframe[close_step]
    # Every cut is a real change of the commanded level.
    cuts = [e for (_, e), ev in zip(seg.segments, seg.events) if ev != "end"]
    assert set(cuts) <= set(level_changes(grip).tolist()) | {len(grip) - 1}


@pytest.mark.slow
def test_drawer_close_is_one_skill():
    ep = rollout("drawer-close", 0)
    assert np.ptp(ep["action"][:, 3]) == 0  # constant command: nothing to cut
    seg = segment_episode(ep["action"], ep["proprio"], SAWYER)
    assert seg.segments == [(0, len(ep["action"]) - 1)]
    assert seg.events == ["end"] and seg.is_keyframe[-1] and seg.is_keyframe.sum() == 1


@pytest.mark.slow
@pytest.mark.parametrize("task", ["pick-place", "sweep-into", "box-close", "shelf-place",
                                  "drawer-close"])
def test_gripper_noise_adds_no_cuts(task):
    ep = rollout(task, 0)
    clean = segment_episode(ep["action"], None, SAWYER)
    for seed in range(3):
        noisy_action = ep["action"].copy()
        rng = np.random.default_rng(seed)
        noisy_action[:, 3] += rng.normal(0.0, 0.1, len(noisy_action))
        if task == "pick-place":  # the open level is 0: its sign flips all the time
            assert ((noisy_action[1:, 3] > 0) != (noisy_action[:-1, 3] > 0)).sum() > 5
        # Levels 0.5 apart or more: the same cuts within a step or two.
        noisy = segment_episode(noisy_action, None, SAWYER)
        check_invariants(noisy, len(noisy_action), SAWYER_SPEC.min_segment_len)
        assert noisy.events == clean.events
        for (_, e_noisy), (_, e_clean) in zip(noisy.segments, clean.segments):
            assert abs(e_noisy - e_clean) <= 2


@pytest.mark.slow
def test_small_level_step_under_noise():
    """pick-out-of-hole's 0 -> 0.1 step: found under mild noise, never over-cut."""
    ep = rollout("pick-out-of-hole", 0)
    close_step = int(level_changes(ep["action"][:, 3])[0])
    for seed in range(5):
        rng = np.random.default_rng(seed)
        for sigma, must_find, tol in ((0.02, True, 2), (0.1, False, 8)):
            noisy_action = ep["action"].copy()
            noisy_action[:, 3] += rng.normal(0.0, sigma, len(noisy_action))
            seg = segment_episode(noisy_action, None, SAWYER)
            # At sigma = step size the change is below the 2.5-sigma contrast rule
            # (one skill, like a constant command); noise must never invent skills.
            assert seg.num_segments <= 2
            if must_find or seg.num_segments == 2:
                assert seg.events[0] == "close"
                assert abs(seg.segments[0][1] - close_step) <= tol


@pytest.mark.slow
@pytest.mark.parametrize("task", ["box-close", "pick-place", "sweep-into"])
def test_action_noise_rollouts_follow_sustained_levels(task):
    """With executed-action noise the expert itself chatters; only sustained runs cut."""
    for layout in range(3):
        ep = rollout(task, layout, noise_std=0.1)
        grip = ep["action"][:, 3]
        seg = segment_episode(ep["action"], None, SAWYER)
        check_invariants(seg, len(grip), SAWYER_SPEC.min_segment_len)
        changes = set(level_changes(grip).tolist())
        for (_, e), ev in zip(seg.segments, seg.events):
            if ev != "end":
                assert e in changes or e == len(grip) - 1
        # The debounced gripper state has no interior run shorter than min_hold.
        state = seg.gripper_closed[:, 0]
        flips = np.flatnonzero(state[1:] != state[:-1]) + 1
        assert (np.diff(flips) >= SAWYER_SPEC.min_hold).all()


@pytest.mark.slow
def test_box_close_expert_chatter_is_merged():
    """Clean box-close expert in layout 0 re-opens for 2 steps after grasping."""
    ep = rollout("box-close", 0)
    grip = ep["action"][:, 3]
    changes = level_changes(grip)
    seg = segment_episode(ep["action"], None, SAWYER)
    cuts = [e for (_, e), ev in zip(seg.segments, seg.events) if ev != "end"]
    assert len(cuts) <= len(changes)
    assert seg.events[0] == "close" and cuts[0] == changes[0]


@pytest.mark.slow
def test_proprio_signal_lags_command():
    ep = rollout("pick-place", 0)
    close_step = int(level_changes(ep["action"][:, 3])[0])
    seg = segment_episode(ep["action"], ep["proprio"], SAWYER, signal="proprio")
    assert seg.signal == "proprio" and seg.events[0] == "close"
    # The fingers need some steps to close after the command.
    assert close_step < seg.segments[0][1] <= close_step + 25


def synthetic_sawyer(levels_and_lengths, noise=0.0, seed=0):
    grip = np.concatenate([np.full(n, v, np.float64) for v, n in levels_and_lengths])
    grip = grip + np.random.default_rng(seed).normal(0.0, noise, grip.shape)
    action = np.zeros((grip.size, 4))
    action[:, 3] = grip
    return action


def test_chatter_is_merged_by_min_hold():
    # Closed at 30, blips open for 3 steps at 50, closes for 2 at 80, releases at 100.
    action = synthetic_sawyer([(0, 30), (1, 20), (0, 3), (1, 27), (0, 20), (1, 2),
                               (0, 3), (1, 1), (0, 20)])
    seg = segment_episode(action, None, SAWYER)
    assert seg.segments == [(0, 30), (31, 80), (81, action.shape[0] - 1)]
    assert seg.events == ["close", "open", "end"]
    # A min_hold of 1 keeps every level change.
    raw = segment_episode(action, None, SAWYER, min_hold=1, min_segment_len=1)
    assert raw.num_segments == len(level_changes(action[:, 3])) + 1


def test_min_segment_len_merges_short_skills():
    action = synthetic_sawyer([(0, 3), (1, 40), (0, 40)])
    seg = segment_episode(action, None, SAWYER, min_segment_len=5)
    # The 4-step first skill (close at step 3) joins the next one.
    assert seg.segments == [(0, 43), (44, 82)] and seg.events == ["open", "end"]
    # A 2-step tail after the release joins its predecessor, which keeps 'open'.
    action = synthetic_sawyer([(0, 40), (1, 40), (0, 3)])
    seg = segment_episode(action, None, SAWYER, min_segment_len=5)
    assert seg.segments == [(0, 40), (41, 82)] and seg.events == ["close", "open"]
    check_invariants(seg, 83, 5)


def test_level_steps_relative_to_episode_not_sign():
    for lo, hi in ((0.0, 1.0), (0.0, 0.1), (0.5, 1.0), (-1.0, 0.7), (0.2, 0.9)):
        action = synthetic_sawyer([(lo, 25), (hi, 40), (lo, 30)])
        seg = segment_episode(action, None, SAWYER)
        assert seg.segments == [(0, 25), (26, 65), (66, 94)], (lo, hi)
        assert seg.events == ["close", "open", "end"]
    # Below min_contrast: a constant command with a numerical wobble is one skill.
    action = synthetic_sawyer([(1.0, 40), (1.01, 40)])
    assert segment_episode(action, None, SAWYER).num_segments == 1


def test_constant_noisy_command_is_one_skill():
    # Short episodes too: a split near the end of 50 noisy steps once made a cut.
    for num in (40, 50, 150):
        for seed in range(20):
            action = synthetic_sawyer([(0.7, num)], noise=0.1, seed=seed)
            assert segment_episode(action, None, SAWYER).num_segments == 1, (num, seed)


def aloha_action(left, right, num_steps=200):
    """14-d joint commands; grippers (0 closed, 1 open) ramp between waypoints."""
    action = np.random.default_rng(0).normal(0.0, 0.3, (num_steps, 14)).cumsum(0) * 0.01
    t = np.arange(num_steps)
    action[:, 6] = np.interp(t, *zip(*left))
    action[:, 13] = np.interp(t, *zip(*right))
    return action


def test_bimanual_cut_at_either_gripper():
    # Right arm closes over steps 40-50 (grasp), left closes 100-110 (handover),
    # right opens 120-130, left opens 170-180.
    action = aloha_action(left=[(0, 1), (100, 1), (110, 0), (170, 0), (180, 1)],
                          right=[(0, 1), (40, 1), (50, 0), (120, 0), (130, 1)])
    seg = segment_episode(action, None, "aloha")
    check_invariants(seg, 200, get_embodiment("aloha").min_segment_len)
    assert seg.events == ["close", "close", "open", "open", "end"]
    assert seg.event_grippers[:4] == [(1,), (0,), (1,), (0,)]
    ends = [e for _, e in seg.segments[:4]]
    # Cuts land inside each ramp (the mid-level crossing of the interpolation).
    for end, (a, b) in zip(ends, [(40, 50), (100, 110), (120, 130), (170, 180)]):
        assert a <= end <= b
    # A gripper that only twitches (< min_contrast) does not cut.
    action[:, 13] = 1.0 - 0.05 * (np.arange(200) > 60)
    only_left = segment_episode(action, None, "aloha")
    assert only_left.events == ["close", "open", "end"]


def test_bimanual_simultaneous_changes_make_one_keyframe():
    action = aloha_action(left=[(0, 1), (60, 1), (61, 0)], right=[(0, 1), (62, 1), (63, 0)],
                          num_steps=120)
    seg = segment_episode(action, None, "aloha")
    assert seg.num_segments == 2 and seg.events[0] == "close"


def test_single_step_and_errors():
    seg = segment_episode(np.zeros((1, 4)), None, SAWYER)
    assert seg.segments == [(0, 0)] and seg.events == ["end"] and seg.is_keyframe.tolist() == [True]
    with pytest.raises(ValueError, match="embodiment 'aloha'"):
        segment_episode(np.zeros((10, 4)), None, "aloha")
    with pytest.raises(KeyError, match="register_embodiment"):
        segment_episode(np.zeros((10, 4)), None, "no-such-robot")
    with pytest.raises(ValueError, match="proprio"):
        segment_episode(np.zeros((10, 4)), None, SAWYER, signal="proprio")
    bad = np.zeros((10, 4))
    bad[3, 3] = np.nan
    with pytest.raises(ValueError, match="step 3"):
        segment_episode(bad, None, SAWYER)


def test_register_embodiment():
    spec = GripperSpec(name="test_one_arm", action_channels=(0,), action_closed_high=False)
    try:
        register_embodiment(spec)
        register_embodiment(spec)  # same spec again: fine
        with pytest.raises(ValueError, match="already registered"):
            register_embodiment(GripperSpec(name="test_one_arm", action_channels=(1,)))
        action = np.ones((60, 1))
        action[30:, 0] = 0.0  # 1 open -> 0 closed
        seg = segment_episode(action, None, "test_one_arm")
        assert seg.events == ["close", "end"] and seg.segments[0] == (0, 30)
    finally:
        embodiments.EMBODIMENTS.pop("test_one_arm", None)
