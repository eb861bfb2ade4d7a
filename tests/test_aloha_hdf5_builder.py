"""The ALOHA HDF5 builder: ACT-layout episode files written here become RLDS episodes."""

import h5py
import numpy as np
import pytest
import tensorflow_datasets as tfds

from atomskill_jax.data import episode_builder
from atomskill_jax.data.sources import open_source
from data_builders.aloha_hdf5 import aloha_hdf5_dataset_builder as ab
from data_builders.reannotate.reannotate_dataset_builder import episode_to_numpy
from tests import example_source_files as ex

H, W, NUM = 12, 16, 30
INSTRUCTION = "transfer the cube to the other arm"
# left gripper closes at 8 and opens at 20; right closes at 14 (0 closed, 1 open)
LEFT, RIGHT = {8: 0.0, 20: 1.0}, {14: 0.0}
KEYFRAMES = [8, 14, 20, NUM - 1]
BLUE = {"cam_high": 40, "cam_left_wrist": 120}


def _images(num=NUM):
    return {cam: ex.act_frames(num, H, W, blue) for cam, blue in BLUE.items()}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("aloha")
    src = root / "sim_transfer_cube"
    src.mkdir()
    rng = np.random.default_rng(0)
    arrays = {i: ex.act_arrays(rng, NUM, LEFT, RIGHT) for i in (0, 1, 2, 3, 4, 10)}
    ex.write_act_episode(src / "episode_0.hdf5", arrays[0], _images())
    ex.write_act_episode(src / "episode_1.hdf5", arrays[1], _images(), sim=False, compress=True)
    ex.write_act_episode(src / "episode_10.hdf5", arrays[10], _images())
    ex.write_act_episode(src / "episode_2.hdf5", arrays[2], _images())
    with h5py.File(src / "episode_2.hdf5", "a") as f:  # missing dataset
        del f["observations/qvel"]
    ex.write_act_episode(src / "episode_3.hdf5",  # wrong shape
                         dict(arrays[3], qpos=arrays[3]["qpos"][:, :13]), _images())
    ex.write_act_episode(src / "episode_4.hdf5", arrays[4], _images())
    data = (src / "episode_4.hdf5").read_bytes()
    (src / "episode_4.hdf5").write_bytes(data[: len(data) // 2])  # truncated
    report = ab.build_aloha_hdf5(str(src), str(root / "out"), instruction=INSTRUCTION,
                                 show_progress=False)
    return report, src, arrays, root


def _episodes(dataset_dir):
    source = open_source(dataset_dir)
    out = {}
    for ep in tfds.as_numpy(source.builder.as_dataset(split="train")):
        episode = episode_to_numpy(ep)
        out[episode["episode_metadata"]["episode_id"]] = episode
    return source, out


def test_corrupt_files_skipped_and_named(built):
    report, src, _, _ = built
    assert report["written"] == 3 and report["num_skipped"] == 3
    reasons = {ids[0]: reason for reason, ids in report["skipped"].items()}
    assert set(reasons) == {f"sim_transfer_cube/episode_{i}" for i in (2, 3, 4)}
    missing = reasons["sim_transfer_cube/episode_2"]
    assert "/observations/qvel" in missing and "missing" in missing
    assert str(src / "episode_2.hdf5") in missing
    shape = reasons["sim_transfer_cube/episode_3"]
    assert "/observations/qpos" in shape and "[30, 13]" in shape
    truncated = reasons["sim_transfer_cube/episode_4"]
    assert f"{src / 'episode_4.hdf5'}: cannot be read as HDF5" in truncated
    saved = episode_builder.read_build_report(report["dataset_dir"])
    assert saved["num_skipped"] == 3
    assert saved["notes"]["state"] == "qvel, effort"
    assert saved["notes"]["recorded"] == "4 sim, 1 real, 0 unknown"  # the 5 that open


def test_episodes_read_back_with_fields_images_and_skills(built):
    report, src, arrays, _ = built
    source, episodes = _episodes(report["dataset_dir"])
    assert (source.action_dim, source.proprio_dim, source.state_dim) == (14, 14, 28)
    assert sorted(source.cameras) == ["cam_high", "cam_left_wrist"]
    assert set(episodes) == {f"sim_transfer_cube/episode_{i}" for i in (0, 1, 10)}
    for i in (0, 1, 10):
        raw, ep = arrays[i], episodes[f"sim_transfer_cube/episode_{i}"]
        steps, meta = ep["steps"], ep["episode_metadata"]
        assert meta["layout"] == i and meta["task"] == "sim_transfer_cube"
        assert meta["source_file"] == str(src / f"episode_{i}.hdf5") and meta["success"]
        assert meta["builder_version"] == "aloha_hdf5:1.0.0"
        assert steps["is_first"][0] and steps["is_last"][-1] and steps["is_terminal"][-1]
        assert steps["reward"].sum() == 1.0 and steps["reward"][-1] == 1.0
        assert set(steps["language_instruction"]) == {INSTRUCTION}
        obs = steps["observation"]
        assert obs["proprio"].dtype == np.float32 and obs["state"].shape == (NUM, 28)
        np.testing.assert_allclose(obs["proprio"], raw["qpos"], rtol=1e-6)
        np.testing.assert_allclose(obs["state"], np.concatenate([raw["qvel"], raw["effort"]], 1),
                                   rtol=1e-6)
        np.testing.assert_allclose(steps["action"], raw["action"], rtol=1e-6)
        np.testing.assert_array_equal(steps["action_abs"], steps["action"])
        for cam, blue in BLUE.items():
            img = obs[f"image_{cam}"]
            assert img.shape == (NUM, H, W, 3) and img.dtype == np.uint8
            want = ex.act_frames(NUM, H, W, blue)
            # JPEG (episode 1) is lossy on flat colours by a few levels; red/blue must
            # not be swapped (the recorder's BGR encoding), green keeps step order
            atol = 3 if i == 1 else 0
            np.testing.assert_allclose(img.astype(int), want.astype(int), atol=atol)
        # Skills end where either gripper command changes, and at the episode's end.
        ends = np.flatnonzero(steps["is_keyframe"])
        np.testing.assert_array_equal(ends, KEYFRAMES)
        np.testing.assert_array_equal(np.flatnonzero(np.diff(steps["skill_segment"])),
                                      KEYFRAMES[:-1])
        assert meta["num_skills"] == 4
        for seg, end in enumerate(KEYFRAMES):
            idx = np.flatnonzero(steps["skill_segment"] == seg)
            np.testing.assert_array_equal(steps["keypose"][idx],
                                          np.repeat(steps["action_abs"][end][None], len(idx), 0))
        labels = [steps["skill_label"][e] for e in KEYFRAMES[:3]]
        assert labels == ["grasp", "handover", "place"]


def test_resized_single_camera_without_effort_and_reuse(built, tmp_path):
    _, src, arrays, root = built
    other = tmp_path / "real_pour"
    other.mkdir()
    ex.write_act_episode(other / "episode_0.hdf5", arrays[0], _images(), with_effort=False,
                         compress=True)
    kwargs = dict(instruction="pour", cameras="cam_left_wrist", image_size=(6, 8),
                  show_progress=False)
    report = ab.build_aloha_hdf5(str(other), str(tmp_path / "out"), **kwargs)
    source, episodes = _episodes(report["dataset_dir"])
    assert source.cameras == ("cam_left_wrist",) and source.state_dim == 14
    obs = episodes["real_pour/episode_0"]["steps"]["observation"]
    np.testing.assert_allclose(obs["state"], arrays[0]["qvel"], rtol=1e-6)
    img = obs["image_cam_left_wrist"]
    assert img.shape == (NUM, 6, 8, 3)
    assert abs(int(img[..., 0].mean()) - 200) <= 3 and abs(int(img[..., 2].mean()) - 120) <= 3
    assert "effort left out" in report["notes"]["state"]
    again = ab.build_aloha_hdf5(str(other), str(tmp_path / "out"), **kwargs)
    assert again["reused"] and again["dataset_dir"] == report["dataset_dir"]
    with pytest.raises(FileExistsError, match="instruction"):
        ab.build_aloha_hdf5(str(other), str(tmp_path / "out"), **dict(kwargs, instruction="x"))


def test_bad_arguments_refused(built, tmp_path):
    _, src, _, _ = built
    with pytest.raises(ValueError, match="--instruction"):
        ab.build_aloha_hdf5(str(src), str(tmp_path), instruction=" ")
    with pytest.raises(ValueError, match="cam_low.*they have: cam_high, cam_left_wrist"):
        ab.build_aloha_hdf5(str(src), str(tmp_path), instruction="x", cameras="cam_low")
    with pytest.raises(FileNotFoundError, match="no episode_<i>.hdf5"):
        ab.build_aloha_hdf5(str(tmp_path), str(tmp_path), instruction="x")
