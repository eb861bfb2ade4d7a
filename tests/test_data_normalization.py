"""Normalisation: plain numpy, exact round trips, safe constant dims, masks, mixed batches."""

import numpy as np
import pytest

from atomskill_jax.data import normalization as norm


def _stats(values):
    values = np.asarray(values, np.float64)
    p01, p99 = np.percentile(values, [1, 99], axis=0)
    return norm.FieldStatistics(mean=values.mean(0), std=values.std(0), min=values.min(0),
                                max=values.max(0), p01=p01, p99=p99)


RNG = np.random.default_rng(0)
DATA = np.concatenate([RNG.normal(3.0, 2.0, (500, 2)), np.full((500, 1), 0.5)], axis=1)
STATS = _stats(DATA)


@pytest.mark.parametrize("mode", ["mean_std", "min_max", "bounds", "none"])
def test_round_trip(mode):
    x = DATA[:50].astype(np.float32)
    if mode == "bounds":  # clipping outside the percentiles is by design; stay inside
        x = np.clip(x, STATS.p01, STATS.p99)
    y = norm.normalize(x, STATS, mode)
    assert y.dtype == np.float32 and np.isfinite(y).all()
    np.testing.assert_allclose(norm.unnormalize(y, STATS, mode), x, rtol=1e-5, atol=1e-5)


def test_modes_map_to_expected_ranges():
    y = norm.normalize(DATA, STATS, "mean_std")
    np.testing.assert_allclose(y[:, :2].mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(y[:, :2].std(0), 1, atol=1e-4)
    y = norm.normalize(DATA, STATS, "min_max")
    np.testing.assert_allclose(y[:, :2].min(0), -1, atol=1e-5)
    np.testing.assert_allclose(y[:, :2].max(0), 1, atol=1e-5)
    y = norm.normalize(DATA, STATS, "bounds")
    assert y.min() >= -1 and y.max() <= 1
    np.testing.assert_allclose(norm.normalize(STATS.p99[None], STATS, "bounds")[0, :2], 1,
                               atol=1e-5)


def test_constant_dimension_is_shifted_not_divided_by_zero():
    # The last dim is a gripper that never moved: std and range are 0.
    far = np.array([[3.0, 3.0, 1.5]], np.float32)
    for mode in ("mean_std", "min_max", "bounds"):
        y = norm.normalize(far, STATS, mode)
        assert np.isfinite(y).all()
        if mode != "bounds":
            assert y[0, 2] == pytest.approx(1.0)  # 1.5 - 0.5, scale 1
        np.testing.assert_allclose(norm.unnormalize(norm.normalize(DATA[:5], STATS, mode),
                                                    STATS, mode)[:, 2], 0.5)


def test_mask_leaves_dimensions_untouched():
    x = DATA[:10].astype(np.float32)
    y = norm.normalize(x, STATS, "mean_std", mask=[True, False, True])
    np.testing.assert_array_equal(y[:, 1], x[:, 1])
    assert not np.allclose(y[:, 0], x[:, 0])
    np.testing.assert_allclose(norm.unnormalize(y, STATS, "mean_std", mask=[True, False, True]),
                               x, rtol=1e-5)
    with pytest.raises(ValueError, match="mask has 2 entries"):
        norm.normalize(x, STATS, "mean_std", mask=[True, False])


def test_normalizer_over_nested_batches_of_several_datasets():
    other = _stats(DATA * 10 + 1)
    normalizer = norm.Normalizer(
        keys={"action_chunk": "action", "observation/proprio": "observation/proprio",
              "keypose": "action_abs"},
        statistics=[{"action": STATS, "observation/proprio": STATS},
                    {"action": other, "observation/proprio": other}],
        mode="mean_std")
    chunk = np.stack([DATA[:4], DATA[4:8] * 10 + 1]).astype(np.float32)  # [B=2, H=4, 3]
    batch = {"action_chunk": chunk, "observation": {"proprio": chunk[:, 0], "x": 1},
             "dataset_index": np.array([0, 1])}
    out = normalizer.normalize(batch)  # keypose absent: skipped
    np.testing.assert_allclose(out["action_chunk"][0], norm.normalize(chunk[0], STATS, "mean_std"))
    np.testing.assert_allclose(out["action_chunk"][1], norm.normalize(chunk[1], other, "mean_std"),
                               rtol=1e-5)
    np.testing.assert_allclose(out["observation"]["proprio"], out["action_chunk"][:, 0])
    assert out["observation"]["x"] == 1 and batch["action_chunk"] is chunk  # input untouched
    back = normalizer.unnormalize(out)
    np.testing.assert_allclose(back["action_chunk"], chunk, rtol=1e-5)
    # A single observation at deployment: one dataset chosen explicitly.
    single = normalizer.normalize({"observation": {"proprio": chunk[1, 0]}}, dataset_index=1)
    np.testing.assert_allclose(single["observation"]["proprio"], out["action_chunk"][1, 0])
    with pytest.raises(ValueError, match="dataset_index"):
        normalizer.normalize({"action_chunk": chunk})
    with pytest.raises(ValueError, match="mode"):
        norm.Normalizer(keys={}, statistics=[], mode="zscore")


def test_statistics_json_round_trip():
    back = norm.FieldStatistics.from_json(STATS.to_json())
    for name in norm.STAT_NAMES:
        np.testing.assert_allclose(getattr(back, name), getattr(STATS, name), rtol=1e-6)


def test_normalizer_from_config_with_mask_aliases():
    from atomskill_jax.data.config import default_data_config
    config = default_data_config()
    config.action_space = "action_abs"
    config.normalization.mode = "min_max"
    config.normalization.mask = {"proprio": (True, False, True)}
    normalizer = norm.normalizer_from_config(
        config, [{"action_abs": STATS, "observation/proprio": STATS}])
    assert normalizer.keys["action_chunk"] == "action_abs" and normalizer.mode == "min_max"
    x = DATA[:3].astype(np.float32)
    out = normalizer.normalize({"observation": {"proprio": x}, "skill": {"actions": x[None]}})
    np.testing.assert_array_equal(out["observation"]["proprio"][:, 1], x[:, 1])
    np.testing.assert_allclose(out["skill"]["actions"][0],
                               norm.normalize(x, STATS, "min_max"), rtol=1e-6)


# -- found by mutation testing (bench/mutation.py normalization) ------------------------
def test_arithmetic_is_float32_whatever_the_input_dtype():
    # The trainer, the exported policy and the server must compute the very same bits:
    # (x - shift) / scale in float32, even for float64 inputs and statistics.
    x = DATA[:50]  # float64
    mean = STATS.mean.astype(np.float32)
    std = np.where(STATS.std < norm.EPS, 1.0, STATS.std).astype(np.float32)  # dim 2: constant
    y = norm.normalize(x, STATS, "mean_std")
    np.testing.assert_array_equal(y, (x.astype(np.float32) - mean) / std)
    back = norm.unnormalize(y.astype(np.float64), STATS, "mean_std")
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, y * std + mean)
    masked = norm.normalize(x, STATS, "mean_std", mask=[True, False, True])
    assert masked.dtype == np.float32
    assert norm.FieldStatistics.from_json(STATS.to_json()).mean.dtype == np.float32


def test_spread_exactly_eps_is_still_divided():
    # Only a spread *below* eps counts as constant.
    stats = norm.FieldStatistics(mean=np.zeros(1), std=np.full(1, norm.EPS), min=np.zeros(1),
                                 max=np.zeros(1), p01=np.zeros(1), p99=np.zeros(1))
    y = norm.normalize(np.full((1, 1), norm.EPS, np.float32), stats, "mean_std")
    assert y[0, 0] == pytest.approx(1.0)


def test_unknown_mode_is_named():
    with pytest.raises(ValueError, match="unknown normalisation mode 'zscore'"):
        norm.normalize(DATA[:2], STATS, "zscore")


def test_mask_on_action_chunks_of_rank_three():
    # Action chunks are [B, H, A]: the mask applies to the last axis only.
    chunk = np.stack([DATA[:4], DATA[4:8]]).astype(np.float32)  # [2, 4, 3]
    y = norm.normalize(chunk, STATS, "min_max", mask=[False, True, True])
    np.testing.assert_array_equal(y[..., 0], chunk[..., 0])
    np.testing.assert_allclose(y[..., 1:], norm.normalize(chunk, STATS, "min_max")[..., 1:])
    with pytest.raises(ValueError, match="mask has 2 entries but the field has 3 dimensions"):
        norm.normalize(chunk, STATS, "min_max", mask=[True, False])


def test_several_datasets_with_one_explicit_index_and_chunks():
    # The policy unnormalises a predicted chunk [B, H, A] with the dataset index of its
    # options (a scalar), in both directions, and the batch carries no index.
    other = _stats(DATA * 10 + 1)
    normalizer = norm.Normalizer(keys={"action_chunk": "action"},
                                 statistics=[{"action": STATS}, {"action": other}])
    chunk = (DATA[:10] * 10 + 1).astype(np.float32).reshape(2, 5, 3)  # H=5 != A=3
    out = normalizer.normalize({"action_chunk": chunk}, dataset_index=1)["action_chunk"]
    np.testing.assert_allclose(out, norm.normalize(chunk, other, "mean_std"), rtol=1e-6)
    back = normalizer.unnormalize({"action_chunk": out}, dataset_index=1)["action_chunk"]
    np.testing.assert_allclose(back, norm.unnormalize(out, other, "mean_std"), rtol=1e-6)
    zero = normalizer.unnormalize({"action_chunk": out}, dataset_index=0)["action_chunk"]
    np.testing.assert_allclose(zero, norm.unnormalize(out, STATS, "mean_std"), rtol=1e-6)


def test_normalizer_keys_name_their_statistics_fields():
    # The keypose is an absolute target: it uses action_abs even for delta actions, and
    # so does the base the relative keypose head measures it from (the query step's
    # target), so that keypose - keypose_base is taken in one normalised space.
    assert norm.normalizer_keys("action") == {
        "action_chunk": "action", "skill/actions": "action", "keypose": "action_abs",
        "keypose_base": "action_abs",
        "observation/proprio": "observation/proprio",
        "observation/state": "observation/state"}


def test_config_mask_on_a_field_without_alias_and_its_true_entries():
    from atomskill_jax.data.config import default_data_config
    config = default_data_config()
    config.normalization.mode = "mean_std"
    config.normalization.mask = {"action": (True, False, True)}
    normalizer = norm.normalizer_from_config(config, [{"action": STATS}])
    x = DATA[:3].astype(np.float32)
    out = normalizer.normalize({"action_chunk": x})["action_chunk"]
    np.testing.assert_array_equal(out[:, 1], x[:, 1])
    np.testing.assert_allclose(out[:, [0, 2]], norm.normalize(x, STATS, "mean_std")[:, [0, 2]])
