"""ATP stage logic, the stage table, SR/ATP aggregation and confidence intervals."""

import math

import numpy as np
import pytest

from atomskill_jax.envs import metaworld_tasks
from atomskill_jax.eval import metrics, stages
from atomskill_jax.eval.metrics import EpisodeResult, Estimate, ordered_progress


def test_failed_stage_stops_progress():
    # stages: reach, lift, success over 5 steps
    flags = np.array([[0, 0, 0],
                      [1, 0, 0],
                      [0, 0, 0],   # reach lost again: still reached (latched)
                      [0, 1, 0],
                      [0, 0, 0]], bool)
    assert ordered_progress(flags) == 2
    assert ordered_progress(np.zeros((4, 3), bool)) == 0
    assert ordered_progress(np.ones((1, 3), bool)) == 3  # several stages in one step


def test_later_stages_do_not_count_without_earlier_ones():
    # lift and success without ever reaching: nothing counts
    assert ordered_progress(np.array([[0, 1, 1], [0, 1, 1]], bool)) == 0
    # lift happened before reach, never after: only reach counts
    assert ordered_progress(np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1]], bool)) == 1
    # success at the same step as the lift that unlocks it counts
    assert ordered_progress(np.array([[1, 0, 0], [0, 1, 1]], bool)) == 3


def test_online_counter_matches_ordered_progress():
    rng = np.random.default_rng(0)
    for _ in range(200):
        flags = rng.random((int(rng.integers(1, 12)), int(rng.integers(1, 5)))) < 0.3
        counter = metrics.ProgressCounter(flags.shape[1])
        for row in flags:
            counter.update(row)
        assert counter.completed == ordered_progress(flags), flags


def test_stage_table_covers_all_tasks_and_ends_in_success():
    assert set(stages.STAGES) == set(metaworld_tasks.ALL_TASKS)
    for task, task_stages in stages.STAGES.items():
        assert task_stages[-1].kind == "success", task
        assert 2 <= len(task_stages) <= 3
    assert [s.name for s in stages.stages_of("pick-place-v3")] == ["reach", "lift", "success"]
    assert [s.name for s in stages.stages_of("drawer-close")] == ["reach", "success"]
    assert [s.name for s in stages.stages_of("reach")] == ["halfway", "success"]


def _state(hand, obj):
    s = np.zeros(39, np.float32)
    s[0:3], s[4:7] = hand, obj
    return s


def test_tracker_lift_needs_the_hand_and_height_above_the_settled_object():
    tracker = stages.StageTracker("pick-place")
    tracker.reset(_state([0, 0.6, 0.2], [0, 0.6, 0.05]))
    info = {"success": 0.0, "obj_to_target": 0.3}
    # the object settles 1 cm lower after reset: the baseline follows it
    assert list(tracker.flags(_state([0, 0.6, 0.2], [0, 0.6, 0.04]), info)) == [0, 0, 0]
    assert list(tracker.flags(_state([0, 0.6, 0.05], [0, 0.6, 0.04]), info)) == [1, 0, 0]
    # 3.5 cm above its lowest point, hand at it: lifted
    assert list(tracker.flags(_state([0, 0.6, 0.08], [0, 0.6, 0.075]), info)) == [1, 1, 0]
    # knocked up in the air with the hand far away: not a lift
    assert list(tracker.flags(_state([0, 0.4, 0.3], [0, 0.6, 0.09]), info)) == [0, 0, 0]
    assert tracker.flags(_state([0, 0.4, 0.3], [0, 0.6, 0.09]), {"success": 1.0})[2]


def test_tracker_halfway_uses_the_first_distance():
    tracker = stages.StageTracker("reach")
    tracker.reset(_state([0, 0.6, 0.2], [0, 0, 0]))
    assert not tracker.flags(_state([0, 0.6, 0.2], [0, 0, 0]), {"obj_to_target": 0.3})[0]
    assert not tracker.flags(_state([0, 0.6, 0.2], [0, 0, 0]), {"obj_to_target": 0.16})[0]
    assert tracker.flags(_state([0, 0.6, 0.2], [0, 0, 0]), {"obj_to_target": 0.15})[0]


def test_t_confidence_interval():
    est = Estimate.of([0.8, 0.9, 1.0])
    assert est.mean == pytest.approx(0.9)
    assert est.ci95 == pytest.approx(4.303 * 0.1 / math.sqrt(3), rel=1e-4)
    assert math.isnan(Estimate.of([0.5]).ci95) and Estimate.of([0.5]).n == 1
    assert Estimate.of([0.7, 0.7]).ci95 == 0.0
    assert metrics.t_quantile_975(60) == pytest.approx(2.000, abs=2e-3)
    assert metrics.t_quantile_975(120) == pytest.approx(1.980, abs=2e-3)


def _ep(task, seed, episode, success, done, k=3):
    return EpisodeResult(task=task, seed=seed, episode=episode, layout=1_000_000 + episode,
                         success=success, stages_completed=done, num_stages=k, steps=10)


def test_summary_per_task_average_and_groups_over_seeds():
    results = [
        # seed 0: A 1/2 success, progress (3/3 + 1/3)/2; B 2/2
        _ep("A", 0, 0, True, 3), _ep("A", 0, 1, False, 1),
        _ep("B", 0, 0, True, 2, k=2), _ep("B", 0, 1, True, 2, k=2),
        # seed 1: A 0/2, progress (2/3 + 0)/2; B 1/2, progress (1 + 1/2)/2
        _ep("A", 1, 0, False, 2), _ep("A", 1, 1, False, 0),
        _ep("B", 1, 0, True, 2, k=2), _ep("B", 1, 1, False, 1, k=2),
    ]
    summary = metrics.summarize(results, ["A", "B"], {"only_b": ["B"]})
    assert summary["seeds"] == [0, 1]
    a = summary["tasks"]["A"]
    assert a["sr"].values == (0.5, 0.0) and a["episodes"] == 4
    assert a["atp"].values == pytest.approx((2 / 3, 1 / 3))
    avg = summary["groups"]["average"]
    # the average over tasks is taken per seed, then over seeds
    assert avg["sr"].values == pytest.approx(((0.5 + 1.0) / 2, (0.0 + 0.5) / 2))
    assert avg["atp"].mean == pytest.approx(np.mean([(2 / 3 + 1) / 2, (1 / 3 + 0.75) / 2]))
    assert summary["groups"]["only_b"]["sr"].values == (1.0, 0.5)
