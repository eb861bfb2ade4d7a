"""ε and the step cap (policies/calibration.py): the rule on episodes whose distances
are known by hand, and the calibration of the real MetaWorld fixture against a
computation done here from the dataset and the saved statistics."""

import json

import numpy as np
import pytest

from atomskill_jax.methods.atomskill import calibration

U = np.array([0.6, 0.8, 0.0, 0.0])  # a unit direction: distances are the d given


def _normalize(x):
    # Not the identity, and applied to both sides: n(a) - n(k) = (a - k) / 2.
    return (np.asarray(x) - 1.0) / 2.0


def _episode(segments, distances, seed=0):
    """Steps at normalised distance d from their segment's keypose (a different keypose
    per run of equal segment ids)."""
    segments = np.asarray(segments)
    runs = np.cumsum(np.r_[0, np.diff(segments) != 0])
    keyposes = np.random.default_rng(seed).normal(size=(runs.max() + 1, 4))[runs]
    action_abs = keyposes + 2.0 * np.asarray(distances, float)[:, None] * U
    return {"action_abs": action_abs.astype(np.float32), "keypose": keyposes.astype(np.float32),
            "skill_segment": segments.astype(np.int32)}


def test_epsilon_is_the_midpoint_of_the_end_and_early_percentiles():
    """Episode 1: segment ids 0,1,0 (the id comes back: three segments, of 8, 6, 5
    steps); episode 2: one segment of 6. Ends (last step of each segment) at distances
    0, 0.1, 0.3, 0.5; the 21 other steps at 0.2 once and >= 1 otherwise.
      eps_end   = p90 of [0, 0.1, 0.3, 0.5]: rank 0.9 * 3 = 2.7 -> 0.3 + 0.7 * 0.2 = 0.44
      eps_early = p5 of 21 values: rank 0.05 * 20 = 1 -> the second smallest, 1.0
      epsilon   = (0.44 + 1.0) / 2 = 0.72
      cap       = max(10, ceil(1.5 * 8)) = 12."""
    early = iter([0.2] + [1.0 + 0.25 * i for i in range(20)])

    def seg(length, end):
        return [next(early) for _ in range(length - 1)] + [end]

    ep1 = _episode([0] * 8 + [1] * 6 + [0] * 5, seg(8, 0.1) + seg(6, 0.5) + seg(5, 0.0))
    ep2 = _episode([2] * 6, seg(6, 0.3), seed=1)
    out = calibration.epsilon_from_episodes([ep1, ep2], _normalize)
    assert out["eps_end"] == pytest.approx(0.44)
    assert out["eps_early"] == pytest.approx(1.0)
    assert out["epsilon"] == pytest.approx(0.72)
    assert out["max_skill_steps"] == 12
    assert out["num_segments"] == 4 and out["segment_length_max"] == 8
    assert out["segment_length_p50"] == 6.0
    assert out["early_fire_rate"] == pytest.approx(1 / 21)  # only the 0.2 is below 0.72
    assert out["end_hit_rate"] == 1.0


def test_epsilon_falls_back_to_the_end_percentile_when_ends_are_not_closer():
    """Ends at 0 and 3 (p90 = 2.7), early steps at 1 and 2 (p5 = 1.05): no margin
    between them, so epsilon = eps_end = 2.7; the cap's floor is 10."""
    out = calibration.epsilon_from_episodes([_episode([0, 0, 1, 1], [1.0, 0.0, 2.0, 3.0])],
                                            _normalize)
    assert out["eps_end"] == pytest.approx(2.7) and out["eps_early"] == pytest.approx(1.05)
    assert out["epsilon"] == pytest.approx(2.7)
    assert out["max_skill_steps"] == 10
    assert out["end_hit_rate"] == 0.5 and out["early_fire_rate"] == 1.0


def test_end_zone_width_and_quantiles_are_parameters():
    """end_steps=2: the last two steps of a segment are its end zone. Distances
    3, 1, 0: ends [1, 0] (p50 = 0.5), early [3]; epsilon = (0.5 + 3) / 2 = 1.75."""
    ep = _episode([4, 4, 4], [3.0, 1.0, 0.0])
    out = calibration.epsilon_from_episodes([ep], _normalize, end_steps=2, end_quantile=50.0,
                                            early_quantile=0.0)
    assert (out["eps_end"], out["eps_early"]) == (pytest.approx(0.5), pytest.approx(3.0))
    assert out["epsilon"] == pytest.approx(1.75)
    # One-step segments have no early steps: only the end percentile counts.
    out = calibration.epsilon_from_episodes([_episode([0, 1, 2], [0.0, 0.5, 1.0])], _normalize)
    assert out["eps_early"] == float("inf") and out["epsilon"] == pytest.approx(0.9)
    assert out["early_fire_rate"] == 0.0
    with pytest.raises(ValueError, match="^epsilon calibration: no episodes$"):
        calibration.epsilon_from_episodes([], _normalize)


def _hand_calibration(dataset_dir, fields):
    """epsilon, eps_end, eps_early, cap of the rule, from the dataset read here."""
    import tensorflow_datasets as tfds

    field = fields["action_abs"]
    std = np.asarray(field["std"], np.float64)
    scale, mean = np.where(std < 1e-6, 1.0, std), np.asarray(field["mean"], np.float64)
    ds = tfds.builder_from_directory(dataset_dir).as_dataset(split="train")
    end, early, lengths = [], [], []
    for episode in tfds.as_numpy(ds):
        steps = list(episode["steps"])
        abs_ = np.stack([s["action_abs"] for s in steps]).astype(np.float64)
        key = np.stack([s["keypose"] for s in steps]).astype(np.float64)
        seg = [int(s["skill_segment"]) for s in steps]
        d = np.linalg.norm((abs_ - mean) / scale - (key - mean) / scale, axis=1)
        start = 0
        for t in range(1, len(seg) + 1):
            if t == len(seg) or seg[t] != seg[start]:
                end.append(d[t - 1])
                early.extend(d[start:t - 1])
                lengths.append(t - start)
                start = t
    eps_end, eps_early = np.percentile(end, 90), np.percentile(early, 5)
    assert eps_early > eps_end  # the fixture separates ends from the rest
    return 0.5 * (eps_end + eps_early), eps_end, eps_early, max(10, int(np.ceil(1.5 * max(
        lengths))))


def test_calibration_of_the_real_fixture_and_of_several_datasets(
        tiny_trained_workdir, metaworld_rlds_dir, tmp_path):
    """`compute_calibration` on the MetaWorld fixture with the workdir's statistics equals
    the rule applied here and what the trainer saved in the checkpoint's assets; with a
    second dataset whose action_abs spread is twice as wide (distances halve), the
    smaller epsilon wins."""
    from atomskill_jax.policies.loading import read_workdir_assets

    assets = read_workdir_assets(tiny_trained_workdir)[0]
    stats = assets["statistics"][0]
    epsilon, eps_end, eps_early, cap = _hand_calibration(metaworld_rlds_dir, stats["fields"])
    out = calibration.compute_calibration([metaworld_rlds_dir], assets["config"], [stats],
                                          "train")
    assert out["epsilon"] == pytest.approx(epsilon, rel=1e-5)
    assert out["eps_end"] == pytest.approx(eps_end, abs=1e-6)
    assert out["eps_early"] == pytest.approx(eps_early, rel=1e-5)
    assert out["max_skill_steps"] == cap
    saved = assets["calibration"]  # the trainer's, at the end of training
    for key in ("epsilon", "eps_end", "eps_early", "max_skill_steps"):
        assert saved[key] == out[key], key

    wide = json.loads(json.dumps(stats))
    wide["fields"]["action_abs"]["std"] = [2 * s for s in wide["fields"]["action_abs"]["std"]]
    both = calibration.compute_calibration([metaworld_rlds_dir] * 2, assets["config"],
                                           [stats, wide], "train")
    assert [r["epsilon"] for r in both["per_dataset"]] == pytest.approx(
        [epsilon, epsilon / 2], rel=1e-5)
    assert both["epsilon"] == pytest.approx(epsilon / 2, rel=1e-5)
    assert both["max_skill_steps"] == cap



def test_trigger_dims_and_cap_quantile():
    """dims=(0,): distances on the first action dimension only. One segment of 5 steps
    (keypose 0): dimension 0 at n-distances 1, 0.5, 0.2, 0.1, then 0 at its end;
    dimension 1 (a gripper command that flips at the keyframe) 2 away on every early
    step. Whole action: early d = sqrt(x^2 + 4) = 2.236, 2.062, 2.010, 2.002; p5 (rank
    0.15) = 2.0036, epsilon = 1.0018. Dimension 0: p5 of 1, .5, .2, .1 = 0.115,
    epsilon = 0.0575. Cap: lengths 5 and 20; the 50th percentile 12.5 -> ceil(18.75)
    = 19, the longest -> 30."""
    keypose = np.zeros((5, 4), np.float32)
    action_abs = np.zeros((5, 4), np.float32)
    action_abs[:4, 0] = [2.0, 1.0, 0.4, 0.2]  # _normalize halves differences
    action_abs[:4, 1] = 4.0
    ep = {"action_abs": action_abs, "keypose": keypose,
          "skill_segment": np.zeros(5, np.int32)}
    whole = calibration.epsilon_from_episodes([ep], _normalize)
    assert whole["eps_early"] == pytest.approx(2.0036, abs=1e-4)
    assert whole["epsilon"] == pytest.approx(1.0018, abs=1e-4) and whole["trigger_dims"] is None
    first = calibration.epsilon_from_episodes([ep], _normalize, dims=(0,))
    assert first["eps_early"] == pytest.approx(0.115) and first["epsilon"] == pytest.approx(0.0575)
    assert first["trigger_dims"] == [0]
    long = {"action_abs": np.zeros((20, 4), np.float32), "keypose": np.zeros((20, 4), np.float32),
            "skill_segment": np.ones(20, np.int32)}
    assert calibration.epsilon_from_episodes([ep, long], _normalize)["max_skill_steps"] == 30
    assert calibration.epsilon_from_episodes([ep, long], _normalize,
                                             cap_quantile=50)["max_skill_steps"] == 19
