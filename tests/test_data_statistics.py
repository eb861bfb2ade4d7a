"""Dataset statistics: values against numpy, saved beside the dataset, loaded by name,
stale / missing / unreadable / non-finite files refused with the file named."""

import json
import os
import shutil

import numpy as np
import pytest

try:  # tests/ as a package or as a plain directory on sys.path
    from tests import synthetic_rlds
except ImportError:
    import synthetic_rlds
from atomskill_jax.data import sources, statistics, statistics_compute


@pytest.fixture()
def dataset_copy(tmp_path_factory, tmp_path):
    """A private copy (tests here write and corrupt statistics files beside it)."""
    original = synthetic_rlds.cached(tmp_path_factory, "state")
    target = tmp_path / "synthetic_rlds" / "1.0.0"
    shutil.copytree(original, target)
    for name in os.listdir(target):
        if name.startswith("atomskill_statistics"):
            os.remove(target / name)
    return str(target)


def test_statistics_match_numpy(dataset_copy):
    episodes = synthetic_rlds.read_episodes(dataset_copy)
    stats = statistics_compute.compute_statistics(sources.open_source(dataset_copy))
    assert stats.num_episodes == len(synthetic_rlds.DEFAULT_SEGMENTS)
    assert stats.num_steps == sum(sum(s) for s in synthetic_rlds.DEFAULT_SEGMENTS)
    for field, get in [("action", lambda e: e["action"]),
                       ("action_abs", lambda e: e["action_abs"]),
                       ("observation/proprio", lambda e: e["observation"]["proprio"]),
                       ("observation/state", lambda e: e["observation"]["state"])]:
        values = np.concatenate([get(e) for e in episodes]).astype(np.float64)
        fs = stats[field]
        np.testing.assert_allclose(fs.mean, values.mean(0), rtol=1e-6)
        np.testing.assert_allclose(fs.std, values.std(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(fs.min, values.min(0))
        np.testing.assert_allclose(fs.max, values.max(0))
        np.testing.assert_allclose(fs.p01, np.percentile(values, 1, axis=0), rtol=1e-6)
        np.testing.assert_allclose(fs.p99, np.percentile(values, 99, axis=0), rtol=1e-6)
    assert stats["action"].std[-1] == 0  # the constant "gripper" dimension


def test_saved_once_then_loaded_by_name(dataset_copy, monkeypatch):
    source = sources.open_source(dataset_copy)
    stats = statistics_compute.load_or_compute_statistics(source, write=True)
    path = statistics_compute.statistics_path(source)
    assert os.path.dirname(path) == dataset_copy and os.path.exists(path)
    saved = json.load(open(path))
    assert saved["num_steps"] == stats.num_steps and saved["fingerprint"]["num_episodes"] == 6

    def no_compute(*args, **kwargs):
        raise AssertionError("statistics recomputed although saved")
    monkeypatch.setattr(statistics_compute, "compute_statistics", no_compute)
    again = statistics_compute.load_or_compute_statistics(source)
    root = os.path.dirname(os.path.dirname(dataset_copy))
    by_name = statistics_compute.load_statistics("synthetic_rlds", data_dir=root)
    monkeypatch.setenv(sources.DATA_DIR_ENV, root)
    by_env = statistics_compute.load_statistics("synthetic_rlds")
    for loaded in (again, by_name, by_env):
        np.testing.assert_allclose(loaded["action"].mean, stats["action"].mean)
        np.testing.assert_allclose(loaded["observation/state"].p99,
                                   stats["observation/state"].p99)
    # Deployment reads the file alone, without TensorFlow or the dataset.
    np.testing.assert_allclose(statistics.read_statistics_file(path)["action_abs"].min,
                               stats["action_abs"].min)


def test_stale_statistics_detected(dataset_copy, tmp_path):
    # Statistics of another build (here: 3 episodes instead of 6) copied beside this one.
    other = synthetic_rlds.build(str(tmp_path / "other"), segments=((4, 4), (6,), (3, 3)))
    other_source = sources.open_source(other)
    statistics_compute.load_or_compute_statistics(other_source, write=True)
    source = sources.open_source(dataset_copy)
    path = statistics_compute.statistics_path(source)
    shutil.copy(statistics_compute.statistics_path(other_source), path)
    with pytest.raises(statistics.StatisticsError, match="stale") as err:
        statistics_compute.load_or_compute_statistics(source)
    assert path in str(err.value) and "num_episodes: 3 -> 6" in str(err.value)
    with pytest.raises(statistics.StatisticsError, match="stale"):
        statistics_compute.load_statistics(dataset_copy)
    unchecked = statistics_compute.load_statistics(dataset_copy, check_fingerprint=False)
    assert unchecked.num_episodes == 3


def test_missing_unreadable_nonfinite_files_named(dataset_copy):
    source = sources.open_source(dataset_copy)
    path = statistics_compute.statistics_path(source)
    with pytest.raises(statistics.StatisticsError, match="does not exist") as err:
        statistics_compute.load_statistics(dataset_copy)
    assert path in str(err.value)

    with open(path, "w") as f:
        f.write("{not json")
    with pytest.raises(statistics.StatisticsError, match="unreadable") as err:
        statistics_compute.load_or_compute_statistics(source)
    assert path in str(err.value)

    stats = statistics_compute.compute_statistics(source)
    data = stats.to_json()
    data["fields"]["action"]["std"][1] = float("nan")
    with open(path, "w") as f:
        json.dump(data, f)  # json writes NaN literally
    with pytest.raises(statistics.StatisticsError, match="action/std has non-finite") as err:
        statistics_compute.load_statistics(dataset_copy)
    assert path in str(err.value)

    del data["fields"]["action"]["p99"]
    data["fields"]["action"]["std"][1] = 1.0
    with open(path, "w") as f:
        json.dump(data, f)
    with pytest.raises(statistics.StatisticsError, match="malformed") as err:
        statistics.read_statistics_file(path)
    assert path in str(err.value)
