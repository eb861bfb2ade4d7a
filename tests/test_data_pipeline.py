"""The whole pipeline: seeded order, save/restore (also in a new process), mixing
weights, unique segment ids, batches on an 8-device mesh, clear errors."""

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import jax
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

try:  # tests/ as a package or as a plain directory on sys.path
    from tests import synthetic_rlds
except ImportError:
    import synthetic_rlds
from atomskill_jax.data import config as data_config
from atomskill_jax.data import pipeline, sources, traj_transforms
from atomskill_jax.training.mesh import make_mesh


def _config(*paths, weights=None, **overrides):
    c = data_config.default_data_config()
    weights = weights or [1.0] * len(paths)
    c.datasets = tuple({"name": p, "weight": w} for p, w in zip(paths, weights))
    c.use_state = True
    c.batch_size = 8
    c.horizon = 4
    c.skill_resample_length = 5
    c.image_size = (8, 8)
    c.episode_shuffle_buffer = 4
    c.example_shuffle_buffer = 64
    c.num_parallel_calls = 2
    c.prefetch = 1
    for key, value in overrides.items():
        c[key] = value
    return c


def _leaves(batch):
    return [np.asarray(x) for x in jax.tree.leaves(batch)]


def _same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(_leaves(a), _leaves(b)))


def _take(it, n):
    return [it.next_local() for _ in range(n)]


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory):
    return synthetic_rlds.cached(tmp_path_factory, "state")


@pytest.fixture(scope="module")
def images_dir(tmp_path_factory):
    return synthetic_rlds.cached(tmp_path_factory, "images", cameras=("front",))


def test_order_is_a_function_of_the_seed(metaworld_rlds_dir):
    pipe = pipeline.make_pipeline(_config(metaworld_rlds_dir))
    first = _take(pipe.iterator(), 3)
    again = _take(pipe.iterator(), 3)  # a second iterator starts at the seed's start too
    other = _take(pipeline.make_pipeline(_config(metaworld_rlds_dir, seed=1)).iterator(), 3)
    assert all(_same(a, b) for a, b in zip(first, again))
    assert not all(_same(a, b) for a, b in zip(first, other))


CHILD = textwrap.dedent("""
    import json, sys
    import ml_collections, numpy as np, jax
    from atomskill_jax.data import pipeline
    config = ml_collections.ConfigDict(json.loads(sys.argv[1]))
    it = pipeline.make_pipeline(config).iterator()
    it.restore(sys.argv[2])
    print("restored at", it.batches_read)
    batches = [it.next_local() for _ in range(int(sys.argv[3]))]
    np.savez(sys.argv[4], *[x for b in batches for x in jax.tree.leaves(b)])
""")


def test_restore_gives_identical_batches_in_process_and_in_a_new_process(images_dir, tmp_path):
    config = _config(images_dir, cameras=("front",), augment=True)
    it = pipeline.make_pipeline(config).iterator()
    _take(it, 3)
    it.save(str(tmp_path / "state"))
    expected = _take(it, 4)

    resumed = pipeline.make_pipeline(config).iterator()
    resumed.restore(str(tmp_path / "state"))
    assert resumed.batches_read == 3
    assert all(_same(a, b) for a, b in zip(expected, _take(resumed, 4)))

    out = tmp_path / "child.npz"
    result = subprocess.run(
        [sys.executable, "-c", CHILD, config.to_json(), str(tmp_path / "state"), "4", str(out)],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "restored at 3" in result.stdout
    child = np.load(out)
    flat = [x for b in expected for x in _leaves(b)]
    assert len(child.files) == len(flat)
    for i, x in enumerate(flat):
        np.testing.assert_array_equal(child[f"arr_{i}"], x)
    assert any(x.dtype == np.uint8 and x.ndim == 4 for x in flat)  # images were compared


def test_mixing_follows_weights(metaworld_rlds_dir):
    # The same dataset twice: two sources with their own index and segment ids.
    config = _config(metaworld_rlds_dir, metaworld_rlds_dir, weights=[3.0, 1.0], batch_size=32)
    batches = _take(pipeline.make_pipeline(config).iterator(), 25)
    index = np.concatenate([b["dataset_index"] for b in batches])
    assert set(index.tolist()) == {0, 1}
    assert abs((index == 0).mean() - 0.75) < 0.06
    uids = np.concatenate([b["skill"]["uid"] for b in batches])
    assert all(traj_transforms.decode_segment_uid(u)[0] == i for u, i in zip(uids, index))


def test_segment_ids_unique_across_datasets_episodes_segments(state_dir, tmp_path_factory):
    other = synthetic_rlds.cached(tmp_path_factory, "other", segments=((3, 5), (8,), (6, 6)))
    config = _config(state_dir, other, batch_size=1)
    examples = list(pipeline.make_pipeline(config, train=False).iterator())
    segments = {}
    for ex in examples:
        key = (int(ex["dataset_index"][0]), int(ex["skill"]["start"][0]),
               int(ex["skill"]["end"][0]), float(ex["keypose"][0, 0]))
        segments.setdefault(int(ex["skill"]["uid"][0]), set()).add(key)
        assert ex["skill"]["uid"].dtype == np.int64
    num_segments = sum(len(s) for s in synthetic_rlds.DEFAULT_SEGMENTS) + 5
    assert len(examples) == sum(map(sum, synthetic_rlds.DEFAULT_SEGMENTS)) + 28
    assert len(segments) == num_segments  # one uid per segment ...
    assert all(len(keys) == 1 for keys in segments.values())  # ... and one segment per uid
    decoded = {traj_transforms.decode_segment_uid(u)[:2] for u in segments}
    assert {d for d, _ in decoded} == {0, 1} and len(decoded) == 9  # 6 + 3 episodes


def test_each_process_reads_its_own_episodes(state_dir):
    config = _config(state_dir, batch_size=2)  # global: 1 per process
    seen = []
    for index in range(2):
        pipe = pipeline.make_pipeline(config, train=False, process_index=index, process_count=2)
        seen.append({traj_transforms.decode_segment_uid(ex["skill"]["uid"][0])[1]
                     for ex in pipe.iterator()})
    assert not seen[0] & seen[1] and seen[0] | seen[1] == set(range(6))


def test_batches_on_the_mesh_normalised(state_dir):
    assert jax.device_count() == 8
    mesh = make_mesh(data=4, fsdp=2)
    config = _config(state_dir, batch_size=16)
    pipe = pipeline.make_pipeline(config)
    raw = jax.tree.map(np.asarray, next(iter(pipe.dataset())))
    batch = next(pipe.iterator(mesh))
    chunk = batch["action_chunk"]
    assert isinstance(chunk, jax.Array) and chunk.shape == (16, 4, 3)
    assert chunk.sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"))
    assert len(chunk.addressable_shards) == 8
    assert all(s.data.shape == (2, 4, 3) for s in chunk.addressable_shards)
    expected = pipe.normalizer.normalize(raw)
    for got, want in zip(jax.tree.leaves(batch), jax.tree.leaves(expected)):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6)
    stats = pipe.statistics[0]["action"]
    np.testing.assert_allclose(expected["action_chunk"][..., 0],
                               (raw["action_chunk"][..., 0] - stats.mean[0]) / stats.std[0],
                               rtol=1e-5)
    np.testing.assert_array_equal(expected["action_chunk"][..., 2],
                                  raw["action_chunk"][..., 2] - 1.0)  # constant dim: shift only
    with pytest.raises(ValueError, match="multiple of 8"):
        pipeline.make_pipeline(_config(state_dir, batch_size=12)).iterator(mesh)


def test_episodes_shorter_than_horizon_are_padded(tmp_path):
    short = synthetic_rlds.build(str(tmp_path), segments=((2, 3), (4,), (1, 1)))
    batch = next(pipeline.make_pipeline(_config(short, horizon=32)).iterator())
    assert batch["action_chunk"].shape == (8, 32, 3)
    np.testing.assert_array_equal(batch["action_chunk_mask"].sum(1),
                                  batch["episode_length"] - batch["timestep"])


class _NotRlds(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A valid tensorflow-datasets dataset that is not RLDS (no `steps`)."""

    VERSION = tfds.core.Version("1.0.0")
    url_infos = None  # nothing to download, no checksum file to look up

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
            {"x": tfds.features.Scalar(dtype=np.int32)}))

    def _split_generators(self, dl_manager):
        return {"train": ((i, {"x": i}) for i in range(2))}

    def _generate_examples(self):
        raise NotImplementedError


def test_dataset_resolution_and_errors(state_dir, tmp_path):
    with pytest.raises(sources.DatasetError, match="no such directory"):
        sources.open_source("no_such_dataset", data_dir=str(tmp_path))
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("hello")
    with pytest.raises(sources.DatasetError, match="not an RLDS dataset"):
        sources.open_source(str(junk))
    (junk / "dataset_info.json").write_text("{garbage")
    with pytest.raises(sources.DatasetError, match="is not valid JSON") as err:
        sources.open_source(str(junk))
    assert str(junk / "dataset_info.json") in str(err.value)

    table = _NotRlds(data_dir=str(tmp_path / "table"))
    table.download_and_prepare()
    with pytest.raises(sources.DatasetError, match="is not RLDS: it has no nested 'steps'"):
        sources.open_source(table.data_dir)

    root = tmp_path / "root"
    for version in ("0.9.0", "1.2.0"):
        (root / "mw" / "mt1" / version).mkdir(parents=True)
        for name in os.listdir(state_dir):
            os.symlink(os.path.join(state_dir, name), root / "mw" / "mt1" / version / name)
    assert sources.resolve_dataset_dir("mw/mt1", str(root)).endswith("mw/mt1/1.2.0")
    with pytest.raises(sources.DatasetError, match="several configs: mt1"):
        sources.resolve_dataset_dir("mw", str(root))

    with pytest.raises(sources.DatasetError, match="image_wrist") as err:
        pipeline.make_pipeline(_config(state_dir, cameras=("wrist",)))
    assert state_dir in str(err.value)


def test_state_required_only_when_asked(tmp_path):
    no_state = synthetic_rlds.build(str(tmp_path), segments=((3, 4), (5,)), state=False)
    with pytest.raises(sources.DatasetError, match="observation/state"):
        pipeline.make_pipeline(_config(no_state))
    batch = next(pipeline.make_pipeline(_config(no_state, use_state=False)).iterator())
    assert set(batch["observation"]) == {"proprio"}


def test_config_round_trips_through_json():
    config = data_config.default_data_config()
    back = ml_collections.ConfigDict(json.loads(config.to_json()))
    assert pipeline.dataset_entries(back) == [("metaworld_scripted", 1.0)]
    config.datasets = ("a/b:2", "gs://bucket/c/1.0.0")  # as --config.data.datasets=... gives
    assert pipeline.dataset_entries(config) == [("a/b", 2.0), ("gs://bucket/c/1.0.0", 1.0)]


def test_normalisation_and_statistics_files_need_no_tensorflow():
    code = ("import sys; import atomskill_jax.data.normalization, atomskill_jax.data.statistics; "
            "assert 'tensorflow' not in sys.modules, 'TensorFlow imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_given_statistics_normalise_and_the_datas_own_still_count_its_size(state_dir):
    own = pipeline.make_pipeline(_config(state_dir)).statistics[0]
    foreign = dataclasses.replace(own, num_steps=own.num_steps * 100)
    pipe = pipeline.make_pipeline(_config(state_dir), statistics=[foreign])
    assert pipe.statistics == [foreign]  # what normalises (data.statistics_from)
    assert [s.num_steps for s in pipe.data_statistics] == [own.num_steps]  # what counts epochs
