"""Data shards (data.shards, pipeline.shard_layout) in one process: the layout and its
refusals; a data position saved under another shard count restarts the data with a
warning while the train state resumes; positions named by the older scheme restore.
That one process reading two shards batches and resumes as two processes reading one
each is tests/test_multihost_training.py (real processes)."""

from __future__ import annotations

import logging
import os

import jax
import numpy as np
import pytest

from tests import synthetic_rlds
from tests.multihost_worker import train_config

SEGMENTS = ((3, 3), (2, 4), (4, 2), (3, 3))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    # The same dataset as tests/test_multihost_training.py (built once per session).
    return synthetic_rlds.cached(tmp_path_factory, "multihost", segments=SEGMENTS)


def _data_config(dataset, shards: int):
    return train_config(dataset, 2, shards).data


@pytest.fixture(scope="module")
def pipes(dataset):
    """{shards: pipeline} for data.shards 2 and 0 (one per process: 1 here)."""
    from atomskill_jax.data import pipeline

    return {n: pipeline.make_pipeline(_data_config(dataset, n)) for n in (2, 0)}


def _assert_same(a: dict, b: dict) -> None:
    flat_a, flat_b = jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)
    assert len(flat_a) == len(flat_b)
    for (path, x), y in zip(flat_a, flat_b):
        np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


def test_shard_layout_and_its_refusals(dataset):
    from atomskill_jax.data.pipeline import shard_layout

    config = _data_config(dataset, 0)  # batch size 8
    assert shard_layout(config, 1, 2) == ([1], 2)  # 0: one shard per process
    config.shards = 4
    assert shard_layout(config, 1, 2) == ([2, 3], 4)
    assert shard_layout(config, 0, 1) == ([0, 1, 2, 3], 4)
    config.shards = 3
    with pytest.raises(ValueError, match=r"data.shards=3 does not split over 2 processes"):
        shard_layout(config, 0, 2)
    with pytest.raises(ValueError, match=r"batch size 8 does not split over the 3 data shards"):
        shard_layout(config, 0, 1)


def test_another_shard_count_restarts_the_data_with_a_warning(pipes, tmp_path, caplog):
    import jax.numpy as jnp

    from atomskill_jax.data.iterator import ShardLayoutError
    from atomskill_jax.training import checkpoints

    saved_under_two = pipes[2].iterator()
    saved_under_two.next_local()
    manager = checkpoints.make_manager(str(tmp_path / "ckpt"), keep=1, async_save=False)
    state = {"w": jnp.arange(3.0)}
    checkpoints.save(manager, 1, params=state, train_state=state, iterator=saved_under_two,
                     assets={}, force=True)
    one_shard = pipes[0]  # one shard per process, this one process
    with pytest.raises(ShardLayoutError, match=r"saved as 2 data shard\(s\); this pipeline "
                                               r"reads 1") as err:
        one_shard.iterator().restore(str(tmp_path / "ckpt" / "1" / "data"))
    assert err.value.saved_counts == [2]
    iterator = one_shard.iterator()
    abstract = {"w": jax.ShapeDtypeStruct((3,), jnp.float32)}
    with caplog.at_level(logging.WARNING):
        restored = checkpoints.restore_train_state(manager, 1, abstract, iterator)
    manager.close()
    np.testing.assert_array_equal(restored["w"], np.arange(3.0))
    assert "saved for 2 data shard(s), this run reads 1" in caplog.text
    assert "data order starts afresh" in caplog.text
    _assert_same(iterator.next_local(), one_shard.iterator().next_local())  # the first batch


def test_positions_saved_before_shards_existed_restore(pipes, tmp_path):
    """Older checkpoints name the state by process ('data_iterator_process0_of1')."""
    pipe = pipes[0]
    saved = pipe.iterator()
    saved.next_local()
    (prefix,) = saved.save(str(tmp_path))
    for name in os.listdir(tmp_path):  # rename to the old scheme
        os.rename(tmp_path / name, tmp_path / name.replace("shard0_of1", "process0_of1"))
    assert os.path.basename(prefix) == "data_iterator_shard0_of1"
    resumed = pipe.iterator()
    resumed.restore(str(tmp_path))
    _assert_same(resumed.next_local(), saved.next_local())
