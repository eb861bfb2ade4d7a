"""Damaged data, as a user meets it: truncated or overwritten TFRecord shards, shards
changed after their statistics were saved, a broken dataset_info.json. Each through
`atomskill stats` and the training pipeline; the message names the file at fault and
the command that rebuilds it, and the CLI prints no traceback."""

import json
import logging
import os
import shutil

import numpy as np
import pytest

try:  # tests/ as a package or as a plain directory on sys.path
    from tests import synthetic_rlds
except ImportError:
    import synthetic_rlds
from atomskill_jax import cli
from atomskill_jax.data import config as data_config
from atomskill_jax.data import (pipeline, read_errors, rebuild_hint, sources, statistics,
                                statistics_compute)
from atomskill_jax.data.tf_setup import tf
from atomskill_jax.training import preflight


@pytest.fixture()
def dataset(metaworld_rlds_dir, tmp_path):
    """A private copy of the MetaWorld fixture at <root>/<builder>/<config>/<version>
    (so the rebuild command can name --out), without saved statistics."""
    parts = os.path.normpath(metaworld_rlds_dir).split(os.sep)[-3:]
    target = os.path.join(tmp_path, "data", *parts)
    shutil.copytree(metaworld_rlds_dir, target)  # keeps mtimes, like a real copy
    _remove_statistics(target)
    return target


@pytest.fixture()
def run_stats(capsys):
    """`atomskill stats --data=DIR` in process: (exit status, stderr)."""
    ours = logging.getLogger("atomskill_jax")
    saved = (list(ours.handlers), ours.level, ours.propagate)
    capsys.readouterr()

    def run(directory):
        status = cli.main(["stats", f"--data={directory}"])
        return status, capsys.readouterr().err

    yield run
    ours.handlers[:], ours.level, ours.propagate = saved  # the CLI set up its own logging


def _shard(directory):
    (name,) = [n for n in os.listdir(directory) if ".tfrecord-" in n]
    return os.path.join(directory, name)


def _config(directory):
    c = data_config.default_data_config()
    c.datasets = ({"name": directory, "weight": 1.0},)
    c.batch_size, c.horizon, c.skill_resample_length = 4, 4, 5
    c.episode_shuffle_buffer, c.example_shuffle_buffer = 2, 16
    c.num_parallel_calls, c.prefetch = 2, 1
    return c


def _overwrite(path, where=0.5, keep_mtime=False):
    """64 bytes at `where` (a fraction of the file) overwritten."""
    before = os.stat(path)
    with open(path, "r+b") as f:
        f.seek(int(before.st_size * where))
        f.write(b"\xa5" * 64)
    if keep_mtime:  # damage the size/mtime check cannot see (bit rot)
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def _assert_rebuild_advice(text, directory):
    root = os.path.dirname(os.path.dirname(os.path.dirname(directory)))
    assert "atomskill build-data metaworld --tasks=pick-place,drawer-close" in text, text
    assert "--episodes-per-task=2" in text and f"--out={root}" in text, text
    assert "--overwrite" in text, text


def _assert_cli_message(status, err, *needles):
    assert status == 2, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("atomskill stats:")]
    assert len(lines) == 1, err  # one message
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_truncated_shard_named(dataset, run_stats):
    shard = _shard(dataset)
    with open(shard, "r+b") as f:
        f.truncate(os.path.getsize(shard) * 2 // 3)
    status, err = run_stats(dataset)
    line = _assert_cli_message(status, err, f"shard {shard} is damaged: truncated record")
    _assert_rebuild_advice(line, dataset)
    with pytest.raises(read_errors.ShardError, match="truncated record") as raised:
        pipeline.make_pipeline(_config(dataset))
    assert shard in str(raised.value)
    _assert_rebuild_advice(str(raised.value), dataset)


def test_overwritten_shard_named(dataset, run_stats):
    shard = _shard(dataset)
    _overwrite(shard)
    status, err = run_stats(dataset)
    line = _assert_cli_message(status, err, f"shard {shard} is damaged: corrupted record")
    _assert_rebuild_advice(line, dataset)
    with pytest.raises(read_errors.ShardError, match="corrupted record") as raised:
        pipeline.make_pipeline(_config(dataset))
    assert str(raised.value).startswith(f"shard {shard} is damaged")  # the cause first


def test_damage_unseen_by_the_fingerprint_is_named_when_training_reads_it(dataset):
    config = _config(dataset)
    statistics_compute.load_or_compute_statistics(sources.open_source(dataset), write=True)
    _overwrite(_shard(dataset), where=0.01, keep_mtime=True)  # the first episode
    pipe = pipeline.make_pipeline(config)  # the fingerprint cannot tell
    with pytest.raises(read_errors.ShardError, match="corrupted record") as raised:
        preflight.check_statistics(pipe, config, num_batches=2)
    assert _shard(dataset) in str(raised.value)
    with pytest.raises(read_errors.ShardError, match="corrupted record") as raised:
        iterator = pipe.iterator()
        for _ in range(50):
            iterator.next_local()
    assert _shard(dataset) in str(raised.value)
    _assert_rebuild_advice(str(raised.value), dataset)


def _split_into_shards(directory, lengths):
    """Rewrite the single shard of `directory` as len(lengths) shards (as tfds names
    them), dataset_info.json updated to list them."""
    (old,) = [n for n in os.listdir(directory) if ".tfrecord-" in n]
    records = [r.numpy() for r in tf.data.TFRecordDataset(os.path.join(directory, old))]
    assert sum(lengths) == len(records)
    os.remove(os.path.join(directory, old))
    prefix = old.rsplit("-", 3)[0]  # <name>-train.tfrecord
    paths = []
    for i, n in enumerate(lengths):
        paths.append(os.path.join(directory, f"{prefix}-{i:05d}-of-{len(lengths):05d}"))
        with tf.io.TFRecordWriter(paths[-1]) as writer:
            for record in records[sum(lengths[:i]):sum(lengths[:i + 1])]:
                writer.write(record)
    info_path = os.path.join(directory, "dataset_info.json")
    with open(info_path) as f:
        info = json.load(f)
    info["splits"][0]["shardLengths"] = [str(n) for n in lengths]
    with open(info_path, "w") as f:
        json.dump(info, f)
    return paths


def _three_shard_copy(tmp_path_factory, tmp_path):
    """A private copy of the synthetic dataset, without statistics, in 3 shards of 2."""
    directory = str(tmp_path / "synthetic_rlds" / "1.0.0")
    shutil.copytree(synthetic_rlds.cached(tmp_path_factory, "state"), directory)
    _remove_statistics(directory)
    return directory, _split_into_shards(directory, [2, 2, 2])


def _remove_statistics(directory):
    for name in os.listdir(directory):
        if name.startswith("atomskill_statistics"):
            os.remove(os.path.join(directory, name))


def test_the_damaged_one_of_several_interleaved_shards_is_named(tmp_path_factory, tmp_path):
    directory, paths = _three_shard_copy(tmp_path_factory, tmp_path)
    statistics_compute.load_or_compute_statistics(sources.open_source(directory), write=True)
    _overwrite(paths[1], keep_mtime=True)  # seen only when read
    config = _config(directory)
    config.horizon, config.skill_resample_length = 2, 3
    pipe = pipeline.make_pipeline(config)
    with pytest.raises(read_errors.ShardError, match="corrupted record") as raised:
        iterator = pipe.iterator()
        for _ in range(100):
            iterator.next_local()
    message = str(raised.value)
    assert message.startswith(f"shard {paths[1]} is damaged")
    assert paths[0] not in message and paths[2] not in message
    assert [d.path for d in raised.value.damage] == [paths[1]]


def test_shard_cut_at_a_record_boundary_is_named(tmp_path_factory, tmp_path, run_stats):
    # Every record left is intact, so TensorFlow reads it without complaint.
    directory, paths = _three_shard_copy(tmp_path_factory, tmp_path)
    records = [r.numpy() for r in tf.data.TFRecordDataset(paths[2])]
    with tf.io.TFRecordWriter(paths[2]) as writer:
        writer.write(records[0])
    status, err = run_stats(directory)
    _assert_cli_message(status, err, f"shard {paths[2]} is damaged: holds 1 records but "
                                     f"dataset_info.json lists 2")


def test_shard_damaged_after_statistics_refused(dataset, run_stats):
    assert run_stats(dataset)[0] == 0
    shard = _shard(dataset)
    _overwrite(shard)
    status, err = run_stats(dataset)
    line = _assert_cli_message(status, err, f"shard {shard} is damaged: corrupted record")
    _assert_rebuild_advice(line, dataset)
    with pytest.raises(read_errors.ShardError, match="corrupted record"):
        pipeline.make_pipeline(_config(dataset))


def test_rewritten_intact_shard_makes_statistics_stale_but_a_copy_does_not(
        dataset, run_stats, tmp_path):
    assert run_stats(dataset)[0] == 0
    path = statistics_compute.statistics_path(sources.open_source(dataset))
    # A copy with fresh mtimes (cp without -p) holds the same bytes: still fresh.
    copy = os.path.join(tmp_path, "copy", *dataset.split(os.sep)[-3:])
    os.makedirs(copy)
    for name in os.listdir(dataset):
        shutil.copy(os.path.join(dataset, name), copy)
    assert os.stat(_shard(copy)).st_mtime_ns != os.stat(_shard(dataset)).st_mtime_ns
    statistics_compute.load_statistics(copy)
    # The same records in another order: every record intact, the bytes other.
    shard = _shard(dataset)
    records = [r.numpy() for r in tf.data.TFRecordDataset(shard)]
    with tf.io.TFRecordWriter(shard) as writer:
        for record in reversed(records):
            writer.write(record)
    status, err = run_stats(dataset)
    line = _assert_cli_message(status, err, f"statistics file {path} is stale",
                               f"shard {os.path.basename(shard)}: same size, other bytes")
    assert "Delete it to recompute" in line
    with pytest.raises(statistics.StatisticsError, match="stale"):
        pipeline.make_pipeline(_config(dataset))


def test_statistics_without_shard_fingerprint_recomputed_once(dataset, caplog, monkeypatch):
    # An in-process `atomskill train` elsewhere in the session stops propagation.
    monkeypatch.setattr(logging.getLogger("atomskill_jax"), "propagate", True)
    source = sources.open_source(dataset)
    stats = statistics_compute.load_or_compute_statistics(source, write=True)
    path = statistics_compute.statistics_path(source)
    old = stats.to_json()
    del old["fingerprint"]["shards"]  # as written before shard fingerprints
    with open(path, "w") as f:
        json.dump(old, f)
    with caplog.at_level(logging.WARNING, "atomskill_jax"):
        again = statistics_compute.load_or_compute_statistics(source, write=True)
    assert "predates shard fingerprints" in caplog.text
    assert "differ from the old file" not in caplog.text  # same data, same numbers
    np.testing.assert_allclose(again["action"].mean, stats["action"].mean)
    saved = statistics.read_statistics_file(path)
    assert set(saved.fingerprint["shards"]) == {os.path.basename(_shard(dataset))}
    # An old file whose numbers the data no longer gives: replaced, and said so.
    old["fields"]["action"]["mean"][0] += 1.0
    with open(path, "w") as f:
        json.dump(old, f)
    caplog.clear()
    with caplog.at_level(logging.WARNING, "atomskill_jax"):
        statistics_compute.load_or_compute_statistics(source, write=True)
    assert "differ from the old file in action" in caplog.text


@pytest.mark.parametrize("damage", ["bad_json", "no_splits", "no_shard_lengths"])
def test_invalid_dataset_info_named(dataset, run_stats, damage):
    info_path = os.path.join(dataset, "dataset_info.json")
    with open(info_path) as f:
        info = json.load(f)
    if damage == "bad_json":
        text = json.dumps(info)[:-40]
    elif damage == "no_splits":
        text = json.dumps({k: v for k, v in info.items() if k != "splits"})
    else:
        del info["splits"][0]["shardLengths"]
        text = json.dumps(info)
    with open(info_path, "w") as f:
        f.write(text)
    expected = {"bad_json": "is not valid JSON", "no_splits": "key 'splits' missing",
                "no_shard_lengths": "'shardLengths' missing"}[damage]
    status, err = run_stats(dataset)
    line = _assert_cli_message(status, err, f"{info_path}", expected)
    assert line.startswith(f"atomskill stats: {info_path}")  # the file at fault first
    _assert_rebuild_advice(line, dataset)
    with pytest.raises(sources.DatasetError, match=expected) as raised:
        pipeline.make_pipeline(_config(dataset))
    assert info_path in str(raised.value)


def test_rebuild_advice_for_a_reannotated_copy(tmp_path):
    directory = tmp_path / "out" / "reannotated" / "mw_vlm" / "1.0.0"
    directory.mkdir(parents=True)
    (directory / "dataset_info.json").write_text(json.dumps(
        {"name": "reannotated", "configDescription": "/data/src/1.0.0 re-annotated by vlm"}))
    advice = rebuild_hint.rebuild_advice(str(directory))
    assert f"delete {directory}, then run" in advice
    assert (f"`atomskill annotate --data=/data/src/1.0.0 --annotator=vlm "
            f"--out={tmp_path / 'out'}`") in advice


def test_cli_error_one_line_without_traceback_unless_asked(run_stats, monkeypatch):
    def fails(args):  # a TensorFlow error no module explained, as tf.data raises it
        raise tf.errors.DataLossError(None, None, "{{function_node __wrapped__X}} truncated "
                                                  "record at 12\nmore [Op:IteratorGetNext]")
    monkeypatch.setattr(cli, "_cmd_stats", fails)
    monkeypatch.delenv(cli.TRACEBACK_ENV, raising=False)
    status, err = run_stats("anything")
    assert status == 2 and err == "atomskill stats: DataLossError: truncated record at 12\n"
    monkeypatch.setenv(cli.TRACEBACK_ENV, "1")
    with pytest.raises(tf.errors.DataLossError):
        run_stats("anything")


def test_calibration_and_plot_reads_name_a_damaged_shard(dataset, tmp_path):
    """The readers outside the training pipeline (the keypose-trigger calibration, the
    plot's episode index) name the damaged shard too, not a raw DataLossError."""
    from atomskill_jax.methods.atomskill import skill_embeddings
    from atomskill_jax.methods.atomskill import calibration

    config = _config(dataset)
    stats = statistics_compute.load_or_compute_statistics(sources.open_source(dataset),
                                                          write=True)
    _overwrite(_shard(dataset), where=0.01, keep_mtime=True)  # the first episode
    config_json = {"data": json.loads(config.to_json_best_effort())}
    with pytest.raises(read_errors.ShardError, match="corrupted record") as raised:
        calibration.compute_calibration([dataset], config_json, [stats.to_json()], "train")
    assert _shard(dataset) in str(raised.value)
    with pytest.raises(read_errors.ShardError, match="corrupted record") as raised:
        skill_embeddings.episode_tasks(sources.open_source(dataset))
    assert _shard(dataset) in str(raised.value)
