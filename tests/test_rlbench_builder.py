"""The RLBench builder: observation conversion on Observation-like objects, and stored
demos in RLBench's on-disk layout (pickles + PNGs written here) built into RLDS."""

import os
import pickle
import sys
import types

import numpy as np
import pytest
import tensorflow_datasets as tfds
from scipy.spatial.transform import Rotation

from atomskill_jax.data.rlds_schema import EpisodeError
from atomskill_jax.data.sources import open_source
from data_builders.reannotate.reannotate_dataset_builder import episode_to_numpy
from data_builders.rlbench import observations as rlobs
from data_builders.rlbench import rlbench_dataset_builder as rb
from tests import example_source_files as ex

NUM, SIZE = 30, 16
GRIPPER = {10: 0.0, 22: 1.0}  # gripper_open: closes at step 10, opens at 22
KEYFRAMES = [9, 21, NUM - 1]  # the action is the next step's: it changes a step earlier
DESCRIPTIONS = {("open_drawer", 0): ["open the bottom drawer", "grip the bottom handle"],
                ("open_drawer", 1): ["open the top drawer"],
                ("stack_blocks", 0): ["stack 2 red blocks"]}


def _frames(num, blue):
    img = np.zeros((num, SIZE, SIZE, 3), np.uint8)
    img[:, :4, :, 0] = 255  # red band at the top
    img[..., 1] = np.arange(num)[:, None, None] * 8
    img[..., 2] = blue
    return img


# -- the conversion, on Observation-like objects ----------------------------------


def test_proprio_action_and_state_from_observations():
    rng = np.random.default_rng(0)
    obs = ex.rlbench_observations(rng, 6, {3: 0.0}, state_dim=5)
    out = rlobs.demo_arrays(obs, episode_id="t/variation0/episode0", state_dim=7)
    pose = np.stack([o.gripper_pose for o in obs])
    opened = np.array([o.gripper_open for o in obs])
    proprio = out["proprio"]
    assert proprio.shape == (6, 8) and proprio.dtype == np.float32
    np.testing.assert_allclose(proprio[:, :3], pose[:, :3], rtol=1e-6)
    np.testing.assert_array_equal(proprio[:, 7], opened)
    # Quaternions: unit, w >= 0, the recorded rotations (some were stored with w < 0).
    assert (pose[:, 6] < 0).any() and (proprio[:, 6] >= 0).all()
    np.testing.assert_allclose(np.linalg.norm(proprio[:, 3:7], axis=1), 1, atol=1e-6)
    np.testing.assert_allclose(Rotation.from_quat(proprio[:, 3:7]).as_matrix(),
                               Rotation.from_quat(pose[:, 3:]).as_matrix(), atol=1e-6)
    # The action is the next step's pose and gripper; the last step stays.
    np.testing.assert_array_equal(out["action"][:-1], proprio[1:])
    np.testing.assert_array_equal(out["action"][-1], proprio[-1])
    # State: task_low_dim_state zero-padded to the dataset's size.
    low = np.stack([o.task_low_dim_state for o in obs])
    np.testing.assert_allclose(out["state"][:, :5], low, rtol=1e-6)
    np.testing.assert_array_equal(out["state"][:, 5:], 0)
    assert "state" not in rlobs.demo_arrays(obs, episode_id="e")
    with pytest.raises(EpisodeError, match="task_low_dim_state.*5 values, more than.*4"):
        rlobs.demo_arrays(obs, episode_id="e", state_dim=4)


def test_images_from_attributes_and_missing_fields_named():
    rng = np.random.default_rng(1)
    frames = _frames(5, 7)
    obs = ex.rlbench_observations(rng, 5, {}, state_dim=3, images={"front": frames})
    out = rlobs.demo_arrays(obs, episode_id="e", cameras=("front",))
    np.testing.assert_array_equal(out["image_front"], frames)
    with pytest.raises(EpisodeError, match="wrist_rgb.*no images"):
        rlobs.demo_arrays(obs, episode_id="e", cameras=("wrist",))
    obs[2].front_rgb = None
    with pytest.raises(EpisodeError, match="front_rgb.*None at step 2"):
        rlobs.demo_arrays(obs, episode_id="e", cameras=("front",))
    obs[3].gripper_pose = None
    with pytest.raises(EpisodeError, match="'e', field 'gripper_pose'.*None\\) at step 3 of 5"):
        rlobs.demo_arrays(obs, episode_id="e")
    obs[3].gripper_pose = np.zeros(6)
    with pytest.raises(EpisodeError, match="gripper_pose.*6 values at step 3, expected 7"):
        rlobs.demo_arrays(obs, episode_id="e")
    assert rlobs.instruction_of([" open the drawer ", "x"], "e") == "open the drawer"
    with pytest.raises(EpisodeError, match="variation_descriptions"):
        rlobs.instruction_of([], "e")


# -- stored demos on disk ------------------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("rlbench") / "train"
    rng = np.random.default_rng(0)
    cams = {"front": _frames(NUM, 40), "wrist": _frames(NUM, 120)}
    demos = {}

    def write(task, variation, index, state_dim, *, old_layout=False, edit=None):
        obs = ex.rlbench_observations(rng, NUM, GRIPPER, state_dim)
        if edit is not None:
            edit(obs)
        descriptions = None if old_layout else DESCRIPTIONS[(task, variation)]
        path = ex.write_rlbench_episode(root, task, variation, index, obs, descriptions,
                                        cams)
        if old_layout:  # older RLBench: descriptions beside episodes/
            with open(os.path.join(root, task, f"variation{variation}",
                                   rb.DESCRIPTIONS_FILE), "wb") as f:
                pickle.dump(DESCRIPTIONS[(task, variation)], f)
        demos[f"{task}/variation{variation}/episode{index}"] = obs
        return path

    write("open_drawer", 0, 0, 6)
    write("open_drawer", 0, 1, 6)
    write("open_drawer", 1, 0, 6, old_layout=True)
    write("stack_blocks", 0, 0, 9)
    os.remove(os.path.join(write("open_drawer", 0, 2, 6), "wrist_rgb", "17.png"))
    bad = write("open_drawer", 0, 3, 6)
    data = open(os.path.join(bad, rb.LOW_DIM_FILE), "rb").read()
    with open(os.path.join(bad, rb.LOW_DIM_FILE), "wb") as f:
        f.write(data[: len(data) // 2])  # truncated pickle
    write("stack_blocks", 0, 1, 9, edit=lambda obs: setattr(obs[12], "gripper_pose", None))
    report = rb.build_rlbench(str(root), str(root.parent / "out"), show_progress=False)
    return report, root, demos


def _episodes(dataset_dir):
    source = open_source(dataset_dir)
    out = {}
    for ep in tfds.as_numpy(source.builder.as_dataset(split="train")):
        episode = episode_to_numpy(ep)
        out[episode["episode_metadata"]["episode_id"]] = episode
    return source, out


def test_bad_demos_skipped_and_named(built):
    report, root, _ = built
    assert report["written"] == 4 and report["num_skipped"] == 3
    reasons = {ids[0]: reason for reason, ids in report["skipped"].items()}
    assert set(reasons) == {"open_drawer/variation0/episode2", "open_drawer/variation0/episode3",
                            "stack_blocks/variation0/episode1"}
    png = reasons["open_drawer/variation0/episode2"]
    assert "wrist_rgb" in png and "step 17: image missing" in png
    assert os.path.join("episode2", "wrist_rgb", "17.png") in png
    truncated = reasons["open_drawer/variation0/episode3"]
    assert "low_dim_obs.pkl" in truncated and "unreadable" in truncated
    assert "gripper_pose" in reasons["stack_blocks/variation0/episode1"]
    assert "step 12" in reasons["stack_blocks/variation0/episode1"]
    assert "zero-padded to 9" in report["notes"]["state"]


def test_episodes_read_back_with_fields_images_and_skills(built):
    report, root, demos = built
    source, episodes = _episodes(report["dataset_dir"])
    assert (source.action_dim, source.proprio_dim, source.state_dim) == (8, 8, 9)
    assert sorted(source.cameras) == ["front", "wrist"]
    assert set(episodes) == {"open_drawer/variation0/episode0", "open_drawer/variation0/episode1",
                             "open_drawer/variation1/episode0", "stack_blocks/variation0/episode0"}
    for eid, ep in episodes.items():
        task, variation, index = eid.split("/")
        steps, meta = ep["steps"], ep["episode_metadata"]
        obs = demos[eid]
        assert meta["task"] == task and meta["layout"] == int(index[len("episode"):])
        assert meta["success"] and meta["builder_version"] == "rlbench:1.0.0"
        assert meta["source_file"] == str(root / task / variation / "episodes" / index)
        want_text = DESCRIPTIONS[(task, int(variation[len("variation"):]))][0]
        assert set(steps["language_instruction"]) == {want_text}
        arrays = rlobs.demo_arrays(obs, episode_id=eid, state_dim=9)
        np.testing.assert_allclose(steps["observation"]["proprio"], arrays["proprio"], rtol=1e-6)
        np.testing.assert_allclose(steps["action"], arrays["action"], rtol=1e-6)
        np.testing.assert_array_equal(steps["action_abs"], steps["action"])
        state = steps["observation"]["state"]
        assert state.shape == (NUM, 9) and state.dtype == np.float32
        dim = 9 if task == "stack_blocks" else 6
        np.testing.assert_allclose(state[:, :dim], np.stack([o.task_low_dim_state for o in obs]),
                                   rtol=1e-6)
        np.testing.assert_array_equal(state[:, dim:], 0)
        for cam, blue in (("front", 40), ("wrist", 120)):  # from the PNGs, in step order
            np.testing.assert_array_equal(steps["observation"][f"image_{cam}"], _frames(NUM, blue))
        ends = np.flatnonzero(steps["is_keyframe"])
        np.testing.assert_array_equal(ends, KEYFRAMES)
        np.testing.assert_array_equal(np.flatnonzero(np.diff(steps["skill_segment"])),
                                      KEYFRAMES[:-1])
        for seg, end in enumerate(KEYFRAMES):
            idx = np.flatnonzero(steps["skill_segment"] == seg)
            np.testing.assert_array_equal(steps["keypose"][idx],
                                          np.repeat(steps["action_abs"][end][None], len(idx), 0))
        assert steps["keypose"][0, 7] == 0.0 and steps["keypose"][KEYFRAMES[1], 7] == 1.0
        assert [steps["skill_label"][e] for e in KEYFRAMES[:2]] == ["grasp", "place"]
        assert steps["is_first"][0] and steps["is_last"][-1] and steps["is_terminal"][-1]


def test_one_task_resized_camera_and_reuse(built, tmp_path):
    _, root, _ = built
    kwargs = dict(tasks="stack_blocks", cameras="front", image_size=(8, 8), show_progress=False)
    report = rb.build_rlbench(str(root), str(tmp_path), **kwargs)
    source, episodes = _episodes(report["dataset_dir"])
    assert source.cameras == ("front",) and source.state_dim == 9 and report["written"] == 1
    img = episodes["stack_blocks/variation0/episode0"]["steps"]["observation"]["image_front"]
    assert img.shape == (NUM, 8, 8, 3)
    assert (img[:, 0, :, 0] > 200).all() and (img[:, -1, :, 0] < 50).all()  # still upright
    again = rb.build_rlbench(str(root), str(tmp_path), **kwargs)
    assert again["reused"] and again["dataset_dir"] == report["dataset_dir"]
    with pytest.raises(FileExistsError, match="image_size"):
        rb.build_rlbench(str(root), str(tmp_path), **dict(kwargs, image_size=(4, 4)))
    with pytest.raises(FileNotFoundError, match="no stored demos of task.*push_button.*"
                                                "tasks here: open_drawer, stack_blocks"):
        rb.build_rlbench(str(root), str(tmp_path), tasks="push_button")
    with pytest.raises(ValueError, match="unknown RLBench camera 'side'"):
        rb.build_rlbench(str(root), str(tmp_path), cameras="side")


@pytest.mark.parametrize("installed", [False, True])
def test_rlbench_pickles_without_rlbench_say_what_to_install(tmp_path, monkeypatch, installed):
    """RLBench's pickles name rlbench.demo.Demo: without rlbench, or with rlbench but no
    CoppeliaSim (PyRep fails to load its library), the build says what to install."""
    demo_cls = type("Demo", (), {"__module__": "rlbench.demo"})
    modules = {"rlbench": types.ModuleType("rlbench"),
               "rlbench.demo": types.ModuleType("rlbench.demo")}
    modules["rlbench.demo"].Demo = demo_cls
    episode = tmp_path / "data" / "reach_target" / "variation0" / "episodes" / "episode0"
    episode.mkdir(parents=True)
    with monkeypatch.context() as patch:
        for name, module in modules.items():
            patch.setitem(sys.modules, name, module)
        (episode / rb.LOW_DIM_FILE).write_bytes(pickle.dumps(demo_cls()))
    (episode / rb.DESCRIPTIONS_FILE).write_bytes(pickle.dumps(["reach the red target"]))
    if installed:  # an importable rlbench whose import fails as PyRep's does
        package = tmp_path / "site" / "rlbench"
        package.mkdir(parents=True)
        (package / "__init__.py").write_text(
            "raise ImportError('libcoppeliaSim.so.1: cannot open shared object file')\n")
        (package / "demo.py").write_text("class Demo:\n    pass\n")
        monkeypatch.syspath_prepend(str(tmp_path / "site"))
    with pytest.raises(rb.RLBenchUnavailable, match="needs the rlbench package and CoppeliaSim"):
        rb.build_rlbench(str(tmp_path / "data"), str(tmp_path / "out"), show_progress=False)
    assert "rlbench" not in sys.modules
