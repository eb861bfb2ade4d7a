"""The common policy interface, the random policy and the scripted expert wrapper."""

import functools
import pickle

import numpy as np
import pytest

from atomskill_jax.envs import metaworld as mw
from atomskill_jax.policies.base import PolicySpec, RandomPolicy, TaskInfo
from atomskill_jax.policies.scripted import ScriptedExpertPolicy


def test_spec_validates_and_lists_cameras():
    spec = PolicySpec(observation_keys=("state", "image_corner", "image_topview",
                                        "language_embedding"), action_space="action_abs")
    assert spec.cameras == ("corner", "topview")
    assert pickle.loads(pickle.dumps(spec)) == spec and spec.to_dict()["action_space"] == "action_abs"
    with pytest.raises(ValueError, match="action_space"):
        PolicySpec(action_space="joint")
    with pytest.raises(ValueError, match="unknown key 'depth'"):
        PolicySpec(observation_keys=("state", "depth"))


def _infos(tasks, seed=0):
    return [TaskInfo(t, "do it", mw.layout_id("eval", i), seed, i) for i, t in enumerate(tasks)]


def test_random_policy_is_batched_bounded_and_reproducible():
    policy = RandomPolicy(seed=3)
    obs = {"state": np.zeros((5, 39), np.float32)}
    policy.reset(_infos(["push"] * 5))
    a = policy.infer(obs)
    assert a.shape == (5, 4) and np.all(np.abs(a) <= 1)
    policy.infer(obs)
    policy.reset(_infos(["push"] * 5))
    np.testing.assert_array_equal(policy.infer(obs), a)  # same episodes, same actions
    policy.reset(_infos(["push"] * 5, seed=1))
    assert not np.allclose(policy.infer(obs), a)
    with pytest.raises(ValueError, match="batch size"):
        policy.infer({"state": np.zeros((2, 39)), "proprio": np.zeros((3, 4))})


@pytest.mark.filterwarnings("ignore:Constant")
def test_factories_pickle_and_expert_acts_per_environment():
    factory = functools.partial(ScriptedExpertPolicy, "action_abs")
    policy = pickle.loads(pickle.dumps(factory))()
    assert policy.spec.action_space == "action_abs" and policy.spec.observation_keys == ("state",)
    native = ScriptedExpertPolicy()
    envs = [mw.MetaWorldEnv(t) for t in ("drawer-close", "pick-place")]
    states = []
    for env in envs:
        env.set_layout(mw.layout_id("eval", 0))
        states.append(env.reset())
    obs = {"state": np.stack(states).astype(np.float32)}
    native.reset(_infos(["drawer-close", "pick-place"]))
    policy.reset(_infos(["drawer-close", "pick-place"]))
    deltas, targets = native.infer(obs), policy.infer(obs)
    assert deltas.shape == targets.shape == (2, 4)
    for i, task in enumerate(["drawer-close", "pick-place"]):
        expected = np.clip(mw.expert_policy(task).get_action(states[i]), -1, 1)
        np.testing.assert_allclose(deltas[i], expected, rtol=1e-6)
    # absolute: the hand position moved by the scaled delta, gripper unchanged
    np.testing.assert_allclose(targets[:, :3], obs["state"][:, :3] + 0.01 * deltas[:, :3],
                               atol=1e-6)
    np.testing.assert_allclose(targets[:, 3], deltas[:, 3])
    with pytest.raises(ValueError, match="call reset first"):
        native.infer({"state": obs["state"][:1]})
