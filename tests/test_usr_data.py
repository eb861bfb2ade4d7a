"""USR training examples (methods/usr/data.py): future frame, history padding, chunks,
eagerly and inside tf.data; normalisation of history fields with several datasets."""

import numpy as np
import pytest

from atomskill_jax.data.normalization import FieldStatistics, Normalizer
from atomskill_jax.methods import registry
from configs.usr import get_config

SPEC = registry.spec_by_name("usr")


def episode(T=7):
    t = np.arange(T, dtype=np.float32)
    state = np.repeat(t[:, None], 39, 1) + np.arange(39, dtype=np.float32) / 100
    return {"action": np.stack([t, -t, t, t], 1), "action_abs": np.stack([t] * 4, 1),
            "keypose": np.zeros((T, 4), np.float32), "skill_segment": np.zeros(T, np.int32),
            "skill_label_id": np.zeros(T, np.int32),
            "language_embedding": np.ones((T, 384), np.float32),
            "observation": {"state": state, "proprio": state[:, :4].copy()},
            "episode_index": np.int64(3)}


def check(ex, T, H, L):
    t = np.arange(T)
    np.testing.assert_array_equal(ex["observation_future"]["state"][:, 0], np.minimum(t + H, T - 1))
    hist = ex["observation_history"]["state"][..., 0]
    assert hist.shape == (T, L)
    np.testing.assert_array_equal(hist, np.maximum(t[:, None] + np.arange(-L + 1, 1)[None], 0))
    np.testing.assert_array_equal(ex["observation"]["state"], ex["observation_history"]["state"][:, -1])
    np.testing.assert_array_equal(ex["action_chunk"][:, 0, 0], t)
    assert ex["action_chunk_mask"][T - 1].tolist() == [True] + [False] * (H - 1)
    assert ex["dataset_index"].tolist() == [2] * T


def test_examples_eager_and_in_tf_data():
    from atomskill_jax.data.tf_setup import tf

    c = get_config("tiny")
    H, L, T = int(c.model.horizon), int(c.model.history), 7
    transform = SPEC.trajectory_transform(c)
    ex = {k: v.numpy() if hasattr(v, "numpy") else v for k, v in transform(
        episode(T), dataset_index=2).items()}
    ex = tf.nest.map_structure(np.asarray, ex)
    check(ex, T, H, L)
    ds = tf.data.Dataset.from_tensors(episode(T)).map(lambda e: transform(e, dataset_index=2))
    check(next(iter(ds.as_numpy_iterator())), T, H, L)
    # The pipeline unbatches the examples: each is fake_batch's structure per row.
    fake = SPEC.fake_batch(c, 2)
    assert tf.nest.map_structure(lambda v: v.shape[1:], fake) == tf.nest.map_structure(
        lambda v: v.shape[1:], ex)


def test_history_normalised_per_dataset_row():
    keys = SPEC.normalizer_keys("action")
    assert keys["observation_history/state"] == "observation/state"
    assert keys["observation_future/proprio"] == "observation/proprio"

    def stats(mean):
        m = np.full(2, mean, np.float32)
        return {"observation/state": FieldStatistics(m, m * 0 + 2, m, m, m, m)}

    norm = Normalizer(keys=keys, statistics=[stats(0.0), stats(10.0)])
    x = np.full((2, 3, 2), 10.0, np.float32)  # [B, L, D]
    out = norm.normalize({"observation_history": {"state": x},
                          "dataset_index": np.array([0, 1], np.int32)})
    np.testing.assert_allclose(out["observation_history"]["state"][0], 5.0)
    np.testing.assert_allclose(out["observation_history"]["state"][1], 0.0)
    with pytest.raises(ValueError, match="dataset_index"):
        norm.normalize({"observation_history": {"state": x}})
