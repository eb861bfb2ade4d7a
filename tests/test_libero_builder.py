"""The LIBERO HDF5 builder: robomimic-layout files written here become RLDS episodes."""

import json

import h5py
import numpy as np
import pytest
import tensorflow_datasets as tfds
from scipy.spatial.transform import Rotation

from atomskill_jax.data import episode_builder
from atomskill_jax.data.sources import open_source
from data_builders.libero_hdf5 import libero_hdf5_dataset_builder as lb
from data_builders.reannotate.reannotate_dataset_builder import episode_to_numpy

SIZE = 16
INSTRUCTIONS = {
    "KITCHEN_SCENE3_turn_on_the_stove": "turn on the stove",
    "LIVING_ROOM_SCENE2_pick_up_the_ketchup": "pick up the ketchup and put it in the basket"}
CLOSE_AT, OPEN_AT = 10, 22  # first steps of the closed and of the re-opened gripper


def _true_image(t: int) -> np.ndarray:
    """The picture as a person sees it: red band at the top, green at the left, the
    step number in blue (so order survives too)."""
    img = np.zeros((SIZE, SIZE, 3), np.uint8)
    img[:3, :, 0] = 255
    img[:, :2, 1] = 255
    img[..., 2] = t
    return img


def _demo(rng, num: int) -> dict:
    grip = np.where((np.arange(num) >= CLOSE_AT) & (np.arange(num) < OPEN_AT), 1.0, -1.0)
    actions = np.concatenate([rng.uniform(-1, 1, (num, 6)), grip[:, None]], axis=1)
    ee = np.concatenate([rng.normal(0, 0.3, (num, 3)),
                         Rotation.random(num, random_state=1).as_rotvec()], axis=1)
    frames = np.stack([_true_image(t) for t in range(num)])[:, ::-1]  # stored upside down
    return {"actions": actions, "obs/ee_states": ee,
            "obs/gripper_states": rng.uniform(-0.04, 0.04, (num, 2)),
            "obs/joint_states": rng.normal(size=(num, 7)),
            "obs/agentview_rgb": frames, "obs/eye_in_hand_rgb": frames[:, :, ::-1],
            "rewards": (np.arange(num) == num - 1).astype(np.uint8),
            "dones": (np.arange(num) == num - 1).astype(np.uint8)}


def _write(path, task, demos):
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["problem_info"] = json.dumps(
            {"problem_name": "libero_kitchen_tabletop_manipulation",
             "language_instruction": INSTRUCTIONS[task]})
        data.attrs["macros_image_convention"] = "opengl"
        for i, demo in enumerate(demos):
            for key, value in demo.items():
                data.create_dataset(f"demo_{i}/{key}", data=value)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("libero")
    src = root / "libero_test"
    src.mkdir()
    rng = np.random.default_rng(0)
    stove = [_demo(rng, 30), _demo(rng, 28), _demo(rng, 30), _demo(rng, 30)]
    del stove[2]["obs/joint_states"]  # missing field
    stove[3]["obs/ee_states"] = stove[3]["obs/ee_states"][:, :5]  # wrong shape
    ketchup = [_demo(rng, 31), _demo(rng, 30)]
    ketchup[1]["actions"][7, 2] = np.nan
    files = {"stove": src / "KITCHEN_SCENE3_turn_on_the_stove_demo.hdf5",
             "ketchup": src / "LIVING_ROOM_SCENE2_pick_up_the_ketchup_demo.hdf5"}
    _write(files["stove"], "KITCHEN_SCENE3_turn_on_the_stove", stove)
    _write(files["ketchup"], "LIVING_ROOM_SCENE2_pick_up_the_ketchup", ketchup)
    (src / "LIVING_ROOM_SCENE1_broken_demo.hdf5").write_bytes(b"not an HDF5 file")
    with h5py.File(src / "LIVING_ROOM_SCENE4_no_instruction_demo.hdf5", "w") as f:
        f.create_dataset("data/demo_0/actions", data=np.zeros((3, 7)))
    report = lb.build_libero(str(src), str(root / "out"), show_progress=False)
    return report, files, {"stove": stove, "ketchup": ketchup}, root


def _episodes(dataset_dir):
    source = open_source(dataset_dir)
    out = {}
    for ep in tfds.as_numpy(source.builder.as_dataset(split="train")):
        episode = episode_to_numpy(ep)
        out[episode["episode_metadata"]["episode_id"]] = episode
    return source, out


def test_bad_demos_are_skipped_and_named(built):
    report, files, _, _ = built
    assert report["written"] == 3 and report["num_skipped"] == 5
    reasons = {ids[0]: reason for reason, ids in report["skipped"].items()}
    assert set(reasons) == {"LIVING_ROOM_SCENE1_broken/*", "LIVING_ROOM_SCENE4_no_instruction/*","KITCHEN_SCENE3_turn_on_the_stove/demo_2",
                            "KITCHEN_SCENE3_turn_on_the_stove/demo_3",
                            "LIVING_ROOM_SCENE2_pick_up_the_ketchup/demo_1"}
    missing = reasons["KITCHEN_SCENE3_turn_on_the_stove/demo_2"]
    assert "data/demo_2/obs/joint_states" in missing and "missing" in missing
    shape = reasons["KITCHEN_SCENE3_turn_on_the_stove/demo_3"]
    assert "data/demo_3/obs/ee_states" in shape and "[30, 5]" in shape
    nan = reasons["LIVING_ROOM_SCENE2_pick_up_the_ketchup/demo_1"]
    assert "data/demo_1/actions" in nan and "non-finite" in nan and "step 7" in nan
    assert str(files["stove"]) in missing and str(files["ketchup"]) in nan
    assert "LIVING_ROOM_SCENE1_broken_demo.hdf5: cannot be read as HDF5" in reasons[
        "LIVING_ROOM_SCENE1_broken/*"]
    assert "no_instruction_demo.hdf5: data.attrs['problem_info'] missing" in reasons[
        "LIVING_ROOM_SCENE4_no_instruction/*"]
    saved = episode_builder.read_build_report(report["dataset_dir"])
    assert saved["num_skipped"] == 5 and "flipped vertically" in saved["notes"]["images"]


def test_episodes_read_back_with_layout_images_and_skills(built):
    report, files, demos, _ = built
    source, episodes = _episodes(report["dataset_dir"])
    assert (source.action_dim, source.proprio_dim, source.state_dim) == (7, 8, 15)
    assert sorted(source.cameras) == ["agentview", "eye_in_hand"]
    expected = {"KITCHEN_SCENE3_turn_on_the_stove/demo_0": ("stove", 0),
                "KITCHEN_SCENE3_turn_on_the_stove/demo_1": ("stove", 1),
                "LIVING_ROOM_SCENE2_pick_up_the_ketchup/demo_0": ("ketchup", 0)}
    assert set(episodes) == set(expected)
    for eid, (name, index) in expected.items():
        raw, ep = demos[name][index], episodes[eid]
        steps, meta = ep["steps"], ep["episode_metadata"]
        num = len(raw["actions"])
        assert len(steps["action"]) == num and steps["is_last"][-1] and steps["is_first"][0]
        assert meta["task"] == eid.split("/")[0] and meta["layout"] == index
        assert meta["source_file"] == str(files[name]) and meta["success"]
        assert meta["builder_version"] == "libero_hdf5:1.0.0" and steps["is_terminal"][-1]
        obs = steps["observation"]
        # Image orientation: the red band is at the top, the green at the left
        # (a vertical flip, not a 180-degree turn); blue counts the steps in order.
        img = obs["image_agentview"]
        assert img.shape == (num, SIZE, SIZE, 3)
        np.testing.assert_array_equal(img, np.stack([_true_image(t) for t in range(num)]))
        assert (img[:, 0, :, 0] == 255).all() and (img[:, -1, :, 0] == 0).all()
        assert (img[:, :, 0, 1] == 255).all() and (img[:, :, -1, 1] == 0).all()
        np.testing.assert_array_equal(obs["image_eye_in_hand"], img[:, :, ::-1])
        # proprio = ee xyz, ee axis-angle, 2 fingers; state = 7 joints, 2 fingers, ee pose.
        ee, fingers = raw["obs/ee_states"], raw["obs/gripper_states"]
        np.testing.assert_allclose(obs["proprio"], np.concatenate([ee, fingers], 1), rtol=1e-6)
        np.testing.assert_allclose(
            obs["state"], np.concatenate([raw["obs/joint_states"], fingers, ee], 1), rtol=1e-6)
        np.testing.assert_allclose(steps["action"], raw["actions"], rtol=1e-6)
        # action_abs: OSC target = ee + 0.05 * dpos, exp(0.5 * drot) @ R(ee), gripper as is.
        act_abs = steps["action_abs"]
        np.testing.assert_allclose(act_abs[:, :3], ee[:, :3] + 0.05 * raw["actions"][:, :3],
                                   atol=1e-5)
        goal = Rotation.from_rotvec(0.5 * raw["actions"][:, 3:6]) * Rotation.from_rotvec(ee[:, 3:])
        np.testing.assert_allclose(Rotation.from_rotvec(act_abs[:, 3:6]).as_matrix(),
                                   goal.as_matrix(), atol=1e-5)
        np.testing.assert_array_equal(act_abs[:, 6], raw["actions"][:, 6])
        # Skills end where the gripper command changes, and at the episode's end.
        ends = np.flatnonzero(steps["is_keyframe"])
        np.testing.assert_array_equal(ends, [CLOSE_AT, OPEN_AT, num - 1])
        np.testing.assert_array_equal(np.flatnonzero(np.diff(steps["skill_segment"])), ends[:2])
        assert meta["num_skills"] == 3
        for seg in range(3):
            idx = np.flatnonzero(steps["skill_segment"] == seg)
            np.testing.assert_array_equal(steps["keypose"][idx],
                                          np.repeat(act_abs[idx[-1]][None], len(idx), 0))
        assert steps["skill_label"][0] == "grasp" and steps["skill_label"][OPEN_AT] == "place"


def test_instruction_and_embedding(built):
    from atomskill_jax.models.sentence_encoder import embed_texts_cached

    report, _, _, _ = built
    _, episodes = _episodes(report["dataset_dir"])
    for eid, ep in episodes.items():
        instruction = INSTRUCTIONS[eid.split("/")[0]]
        assert set(ep["steps"]["language_instruction"]) == {instruction}
        want = embed_texts_cached([instruction])[0]
        np.testing.assert_allclose(ep["steps"]["language_embedding"],
                                   np.repeat(want[None], len(ep["steps"]["action"]), 0),
                                   atol=1e-6)
    stove = episodes["KITCHEN_SCENE3_turn_on_the_stove/demo_0"]["steps"]["language_embedding"]
    ketchup = episodes["LIVING_ROOM_SCENE2_pick_up_the_ketchup/demo_0"]["steps"]
    assert not np.allclose(stove[0], ketchup["language_embedding"][0])


def test_same_options_reused_other_options_refused(built):
    report, files, _, root = built
    again = lb.build_libero(str(files["stove"].parent), str(root / "out"), show_progress=False)
    assert again["reused"] and again["dataset_dir"] == report["dataset_dir"]
    with pytest.raises(FileExistsError, match="cameras"):
        lb.build_libero(str(files["stove"].parent), str(root / "out"), cameras="agentview",
                        show_progress=False)
    with pytest.raises(FileNotFoundError, match="nowhere.hdf5"):
        lb.build_libero(str(root / "nowhere.hdf5"), str(root / "out2"), show_progress=False)


def test_resized_single_camera(built):
    _, files, demos, root = built
    report = lb.build_libero([files["stove"]], str(root / "small"), cameras="agentview",
                             image_size=(8, 12), show_progress=False)
    source, episodes = _episodes(report["dataset_dir"])
    assert source.cameras == ("agentview",) and report["written"] == 2
    img = episodes["KITCHEN_SCENE3_turn_on_the_stove/demo_0"]["steps"]["observation"][
        "image_agentview"]
    assert img.shape == (30, 8, 12, 3)
    assert (img[:, 0, :, 0] > 200).all() and (img[:, -1, :, 0] < 50).all()  # still upright
