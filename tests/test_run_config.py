"""W/config.json is fixed at a run's first start: a re-run may change how long and
where it runs (the train block, the mesh, the data directory), never what it learns."""

import json

import pytest

from atomskill_jax.training import run_config

BASE = {"seed": 0, "stage": "both",
        "model": {"width": 16, "decoder": {"predict_keypose": True}},
        "data": {"data_dir": "/a", "batch_size": 8, "seed": 0},
        "train": {"skill_steps": 4, "log_every": 1}}


def _changed(**paths):
    config = json.loads(json.dumps(BASE))
    for path, value in paths.items():
        node = config
        *parents, leaf = path.split("__")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


def test_first_run_writes_and_an_identical_rerun_leaves_it(tmp_path):
    run_config.record(str(tmp_path), BASE)
    path = tmp_path / "config.json"
    assert json.load(open(path)) == BASE
    before = path.stat().st_mtime_ns
    run_config.record(str(tmp_path), json.loads(json.dumps(BASE)))
    assert path.stat().st_mtime_ns == before  # not rewritten


def test_schedule_changes_are_kept_and_written(tmp_path):
    run_config.record(str(tmp_path), BASE)
    longer = _changed(train__skill_steps=8, data__data_dir="/moved", stage="sampler")
    run_config.record(str(tmp_path), longer)
    assert json.load(open(tmp_path / "config.json")) == longer


@pytest.mark.parametrize("change,key", [
    ({"model__decoder__predict_keypose": False}, "model.decoder.predict_keypose: true -> false"),
    ({"data__seed": 3}, "data.seed: 0 -> 3"),
    ({"seed": 1}, "seed: 0 -> 1"),
    ({"data__batch_size": 16}, "data.batch_size: 8 -> 16"),
])
def test_learning_changes_are_refused_with_the_key(tmp_path, change, key):
    run_config.record(str(tmp_path), BASE)
    with pytest.raises(run_config.ConfigMismatchError, match="--overwrite") as e:
        run_config.record(str(tmp_path), _changed(**change))
    assert key in str(e.value)
    assert json.load(open(tmp_path / "config.json")) == BASE  # left as it was


def test_a_key_added_or_removed_counts_as_a_change(tmp_path):
    run_config.record(str(tmp_path), BASE)
    added = _changed(model__extra=1)
    with pytest.raises(run_config.ConfigMismatchError, match=r"model\.extra: \(absent\) -> 1"):
        run_config.record(str(tmp_path), added)


def test_unreadable_config_names_the_file(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(run_config.ConfigMismatchError, match="config.json cannot be read"):
        run_config.record(str(tmp_path), BASE)


def test_only_the_writing_process_writes(tmp_path):
    run_config.record(str(tmp_path), BASE, write=False)
    assert not (tmp_path / "config.json").exists()
