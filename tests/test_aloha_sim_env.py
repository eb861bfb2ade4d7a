"""The ALOHA sim adapter: gym-aloha's joint-space tasks, unrendered unless asked, with
the builder's observation keys, stage progress and success by the best reward.

Nothing renders in this process (other test files import TensorFlow, and OSMesa and
TensorFlow crash together): images come from a spawned worker (`_in_worker`).
"""

import ctypes.util
import os

import numpy as np
import pytest

from atomskill_jax.envs import aloha_sim
from atomskill_jax.policies.base import PolicySpec

REST = np.array([0, -0.96, 1.16, 0, -0.3, 0, 1.0] * 2, np.float32)  # arms at rest, open


def test_reset_places_objects_with_gym_aloha_samplers():
    from gym_aloha.constants import START_ARM_POSE
    from gym_aloha.utils import sample_box_pose, sample_insertion_pose

    cube = aloha_sim.AlohaSimEnv("transfer-cube")
    ins = aloha_sim.AlohaSimEnv("insertion")
    for seed in (0, 7):
        obs = cube.reset(seed)
        assert obs["state"].shape == (28,) and obs["proprio"].shape == (14,)
        np.testing.assert_allclose(obs["state"][14:21], sample_box_pose(seed), atol=1e-7)
        assert not obs["state"][21:].any() and not obs["state"][:14].any()  # at rest
        np.testing.assert_allclose(obs["proprio"][:6], START_ARM_POSE[:6], atol=1e-7)
        obs = ins.reset(seed)
        np.testing.assert_allclose(obs["state"][14:], np.concatenate(sample_insertion_pose(seed)),
                                   atol=1e-7)
    assert not np.allclose(cube.reset(0)["state"], cube.reset(1)["state"])
    with pytest.raises(ValueError, match="unknown ALOHA sim task 'cube'"):
        aloha_sim.AlohaSimEnv("cube")
    with pytest.raises(ValueError, match="unknown ALOHA sim camera 'wrist'"):
        aloha_sim.AlohaSimEnv("insertion", cameras=("wrist",))
    with pytest.raises(RuntimeError, match="reset"):
        aloha_sim.AlohaSimEnv("insertion").step(REST)


def test_nothing_renders_without_a_camera(monkeypatch):
    env = aloha_sim.AlohaSimEnv("transfer_cube")  # first: imports dm_control quietly
    import mujoco
    from dm_control.mujoco import Physics

    def no_render(*args, **kwargs):
        raise AssertionError("rendered")

    monkeypatch.setattr(mujoco, "Renderer", no_render)
    monkeypatch.setattr(Physics, "render", no_render)
    obs = env.reset(3)
    for _ in range(3):
        obs, *_ = env.step(REST)
    assert sorted(obs) == ["proprio", "state"]
    with_camera = aloha_sim.AlohaSimEnv("transfer_cube", cameras=("top",))
    with_camera.reset(3, render=False)  # a camera, but no image asked for
    obs, *_ = with_camera.step(REST, render=False)
    assert sorted(obs) == ["proprio", "state"]
    with pytest.raises(ValueError, match=r"transfer_cube: action of shape \(7,\)"):
        env.step(REST[:7])
    with pytest.raises(ValueError, match="non-finite action at step 3"):
        env.step(np.full(14, np.nan))


def test_progress_and_success_by_best_reward(monkeypatch):
    env = aloha_sim.AlohaSimEnv("insertion", max_steps=6)  # first: imports dm_control quietly
    from gym_aloha.tasks import sim

    rewards = iter([0, 1, 2, 4, 3, 3])  # insertion's reward flickers after the pin
    monkeypatch.setattr(sim.InsertionTask, "get_reward", lambda self, physics: next(rewards))
    env.reset(0)
    got = [env.step(REST)[1:] for _ in range(6)]
    assert [r for r, *_ in got] == [0, 1, 2, 4, 3, 3]
    assert [info["progress"] for *_, info in got] == [0, 0.25, 0.5, 1, 1, 1]
    assert [info["success"] for *_, info in got] == [0, 0, 0, 1, 1, 1]
    assert [term for _, term, _, _ in got] == [False, False, False, True, True, True]
    assert [trunc for _, _, trunc, _ in got] == [False] * 5 + [True]
    assert env.max_reward == 4 and env.stage_flags().all()
    env.reset(1)  # a new episode starts from nothing
    assert env.progress == 0 and not env.stage_flags().any()
    assert aloha_sim.AlohaSimEnv("insertion").max_steps == 400


def test_eval_env_keys_and_evaluation_seeds():
    spec = PolicySpec(name="p", action_space="action_abs", action_dim=14,
                      observation_keys=("proprio", "state", "language_embedding"))
    with pytest.raises(ValueError, match="needs language_embedding"):
        aloha_sim.AlohaSimEvalEnv("insertion", spec)
    with pytest.raises(ValueError, match="action_dim 4"):
        aloha_sim.AlohaSimEvalEnv("insertion", PolicySpec(action_dim=4))
    env = aloha_sim.AlohaSimEvalEnv("insertion", spec, language_embedding=np.ones(384))
    with pytest.raises(ValueError, match="training layout"):
        env.reset(5)
    seeds = aloha_sim.eval_seeds(1, 3)
    assert seeds == [1_000_003, 1_000_004, 1_000_005] and not set(seeds) & set(
        aloha_sim.eval_seeds(0, 3))
    obs = env.reset(seeds[0])
    assert sorted(obs) == ["language_embedding", "proprio", "state"]
    assert env.max_steps == 400
    obs, info, truncated = env.step(REST)
    assert obs["state"].shape == (28,) and info["progress"] == 0 and not truncated


def test_resize_is_antialiased():
    checker = (np.indices((480, 640)).sum(0) % 2 * 255).astype(np.uint8)
    image = np.repeat(checker[..., None], 3, axis=2)
    small = aloha_sim.resize_image(image, (32, 32))
    assert small.shape == (32, 32, 3) and small.dtype == np.uint8
    assert np.abs(small.astype(int) - 127).max() <= 2  # averaged, not sampled
    np.testing.assert_array_equal(aloha_sim.resize_image(image, None), image)


# -- images, in a spawned worker ---------------------------------------------------
def _osmesa_available():
    return ctypes.util.find_library("OSMesa") is not None


def _env_rollout(task, seed, actions, image_size):
    """In the worker: observations of the adapter under `actions`, and gym-aloha's own
    agent_pos and top image for the first steps."""
    import gymnasium as gym
    import gym_aloha  # noqa: F401 - registers the envs

    env = aloha_sim.AlohaSimEnv(task, cameras=("top",), image_size=image_size)
    obs = [env.reset(seed)]
    for action in actions[:-1]:
        obs.append(env.step(action)[0])
    # gym-aloha renders three 480x640 cameras a step: two steps are enough.
    native = aloha_sim.AlohaSimEnv(task, cameras=("top",))
    gym_env = gym.make("gym_aloha/AlohaTransferCube-v0", obs_type="pixels_agent_pos")
    raw, gym_obs = [native.reset(seed)], [gym_env.reset(seed=seed)[0]]
    for action in actions[:2]:
        raw.append(native.step(action)[0])
        gym_obs.append(gym_env.step(action)[0])
    gym_env.unwrapped._env.physics.free()  # its GL context, before the worker exits
    return obs, raw, gym_obs


def _in_worker(fn, *args):
    import concurrent.futures
    import multiprocessing

    os.environ.setdefault("ATOMSKILL_RENDER_GL", "osmesa")
    with concurrent.futures.ProcessPoolExecutor(
            max_workers=1, mp_context=multiprocessing.get_context("spawn"),
            initializer=_set_gl, initargs=(os.environ["ATOMSKILL_RENDER_GL"],)) as pool:
        return pool.submit(fn, *args).result()


def _set_gl(backend):
    os.environ["MUJOCO_GL"] = os.environ["PYOPENGL_PLATFORM"] = backend


@pytest.mark.slow
@pytest.mark.skipif(not _osmesa_available(), reason="libosmesa6 not installed (make test installs it)")
def test_top_images_match_builder_and_gym_aloha(tmp_path, _hermetic_cache):
    from data_builders.aloha_sim_scripted import aloha_sim_scripted_dataset_builder as asb
    from tests.test_aloha_sim_builder import episodes

    dataset_dir, report = asb.build(str(tmp_path), tasks="transfer_cube", episodes_per_task=1,
                                    seed=4, cameras=("top",), image_size=(32, 32), max_steps=5,
                                    only_successful=False, show_progress=False)
    assert report["written"] == 1
    (meta, steps), = episodes(dataset_dir).values()
    images = steps["observation"]["image_top"]
    assert images.shape == (5, 32, 32, 3) and images.dtype == np.uint8
    assert images.std() > 5  # a rendered scene, not a blank frame
    obs, raw, gym_obs = _in_worker(_env_rollout, "transfer_cube", 4, steps["action"], (32, 32))
    # The adapter sees exactly what the builder wrote, step by step ...
    for t, o in enumerate(obs):
        np.testing.assert_array_equal(o["image_top"], images[t], err_msg=f"step {t}")
        np.testing.assert_array_equal(o["state"], steps["observation"]["state"][t])
    # ... and at native size exactly what gym-aloha renders and reports.
    for t, (o, g) in enumerate(zip(raw, gym_obs)):
        np.testing.assert_array_equal(o["image_top"], g["pixels"]["top"], err_msg=f"step {t}")
        np.testing.assert_allclose(o["proprio"], g["agent_pos"], atol=1e-6)
    np.testing.assert_array_equal(aloha_sim.resize_image(raw[2]["image_top"], (32, 32)), images[2])
