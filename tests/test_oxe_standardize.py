"""Foreign RLDS datasets (issue 13 section 5): a dataset written here in RT-1's Open
X-Embodiment layout is standardised at read time (data/standardize.py): gripper
convention converted, action parts concatenated in order, skills cut at gripper
changes, keypose = action_abs at the segment's end, instructions embedded with the
project's sentence encoder; its statistics are of the standardised fields; it mixes
with the project's own MetaWorld build in one pipeline and one training run; and a
dataset entry's camera mapping reads image_corner as the model's camera "front"."""

from __future__ import annotations

import os

import ml_collections
import numpy as np
import pytest

try:  # tests/ as a package or as a plain directory on sys.path
    from tests import oxe_rlds, synthetic_rlds
    from tests.tiny_model import REPO
except ImportError:
    import oxe_rlds
    import synthetic_rlds
    from tiny_model import REPO
from atomskill_jax.data import config as data_config
from atomskill_jax.data import (gripper_conventions, pipeline, sources, standardize_spec,
                                statistics_compute)
from atomskill_jax.data.dataset_entries import parse_entries
from atomskill_jax.data.oxe_standardizations import STANDARDIZATIONS

# RT-1's layout cut to MetaWorld's sizes (4-d action: xyz delta + gripper; 4-d proprio:
# hand xyz + opening), so the two mix in one pipeline.
FRACTAL_AS_METAWORLD = {
    "base": "fractal",
    "action": ["action/world_vector",
               {"key": "action/gripper_closedness_action",
                "gripper": {"kind": "relative", "closed": 1.0, "open": -1.0}}],
    "proprio": ["observation/base_pose_tool_reached[:3]",
                {"key": "observation/gripper_closed", "scale": -1.0, "offset": 1.0}],
}


@pytest.fixture(scope="module")
def fractal_dir(tmp_path_factory):
    return oxe_rlds.build(str(tmp_path_factory.mktemp("oxe_fractal")))


@pytest.fixture(scope="module")
def fractal_source(fractal_dir):
    return sources.open_source(fractal_dir, standardize="fractal")


@pytest.fixture(scope="module")
def fractal_episodes(fractal_source):
    """Standardised episodes as read, keyed by the test episode (lengths are distinct)."""
    read = sources.read_episodes(fractal_source, keep_cameras=("front",))
    return {oxe_rlds.LENGTHS.index(len(ep["action"])): ep for ep in read.as_numpy_iterator()}


def _embed(texts):
    from atomskill_jax.models.sentence_encoder import embed_texts_cached

    return embed_texts_cached(list(texts))


def _data_config(*entries, **overrides):
    c = data_config.default_data_config()
    c.datasets = tuple(entries)
    c.use_state, c.cameras = False, ()
    c.batch_size, c.horizon, c.skill_resample_length = 8, 4, 5
    c.image_size = (8, 8)
    c.episode_shuffle_buffer, c.example_shuffle_buffer = 4, 64
    c.num_parallel_calls, c.prefetch = 1, 1
    for key, value in overrides.items():
        c[key] = value
    return c


def test_gripper_conventions_become_closed_plus_one():
    relative = gripper_conventions.relative_to_ours(
        np.array([0.0, 0.05, 1.0, 0.0, -1.0, 0.02]), closed=1.0, open_=-1.0)
    np.testing.assert_array_equal(relative, [-1, -1, 1, 1, -1, -1])
    # The first command opens: the gripper was closed before it.
    starts_closed = gripper_conventions.relative_to_ours(np.array([0.0, -1.0, 0.0]), 1.0, -1.0)
    np.testing.assert_array_equal(starts_closed, [1, -1, -1])
    never = gripper_conventions.relative_to_ours(np.zeros(3), 1.0, -1.0)
    np.testing.assert_array_equal(never, [-1, -1, -1])  # no command: open throughout
    # Bridge: absolute, 1 = open, 0 = closed; linear, or binarised at the midpoint.
    bridge = np.array([1.0, 0.7, 0.2, 0.0])
    np.testing.assert_allclose(gripper_conventions.absolute_to_ours(bridge, 0.0, 1.0),
                               [-1.0, -0.4, 0.6, 1.0], atol=1e-6)
    np.testing.assert_array_equal(
        gripper_conventions.absolute_to_ours(bridge, 0.0, 1.0, binarize=True), [-1, -1, 1, 1])


def test_registry_and_spec_errors_name_the_key():
    assert {"fractal", "fractal20220817_data", "bridge_dataset"} <= set(STANDARDIZATIONS)
    spec = standardize_spec.parse_standardization(FRACTAL_AS_METAWORLD)
    assert spec.name == "fractal+inline" and spec.instruction is not None
    assert spec.tag != standardize_spec.parse_standardization("fractal").tag
    with pytest.raises(standardize_spec.StandardizationError, match="unknown standardisation 'rt2'"):
        standardize_spec.parse_standardization("rt2")
    with pytest.raises(standardize_spec.StandardizationError, match=r"unknown .*\['actions'\]"):
        standardize_spec.parse_standardization({"base": "fractal", "actions": []})
    with pytest.raises(standardize_spec.StandardizationError, match="gripper kind 'toggle'"):
        standardize_spec.parse_standardization({"base": "fractal", "action": [
            {"key": "action/x", "gripper": {"kind": "toggle", "closed": 1, "open": 0}}]})
    with pytest.raises(standardize_spec.StandardizationError,
                       match="neither 'instruction'.*nor 'language_embedding'"):
        standardize_spec.parse_standardization({"action": ["action"], "proprio": ["o"]})
    with pytest.raises(ValueError, match=r"datasets\[0\]: unknown keys \['standardise'\]"):
        parse_entries(_data_config({"name": "x", "standardise": "fractal"}))


def test_fractal_steps_are_standardised(fractal_source, fractal_episodes):
    assert (fractal_source.action_dim, fractal_source.proprio_dim) == (7, 8)
    assert fractal_source.state_dim is None and fractal_source.language_dim == 384
    assert fractal_source.cameras == ("front",)
    assert sorted(fractal_episodes) == list(range(len(oxe_rlds.LENGTHS)))
    labels = {"grasp": 0, "place": 1}
    for e, ep in fractal_episodes.items():
        raw = oxe_rlds.episode(e)["steps"]
        world = np.stack([s["action"]["world_vector"] for s in raw])
        rotation = np.stack([s["action"]["rotation_delta"] for s in raw])
        gripper = oxe_rlds.expected_gripper(e)
        # Concatenated in order; RT-1's relative command as +1 closed / -1 open.
        np.testing.assert_allclose(ep["action"], np.concatenate(
            [world, rotation, gripper[:, None]], 1), atol=1e-6)
        np.testing.assert_allclose(ep["action_abs"], np.concatenate(
            [np.cumsum(world, 0), np.cumsum(rotation, 0), gripper[:, None]], 1), atol=1e-5)
        pose = np.stack([s["observation"]["base_pose_tool_reached"] for s in raw])
        opening = 1.0 - np.stack([s["observation"]["gripper_closed"] for s in raw])
        np.testing.assert_allclose(ep["observation"]["proprio"],
                                   np.concatenate([pose, opening], 1), atol=1e-6)
        # Segments end where the gripper changes (the step of the new state).
        ends = [t for t in oxe_rlds.EVENTS[e] if t is not None] + [len(gripper) - 1]
        expected_segment = np.searchsorted(np.array(ends), np.arange(len(gripper)))
        np.testing.assert_array_equal(ep["skill_segment"], expected_segment)
        np.testing.assert_allclose(ep["keypose"], ep["action_abs"][np.array(ends)[
            expected_segment]], atol=1e-6)
        close, open_ = oxe_rlds.EVENTS[e]
        if close is not None:  # rule labels: a close ends a grasp, an open a place
            assert ep["skill_label_id"][close] == labels["grasp"]
        if open_ is not None:
            assert ep["skill_label_id"][open_] == labels["place"]
        np.testing.assert_allclose(ep["language_embedding"][0], _embed(
            [oxe_rlds.INSTRUCTIONS[e % 2]])[0], atol=1e-5)
        assert ep["observation"]["image_front"].dtype == object  # still encoded here


def test_stored_embedding_and_missing_encoder(fractal_dir):
    stored = sources.open_source(fractal_dir, standardize={
        "base": "fractal", "language_embedding": "observation/natural_language_embedding"})
    assert stored.language_dim == 16
    episode = next(sources.read_episodes(stored).as_numpy_iterator())
    e = oxe_rlds.LENGTHS.index(len(episode["action"]))
    np.testing.assert_array_equal(episode["language_embedding"], np.full((len(episode[
        "action"]), 16), e))

    def no_encoder(texts):
        raise FileNotFoundError("weights package not installed")

    with pytest.raises(sources.DatasetError, match="sentence encoder.*cannot be loaded") as err:
        sources.open_source(fractal_dir, standardize="fractal", embed_fn=no_encoder)
    assert fractal_dir in str(err.value) and "language_embedding" in str(err.value)
    with pytest.raises(sources.DatasetError, match="'steps/action/world_vektor', which is "
                                                   "missing"):
        sources.open_source(fractal_dir, standardize={"base": "fractal",
                                                      "action": ["action/world_vektor"]})


def test_statistics_are_of_the_standardised_fields(fractal_source, fractal_episodes):
    stats = statistics_compute.load_or_compute_statistics(fractal_source, write=True)
    path = statistics_compute.statistics_path(fractal_source)
    assert os.path.exists(path) and fractal_source.standardization.tag in os.path.basename(path)
    actions = np.concatenate([ep["action"] for ep in fractal_episodes.values()])
    proprio = np.concatenate([ep["observation"]["proprio"] for ep in fractal_episodes.values()])
    np.testing.assert_allclose(stats["action"].mean, actions.mean(0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(stats["observation/proprio"].max, proprio.max(0), rtol=1e-6)
    assert stats["action"].min[6] == -1 and stats["action"].max[6] == 1
    assert stats.num_steps == sum(oxe_rlds.LENGTHS)
    assert statistics_compute.load_or_compute_statistics(fractal_source).fields.keys() == \
        stats.fields.keys()  # loaded from the file now


@pytest.fixture(scope="module")
def mix_config(fractal_dir, metaworld_rlds_dir):
    return _data_config({"name": metaworld_rlds_dir, "weight": 1.0},
                        {"name": fractal_dir, "weight": 1.0,
                         "standardize": FRACTAL_AS_METAWORLD})


def test_mixes_with_a_project_dataset(mix_config, tmp_path):
    pipe = pipeline.make_pipeline(mix_config)
    assert [s.action_dim for s in pipe.sources] == [4, 4]
    assert pipe.sources[1].standardization is not None
    iterator = pipe.iterator()
    rows = {0: [], 1: []}
    batches = []
    for i in range(6):
        if i == 3:  # the read-time standardisation keeps the iterator checkpointable
            iterator.save(str(tmp_path))
        batch = iterator.next_local()
        batches.append(batch)
        for d in (0, 1):
            rows[d].append(batch["action_chunk"][batch["dataset_index"] == d])
        assert batch["keypose"].shape == (8, 4) and batch["language_embedding"].shape == (8, 384)
    assert all(sum(len(r) for r in rows[d]) > 0 for d in (0, 1))  # batches hold both
    restored = pipe.iterator()
    restored.restore(str(tmp_path))
    for expected in batches[3:]:
        got = restored.next_local()
        np.testing.assert_array_equal(got["action_chunk"], expected["action_chunk"])
        np.testing.assert_array_equal(got["skill"]["uid"], expected["skill"]["uid"])
    # Normalised with each dataset's own statistics: the gripper dimension of the
    # standardised data is +-1, so it lands within a few stds of 0 as MetaWorld's does.
    fractal = np.concatenate(rows[1])
    assert np.isfinite(fractal).all() and np.abs(fractal[..., 3]).max() < 5


def test_a_training_run_starts_on_the_mix(mix_config, tmp_path):
    from atomskill_jax.training import config_flags, trainer

    config = config_flags.load_config(os.path.join(REPO, "configs", "mlp.py") + ":tiny")
    config.data = ml_collections.ConfigDict(mix_config.to_dict())
    config.train.update(skill_steps=2, checkpoint_every=2, log_every=1, progress=False,
                        check_statistics_batches=1)
    result = trainer.train(config, str(tmp_path))
    assert result["skill"]["step"] == 2
    assert np.isfinite(result["skill"]["metrics"]["loss"])


def test_calibration_reads_standardised_datasets(fractal_dir, fractal_source):
    from atomskill_jax.methods.atomskill import calibration

    stats = statistics_compute.load_or_compute_statistics(fractal_source)
    config = {"data": _data_config({"name": fractal_dir, "standardize": "fractal"}).to_dict()}
    out = calibration.compute_calibration([fractal_dir], config, [stats.to_json()], "train")
    assert out["epsilon"] > 0 and out["max_skill_steps"] >= 10


@pytest.fixture(scope="module")
def corner_dir(tmp_path_factory):
    return synthetic_rlds.cached(tmp_path_factory, "oxe_corner", segments=((5, 7), (6,)),
                                 cameras=("corner",), image_size=(8, 8))


def test_camera_roles_map_dataset_cameras(corner_dir):
    entry = {"name": corner_dir, "cameras": {"front": "corner"}}
    config = _data_config(entry, cameras=("front",), augment=False)
    batch = next(pipeline.make_pipeline(config, train=False).iterator())
    images = batch["observation"]["image_front"]
    assert set(batch["observation"]) == {"proprio", "image_front"}
    # Every pixel of image_corner is (7 t + e) % 256 (tests/synthetic_rlds.py).
    episode = batch["skill"]["uid"] >> 16
    expected = (7 * batch["timestep"] + episode) % 256
    np.testing.assert_array_equal(images[:, 0, 0, 0], expected)
    with pytest.raises(sources.DatasetError, match="image_front") as err:
        pipeline.make_pipeline(_data_config({"name": corner_dir}, cameras=("front",)))
    assert corner_dir in str(err.value)
    with pytest.raises(sources.DatasetError, match="'steps/observation/image_nope'") as err:
        pipeline.make_pipeline(_data_config({"name": corner_dir, "cameras": {"front": "nope"}},
                                            cameras=("front",)))
    assert corner_dir in str(err.value) and "image_corner" in str(err.value)


def test_standardised_camera_uses_the_same_mapping(fractal_dir, fractal_source):
    """The fractal standardisation's 'front' is RT-1's observation/image, decoded and
    resized like any camera; an entry's mapping can rename it."""
    config = _data_config({"name": fractal_dir, "standardize": "fractal",
                           "cameras": {"wrist": "image"}},
                          cameras=("front", "wrist"), augment=False)
    pipe = pipeline.make_pipeline(config, train=False)
    batch = next(pipe.iterator())
    assert batch["observation"]["image_front"].shape == (8, 8, 8, 3)
    np.testing.assert_array_equal(batch["observation"]["image_front"],
                                  batch["observation"]["image_wrist"])
    episode = np.array([oxe_rlds.LENGTHS.index(n) for n in batch["episode_length"]])
    np.testing.assert_array_equal(batch["observation"]["image_front"][:, 0, 0, 0],
                                  (7 * batch["timestep"] + episode) % 256)
