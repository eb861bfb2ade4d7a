"""The MetaWorld RLDS builder: real expert rollouts written as RLDS with atomic skills."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_builders.metaworld_scripted import metaworld_scripted_dataset_builder as mwb
from data_builders.reannotate.reannotate_dataset_builder import episode_to_numpy


def _episodes(dataset_dir):
    """(metadata, steps) per episode, steps stacked along time, by episode id."""
    builder = tfds.builder_from_directory(dataset_dir)
    out = []
    for ep in tfds.as_numpy(builder.as_dataset(split="train")):
        episode = episode_to_numpy(ep)
        steps = {k: (np.asarray(v) if isinstance(v, list) else v)
                 for k, v in episode["steps"].items()}
        out.append((episode["episode_metadata"], steps))
    return sorted(out, key=lambda e: e[0]["episode_id"])


def test_dataset_reads_back_with_rlds_fields(metaworld_rlds_dir):
    episodes = _episodes(metaworld_rlds_dir)
    assert [m["episode_id"] for m, _ in episodes] == [
        "drawer-close/layout0/seed0", "drawer-close/layout1/seed0",
        "pick-place/layout0/seed0", "pick-place/layout1/seed0"]
    for meta, steps in episodes:
        n = len(steps["action"])
        assert meta["success"] and steps["is_terminal"][-1] and not steps["is_terminal"][:-1].any()
        assert steps["is_first"][0] and steps["is_first"].sum() == 1
        assert steps["is_last"][-1] and steps["is_last"].sum() == 1
        assert steps["observation"]["state"].shape == (n, 39)
        np.testing.assert_array_equal(steps["observation"]["proprio"],
                                      steps["observation"]["state"][:, :4])
        assert steps["language_embedding"].shape == (n, 384)
        np.testing.assert_allclose(np.linalg.norm(steps["language_embedding"], axis=1), 1, atol=1e-5)
        assert meta["layout_vec"].size > 0 and meta["builder_version"].startswith("metaworld_scripted")
        # Keypose = action_abs at the terminal keyframe of the step's segment.
        for seg in np.unique(steps["skill_segment"]):
            idx = np.flatnonzero(steps["skill_segment"] == seg)
            assert steps["is_keyframe"][idx[-1]] and not steps["is_keyframe"][idx[:-1]].any()
            np.testing.assert_allclose(steps["keypose"][idx], np.repeat(
                steps["action_abs"][idx[-1]][None], len(idx), 0))
        assert meta["num_skills"] == len(np.unique(steps["skill_segment"]))
    instructions = {m["task"]: s["language_instruction"][0] for m, s in episodes}
    assert instructions["pick-place"] == "pick up the puck and place it at the goal"


def test_pick_place_skills_cut_at_gripper_changes(metaworld_rlds_dir):
    for meta, steps in _episodes(metaworld_rlds_dir):
        grip = steps["action"][:, 3]
        changes = np.flatnonzero(np.abs(np.diff(grip)) > 0.5) + 1  # first step of new level
        ends = np.flatnonzero(np.diff(steps["skill_segment"]) != 0)
        if meta["task"] == "pick-place":
            assert meta["num_skills"] >= 2
            # A skill ends on the keyframe that first commands the new gripper state,
            # so its keypose carries the grasp (or release).
            np.testing.assert_array_equal(ends, changes)
            assert steps["keypose"][0, 3] == 1.0 and steps["is_keyframe"][changes[0]]
            labels = [steps["skill_label"][steps["skill_segment"] == s][0] for s in range(2)]
            assert labels[0] == "grasp"
        else:  # drawer-close: no gripper change, one skill
            assert changes.size == 0 and meta["num_skills"] == 1


def test_same_options_same_episodes_other_options_refused(metaworld_rlds_dir, tmp_path):
    again, first = mwb.build(str(tmp_path), tasks="pick-place,drawer-close", episodes_per_task=2,
                             seed=0, show_progress=False)
    _, second = mwb.build(str(tmp_path), tasks="pick-place,drawer-close", episodes_per_task=2,
                          seed=0, show_progress=False)
    assert not first.get("reused") and second["reused"] and second["written"] == 4
    for (m1, s1), (m2, s2) in zip(_episodes(metaworld_rlds_dir), _episodes(again)):
        assert m1["episode_id"] == m2["episode_id"]
        np.testing.assert_array_equal(s1["action"], s2["action"])
        np.testing.assert_array_equal(s1["observation"]["state"], s2["observation"]["state"])
    with pytest.raises(FileExistsError, match="episodes_per_task"):
        mwb.build(str(tmp_path), tasks="pick-place,drawer-close", episodes_per_task=3,
                  seed=0, show_progress=False)


def test_noise_eval_layouts_and_failure_accounting(tmp_path):
    # A 40-step cap is too short for pick-place: every attempt fails and is counted.
    with pytest.raises(RuntimeError, match="expert failed"):
        mwb.build(str(tmp_path / "short"), tasks="pick-place", episodes_per_task=2,
                  max_steps=40, max_attempts_factor=1.5, show_progress=False)
    dataset_dir, report = mwb.build(
        str(tmp_path / "noisy"), tasks="pick-place", episodes_per_task=2, seed=3,
        action_noise_std=0.1, layout_split="eval", only_successful=False, show_progress=False)
    assert report["written"] == 2
    for meta, steps in _episodes(dataset_dir):
        assert meta["layout"] >= 1_000_000 and meta["action_noise_std"] == pytest.approx(0.1)
        noise = steps["action_executed"] - steps["action"]
        assert 0.03 < noise[:, :3].std() < 0.15
        grip = steps["action"][:, 3]  # labels are the clean expert command
        assert set(np.round(np.unique(grip), 3)) <= {0.0, 1.0}


def test_cli_builds_and_reports(tmp_path):
    out = tmp_path / "cli"
    proc = subprocess.run(
        [sys.executable, "-m", "atomskill_jax.cli", "build-data", "metaworld",
         "--tasks=drawer-close", "--episodes-per-task=1", f"--out={out}"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "wrote 1 episode, skipped 0" in proc.stdout
    dataset_dir = out / "metaworld_scripted" / "custom" / "1.0.0"
    assert tfds.builder_from_directory(str(dataset_dir)).info.splits["train"].num_examples == 1
    assert json.load(open(dataset_dir / mwb.OPTIONS_FILE))["tasks"] == ["drawer-close"]
    bad = subprocess.run([sys.executable, "-m", "atomskill_jax.cli", "build-data", "metaworld",
                          "--tasks=pick-plaice", f"--out={out}"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unknown MetaWorld task 'pick-plaice'" in bad.stderr
    missing = subprocess.run([sys.executable, "-m", "atomskill_jax.cli", "serve",
                              f"--policy={tmp_path / 'no_policy'}"],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "no_policy: no such policy directory" in missing.stderr


def _osmesa_available():
    import ctypes.util
    return ctypes.util.find_library("OSMesa") is not None


@pytest.mark.skipif(not _osmesa_available(), reason="libosmesa6 not installed (make test installs it)")
def test_images_rendered_in_worker_process(tmp_path):
    dataset_dir, report = mwb.build(
        str(tmp_path), tasks="pick-place", episodes_per_task=1, max_steps=6,
        only_successful=False, cameras=("corner", "gripperPOV"), image_size=(32, 48),
        show_progress=False)
    (meta, steps), = _episodes(dataset_dir)
    for cam in ("corner", "gripperPOV"):
        images = steps["observation"][f"image_{cam}"]
        assert images.shape == (6, 32, 48, 3) and images.dtype == np.uint8
        assert images.std() > 5  # a rendered scene, not a blank frame
    assert not np.array_equal(steps["observation"]["image_corner"],
                              steps["observation"]["image_gripperPOV"])
    assert "mujoco" not in sys.modules or os.environ.get("MUJOCO_GL") in (None, "")


def test_cli_stats_and_annotate(metaworld_rlds_dir, tmp_path):
    stats = subprocess.run([sys.executable, "-m", "atomskill_jax.cli", "stats",
                            f"--data={metaworld_rlds_dir}"], capture_output=True, text=True,
                           timeout=300)
    assert stats.returncode == 0, stats.stderr[-2000:]
    assert "4 episodes" in stats.stdout and "action_abs:" in stats.stdout
    ann = subprocess.run([sys.executable, "-m", "atomskill_jax.cli", "annotate",
                          f"--data={metaworld_rlds_dir}", f"--out={tmp_path}"],
                         capture_output=True, text=True, timeout=300)
    assert ann.returncode == 0, ann.stderr[-2000:]
    assert "wrote 4 episodes, skipped 0" in ann.stdout


def test_a_bad_episode_is_skipped_and_does_not_count_as_kept(tmp_path, monkeypatch):
    """The first episode holds a NaN: it is reported as skipped and the builder tries
    the next layout, so the dataset still has the episodes asked for."""
    original = mwb.MetaworldScripted._episode
    calls = []

    def poisoned(self, *args, **kwargs):
        episode = original(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 1:
            episode["steps"]["observation"]["state"][0, 0] = np.nan
        return episode

    monkeypatch.setattr(mwb.MetaworldScripted, "_episode", poisoned)
    dataset_dir, report = mwb.build(str(tmp_path), tasks="drawer-close", episodes_per_task=2,
                                    show_progress=False)
    assert report["written"] == 2 and len(calls) == 3
    assert report["num_skipped"] == 1
    assert any("non-finite" in reason for reason in report["skipped"]), report["skipped"]
    assert len(list(_episodes(dataset_dir))) == 2
