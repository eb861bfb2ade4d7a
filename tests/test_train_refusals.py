"""The trainer refuses, with the reason, rather than training wrong: a checkpoint it
cannot read (never a silent restart), statistics that do not fit the dataset. Also:
resume of a finished run, --overwrite, and what a workdir holds. In this process (8
fake devices) with the stand-in model."""

import json
import os
import shutil

import pytest

from atomskill_jax.data import sources, statistics, statistics_compute
from atomskill_jax.training import checkpoints, checksums, run_config, trainer
from tests.tiny_model import tiny_train_config


def _config(dataset_dir, **train):
    config = tiny_train_config(dataset_dir, real_model=False, **train)
    config.stage = "both"
    return config


@pytest.fixture(scope="module")
def trained(metaworld_rlds_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("trained")
    result = trainer.train(_config(metaworld_rlds_dir), str(workdir))
    return workdir, result


def test_workdir_holds_checkpoints_logs_and_config(trained):
    workdir, result = trained
    assert result["skill"]["step"] == 4 and result["sampler"]["step"] == 2
    config = json.load(open(workdir / "config.json"))
    assert config["model"]["state_dim"] > 0  # filled from the dataset
    for stage, last in (("skill", 4), ("sampler", 2)):
        lines = [json.loads(x) for x in open(workdir / stage / "metrics.jsonl")]
        assert lines[-1]["step"] == last
        assert {"loss", "grad_norm", "lr", "steps_per_sec", "examples_per_sec"} <= set(lines[-1])
        assert os.listdir(workdir / stage / "tensorboard")
        assets = checkpoints.read_assets(str(workdir / stage / "checkpoints"))
        assert assets["stage"] == stage and assets["statistics"][0]["num_steps"] > 0
    assert {"assets", "data", "params", "train_state"} <= set(
        os.listdir(workdir / "skill" / "checkpoints" / "4"))


def test_finished_run_is_resumed_not_retrained(trained, metaworld_rlds_dir):
    workdir, _ = trained
    before = open(workdir / "skill" / "metrics.jsonl").read()
    result = trainer.train(_config(metaworld_rlds_dir), str(workdir))
    assert result["skill"]["step"] == 4 and result["sampler"]["step"] == 2
    assert open(workdir / "skill" / "metrics.jsonl").read() == before


def test_unreadable_checkpoint_stops_the_run(trained, metaworld_rlds_dir, tmp_path):
    workdir = tmp_path / "w"
    shutil.copytree(trained[0], workdir)
    item = workdir / "skill" / "checkpoints" / "4" / "train_state"
    for name in os.listdir(item):  # the array data gone, the step directory still there
        path = item / name
        shutil.rmtree(path) if path.is_dir() else path.write_text("garbage")
    # As saved before checksum manifests existed: nothing tells the damage apart from a
    # config mismatch, so the restore itself must refuse (with a manifest, the resume
    # sets the step aside instead: tests/test_train_faults.py).
    os.remove(workdir / "skill" / "checkpoints" / "4" / checksums.FILENAME)
    with pytest.raises(checkpoints.CheckpointError, match=r"checkpoints/4 exists but cannot"):
        trainer.train(_config(metaworld_rlds_dir), str(workdir))
    # A config whose model no longer matches the checkpoint: also refused, not retrained.
    workdir2 = tmp_path / "w2"
    shutil.copytree(trained[0], workdir2)
    changed = _config(metaworld_rlds_dir, skill_steps=2)
    changed.model.width = 32
    changed.stage = "skill"
    # The workdir's config.json catches it first, naming the key...
    with pytest.raises(run_config.ConfigMismatchError, match=r"model\.width: 16 -> 32"):
        trainer.train(changed, str(workdir2))
    # ...and without one (a hand-made workdir) the checkpoint's shapes refuse it.
    os.remove(workdir2 / "config.json")
    with pytest.raises(checkpoints.CheckpointError, match="--overwrite"):
        trainer.train(changed, str(workdir2))
    # --overwrite starts afresh.
    result = trainer.train(changed, str(workdir2), overwrite=True)
    assert result["skill"]["step"] == 2 and not os.path.exists(workdir2 / "sampler")


def _dataset_copy(metaworld_rlds_dir, tmp_path):
    copy = tmp_path / "dataset"
    shutil.copytree(metaworld_rlds_dir, copy)
    source = sources.open_source(str(copy))
    statistics_compute.load_or_compute_statistics(source)
    return copy, statistics_compute.statistics_path(source)


@pytest.mark.parametrize("tamper,message", [
    ("narrow", "does not cover the data"),
    ("shape", "has shape"),
    ("missing", "has no field"),
])
def test_statistics_that_do_not_fit_are_refused(metaworld_rlds_dir, tmp_path, tamper, message):
    copy, path = _dataset_copy(metaworld_rlds_dir, tmp_path)
    data = json.load(open(path))
    if tamper == "narrow":  # another dataset's range: passes the fingerprint, not the data
        field = data["fields"]["action_abs"]
        field["max"] = [lo + 0.3 * (hi - lo) for lo, hi in zip(field["min"], field["max"])]
    elif tamper == "shape":
        for name in ("mean", "std", "min", "max", "p01", "p99"):
            data["fields"]["observation/proprio"][name] = data["fields"]["observation/proprio"][name][:-1]
    else:
        del data["fields"]["observation/state"]
    statistics.write_statistics_file(statistics.DatasetStatistics.from_json(data), path)
    with pytest.raises(statistics.StatisticsError, match=message):
        trainer.train(_config(copy), str(tmp_path / "w"))
    assert not os.path.exists(tmp_path / "w" / "skill")  # refused before any training
