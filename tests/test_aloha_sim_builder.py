"""The ALOHA sim RLDS builder: scripted bimanual rollouts written as RLDS with skills."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from atomskill_jax.envs import aloha_sim
from data_builders.aloha_sim_scripted import aloha_sim_scripted_dataset_builder as asb
from data_builders.aloha_sim_scripted import rollouts
from data_builders.reannotate.reannotate_dataset_builder import episode_to_numpy

pytestmark = pytest.mark.slow  # builds datasets from simulator rollouts


def episodes(dataset_dir):
    """{episode_id: (metadata, steps)} of a built dataset."""
    out = {}
    for ep in tfds.as_numpy(tfds.builder_from_directory(dataset_dir).as_dataset(split="train")):
        episode = episode_to_numpy(ep)
        out[episode["episode_metadata"]["episode_id"]] = (episode["episode_metadata"],
                                                         episode["steps"])
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory, _hermetic_cache):
    out = tmp_path_factory.mktemp("aloha_sim")
    dataset_dir, report = asb.build(str(out), episodes_per_task=1, seed=0, show_progress=False)
    return str(out), dataset_dir, report


def test_fields_shapes_and_dtypes(built):
    _, dataset_dir, report = built
    assert report["written"] == 2 and report["num_skipped"] == 0
    eps = episodes(dataset_dir)
    assert sorted(eps) == ["insertion/seed0", "transfer_cube/seed0"]
    for eid, (meta, steps) in eps.items():
        obs, n = steps["observation"], len(steps["action"])
        assert sorted(obs) == ["proprio", "state"]  # no camera asked for: no image
        assert obs["proprio"].shape == (n, 14) and obs["proprio"].dtype == np.float32
        assert obs["state"].shape == (n, 28) and obs["state"].dtype == np.float32
        assert steps["action"].shape == (n, 14) and steps["action"].dtype == np.float32
        np.testing.assert_array_equal(steps["action"], steps["action_abs"])
        assert steps["is_first"][0] and steps["is_first"].sum() == 1
        assert steps["is_last"][-1] and steps["is_last"].sum() == 1
        assert steps["is_terminal"][-1] and steps["is_terminal"].sum() == 1
        assert meta["success"] and steps["reward"].max() == 4 and meta["layout"] == 0
        assert steps["language_instruction"][0] == aloha_sim.instruction(meta["task"])
        assert steps["language_embedding"].shape == (n, 384)
        np.testing.assert_allclose(np.linalg.norm(steps["language_embedding"], axis=1), 1,
                                   atol=1e-5)
        assert meta["builder_version"] == "aloha_sim_scripted:1.0.0"
        # Joints in radians beyond gym-aloha's declared [-1, 1], grippers in [0, 1].
        assert np.abs(steps["action"]).max() > 1.0
        grippers = steps["action"][:, list(aloha_sim.GRIPPER_CHANNELS)]
        assert grippers.min() == 0.0 and grippers.max() == 1.0
        # state = qvel, then object poses from the physics (the cube's quaternion is
        # unit; the second slot is empty for the one-object task).
        objects = obs["state"][:, 14:]
        np.testing.assert_allclose(np.linalg.norm(objects[:, 3:7], axis=1), 1, atol=1e-4)
        if meta["task"] == "transfer_cube":
            assert meta["layout_vec"].shape == (7,) and not objects[:, 7:].any()
        else:
            assert meta["layout_vec"].shape == (14,)
            np.testing.assert_allclose(np.linalg.norm(objects[:, 10:14], axis=1), 1, atol=1e-4)
        np.testing.assert_allclose(objects[0], np.pad(meta["layout_vec"], (0, 14 - meta[
            "layout_vec"].size)), atol=1e-6)  # the first step sees the sampled placement
        # Keypose = action_abs at the terminal keyframe of the step's segment.
        for seg in np.unique(steps["skill_segment"]):
            idx = np.flatnonzero(steps["skill_segment"] == seg)
            assert steps["is_keyframe"][idx[-1]] and not steps["is_keyframe"][idx[:-1]].any()
            np.testing.assert_array_equal(steps["keypose"][idx],
                                          np.repeat(steps["action_abs"][idx[-1]][None], len(idx), 0))


def test_replayed_actions_reproduce_observations_and_success(built):
    # The env adapter under the same seed and the recorded actions gives the recorded
    # observations step by step, and the same success.
    for eid, (meta, steps) in episodes(built[1]).items():
        env = aloha_sim.AlohaSimEnv(meta["task"])
        obs = env.reset(int(meta["layout"]))
        rewards = []
        for t, action in enumerate(steps["action"]):
            for key in ("proprio", "state"):
                np.testing.assert_array_equal(obs[key], steps["observation"][key][t],
                                              err_msg=f"{eid} step {t} {key}")
            obs, reward, _, _, info = env.step(action)
            rewards.append(reward)
        np.testing.assert_array_equal(rewards, steps["reward"])
        assert info["success"] == 1.0 and info["progress"] == 1.0


def _ramps(command):
    """(first, last) steps of each gripper ramp (where the command moves)."""
    moving = np.flatnonzero(np.abs(np.diff(command)) > 1e-6) + 1
    if moving.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(moving) > 1) + 1
    return [(int(r[0]) - 1, int(r[-1])) for r in np.split(moving, breaks)]


def test_skills_cut_at_both_grippers_keyframes(built):
    eps = episodes(built[1])
    for eid, (meta, steps) in eps.items():
        ends = np.flatnonzero(np.diff(steps["skill_segment"]) != 0)
        ramps = {ch: _ramps(steps["action"][:, ch]) for ch in aloha_sim.GRIPPER_CHANNELS}
        # Every gripper ramp (either arm) holds exactly one cut, and every cut is in one.
        for ch, spans in ramps.items():
            for first, last in spans:
                assert ((ends >= first) & (ends <= last)).sum() == 1, (eid, ch, first, ends)
        for end in ends:
            assert any(f <= end <= l for spans in ramps.values() for f, l in spans), (eid, end)
        assert meta["num_skills"] == len(ends) + 1
    left, right = aloha_sim.GRIPPER_CHANNELS
    _, cube = eps["transfer_cube/seed0"]
    # Right closes, left closes (right still holding), right opens; then the carry.
    assert [len(_ramps(cube["action"][:, ch])) for ch in (left, right)] == [1, 2]
    labels = [cube["skill_label"][i] for i in np.flatnonzero(cube["is_keyframe"])]
    assert labels[:3] == ["grasp", "handover", "place"] and len(labels) == 4
    _, ins = eps["insertion/seed0"]  # both grasp at once: one cut, then the insertion
    labels = [ins["skill_label"][i] for i in np.flatnonzero(ins["is_keyframe"])]
    assert labels == ["grasp", "insert"]


def test_identical_build_reused_other_options_refused(built):
    out, dataset_dir, _ = built
    again, report = asb.build(out, episodes_per_task=1, seed=0, show_progress=False)
    assert again == dataset_dir and report["reused"] and report["written"] == 2
    with pytest.raises(FileExistsError, match="episodes_per_task: 1 -> 2"):
        asb.build(out, episodes_per_task=2, seed=0, show_progress=False)
    with pytest.raises(ValueError, match="evaluation seeds"):
        asb.build(out, episodes_per_task=1, seed=aloha_sim.EVAL_SEED_BASE - 1)
    with pytest.raises(ValueError, match="unknown ALOHA sim task 'transfer-cubes'"):
        asb.build(out, tasks="transfer-cubes,insertion", episodes_per_task=1)


def test_bad_episodes_skipped_and_reported(tmp_path, monkeypatch, _hermetic_cache):
    real = rollouts.rollout_expert

    def flaky(task, seed, **kwargs):
        if seed == 1:
            raise RuntimeError("simulator exploded")
        roll = real(task, seed, **kwargs)
        if seed == 2:
            roll["state"][3, 5] = np.nan  # a corrupt step
        if seed == 3:  # the expert did not finish the task
            roll["reward"] = np.minimum(roll["reward"], 2.0)
            roll["success"] = False
        return roll

    monkeypatch.setattr(rollouts, "rollout_expert", flaky)
    dataset_dir, report = asb.build(str(tmp_path), tasks=("transfer_cube",),
                                    episodes_per_task=2, seed=0, max_attempts_factor=2.5,
                                    show_progress=False)
    assert report["written"] == 2 and report["num_skipped"] == 3
    assert report["skipped"] == {
        "RuntimeError: simulator exploded": ["transfer_cube/seed1"],
        "bad field observation/state: 1 non-finite values (NaN or inf), first at step 3":
            ["transfer_cube/seed2"],
        "expert failed (best reward 2 of 4; only_successful)": ["transfer_cube/seed3"]}
    assert report["notes"]["expert_failures"] == {"transfer_cube": 1}
    assert sorted(episodes(dataset_dir)) == ["transfer_cube/seed0", "transfer_cube/seed4"]
