"""Re-annotation of an existing dataset: no new rollouts, bad shards cost only themselves."""

import os
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_builders.reannotate import reannotate_dataset_builder as rb
from tests import fake_vlm_server as fake


def _steps_by_episode(dataset_dir):
    builder = tfds.builder_from_directory(dataset_dir)
    out = {}
    for ep in tfds.as_numpy(builder.as_dataset(split="train")):
        rows = list(ep["steps"])
        out[ep["episode_metadata"]["episode_id"].decode()] = (
            {k: np.stack([r[k] for r in rows]) for k in rows[0] if k != "observation"},
            ep["episode_metadata"])
    return out


def test_rule_reannotation_reproduces_the_builders_labels(metaworld_rlds_dir, tmp_path):
    out_dir, report = rb.reannotate(metaworld_rlds_dir, str(tmp_path), annotator="rule")
    assert report["written"] == 4 and report["num_skipped"] == 0
    before, after = _steps_by_episode(metaworld_rlds_dir), _steps_by_episode(out_dir)
    assert before.keys() == after.keys()
    for eid, (steps, _) in before.items():
        for key in ("skill_segment", "skill_label", "skill_label_id", "is_keyframe",
                    "keypose", "action", "action_executed", "language_embedding"):
            np.testing.assert_array_equal(steps[key], after[eid][0][key], err_msg=f"{eid} {key}")


def test_proprio_signal_cuts_where_the_fingers_close(metaworld_rlds_dir, tmp_path):
    from atomskill_jax.skills.keyframes import segment_episode

    out_dir, report = rb.reannotate(metaworld_rlds_dir, str(tmp_path), annotator="rule",
                                    gripper_signal="proprio")
    assert report["written"] == 4 and out_dir.rstrip("/").split("/")[-2].endswith("_proprio")
    proprio = {ep["episode_metadata"]["episode_id"].decode():
               np.stack([r["observation"]["proprio"] for r in ep["steps"]])
               for ep in tfds.as_numpy(tfds.builder_from_directory(out_dir).as_dataset(
                   split="train"))}
    before, moved = _steps_by_episode(metaworld_rlds_dir), 0
    for eid, (steps, _) in _steps_by_episode(out_dir).items():
        want = segment_episode(steps["action"], proprio[eid], "metaworld_sawyer",
                               signal="proprio")
        np.testing.assert_array_equal(steps["is_keyframe"], want.is_keyframe, err_msg=eid)
        ends = np.flatnonzero(want.is_keyframe)
        np.testing.assert_array_equal(steps["keypose"][ends], steps["action_abs"][ends])
        moved += not np.array_equal(steps["is_keyframe"], before[eid][0]["is_keyframe"])
    assert moved, "the observed opening lags the command: some keyframe must move"
    with pytest.raises(ValueError, match="gripper_signal"):
        rb.reannotate(metaworld_rlds_dir, str(tmp_path), gripper_signal="force")


def test_vlm_reannotation_uses_the_endpoint(metaworld_rlds_dir, tmp_path):
    # Every request gets a free-text label; the backend maps it onto the vocabulary.
    def answer(request):
        prompt = str(request)
        label = "close the drawer by pushing it" if "drawer" in prompt else "grab the puck"
        return fake.ok(label=label, description="described by the fake VLM")

    with fake.FakeVLMServer(answer) as server:
        out_dir, report = rb.reannotate(
            metaworld_rlds_dir, str(tmp_path), annotator="vlm",
            annotator_options={"base_url": server.base_url, "model": "fake-vlm",
                               "backoff_s": 0.0, "cache_dir": str(tmp_path / "cache")})
        assert len(server.requests) >= 5  # one per segment: 2 + 2 pick-place x2, drawer x2
    assert report["written"] == 4
    for eid, (steps, meta) in _steps_by_episode(out_dir).items():
        assert meta["annotator"] == b"vlm"
        assert set(steps["skill_description"]) == {b"described by the fake VLM"}
        expected = b"close" if eid.startswith("drawer") else b"grasp"
        assert steps["skill_label"][0] == expected


def test_corrupt_shard_is_reported_and_other_shards_kept(metaworld_rlds_dir, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(metaworld_rlds_dir, source)
    shard = next(f for f in os.listdir(source) if ".tfrecord" in f)
    # Split the single shard into two files, then damage the second one.
    import tensorflow as tf
    records = list(tf.data.TFRecordDataset(str(source / shard)).as_numpy_iterator())
    os.remove(source / shard)
    prefix = shard.split(".tfrecord")[0] + ".tfrecord"
    for i, chunk in enumerate((records[:2], records[2:])):
        with tf.io.TFRecordWriter(str(source / f"{prefix}-{i:05d}-of-00002")) as w:
            for r in chunk:
                w.write(r)
    damaged = source / f"{prefix}-00001-of-00002"
    data = bytearray(damaged.read_bytes())
    # Inside the first record's payload: its CRC fails. Bits flipped, not zeroed: these
    # bytes can already be zeros (the builder's feature order is not fixed).
    data[40:60] = bytes(b ^ 0xFF for b in data[40:60])
    damaged.write_bytes(bytes(data))
    out_dir, report = rb.reannotate(str(source), str(tmp_path / "out"), annotator="rule")
    assert report["written"] == 2 and report["num_skipped"] == 1
    (reason,), = [list(report["skipped"])]
    assert "00001-of-00002" in reason and "unreadable record 0" in reason


def test_not_a_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset_info.json"):
        rb.reannotate(str(tmp_path), str(tmp_path / "out"))
