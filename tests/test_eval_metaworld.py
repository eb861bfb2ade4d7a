"""The MetaWorld evaluation adapter: action conversion, layouts, observations."""

import numpy as np
import pytest

from atomskill_jax.envs import metaworld as mw
from atomskill_jax.envs import metaworld_eval
from atomskill_jax.policies.base import PolicySpec


def test_delta_and_absolute_round_trip_in_the_real_env():
    env = mw.MetaWorldEnv("pick-place")
    env.set_layout(mw.layout_id("eval", 0))
    env.reset()
    rng = np.random.default_rng(0)
    for _ in range(20):
        delta = rng.uniform(-1, 1, 4)
        target = env.absolute_target(delta)
        # away from the mocap bounds the conversion is exact both ways
        np.testing.assert_allclose(env.delta_action(target), delta, atol=1e-9)
        np.testing.assert_allclose(env.absolute_target(env.delta_action(target)), target,
                                   atol=1e-12)
        # stepping the converted command puts the mocap target where asked
        env.step(env.delta_action(target))
        np.testing.assert_allclose(env.mocap_target(), target[:3], atol=1e-9)
    # a target beyond one step's reach is clipped like the env clips commands
    far = np.concatenate([env.mocap_target() + [0.5, 0, 0], [2.0]])
    np.testing.assert_allclose(env.delta_action(far), [1, 0, 0, 1])


def test_eval_layouts_are_disjoint_from_training_layouts():
    from data_builders.metaworld_scripted.metaworld_scripted_dataset_builder import (
        MetaworldScriptedConfig)

    # every training build uses layout_id(cfg.layout_split, offset + index)
    cfg = MetaworldScriptedConfig(name="t")
    assert cfg.layout_split == "train"
    train_ids = {mw.layout_id(cfg.layout_split, i) for i in range(10_000)}
    assert max(train_ids) < mw.EVAL_LAYOUT_BASE
    with pytest.raises(ValueError):
        mw.layout_id("train", mw.EVAL_LAYOUT_BASE)  # cannot reach into eval ids
    seeds = [metaworld_eval.eval_layouts(s, 20) for s in range(3)]
    assert all(mw.layout_split(x) == "eval" for ids in seeds for x in ids)
    assert len(set().union(*map(set, seeds))) == 60  # seeds never share a layout
    assert not train_ids & set().union(*map(set, seeds))
    # and the layouts themselves (object and goal positions) differ
    env = mw.MetaWorldEnv("shelf-place")
    train = {tuple(np.round(env.set_layout(mw.layout_id("train", i)), 6)) for i in range(30)}
    evals = {tuple(np.round(env.set_layout(x), 6)) for x in seeds[0] + seeds[1]}
    assert len(evals) == 40 and not train & evals


def test_adapter_observations_match_the_builder_and_reject_training_layouts():
    spec = PolicySpec(observation_keys=("state", "proprio", "language_instruction",
                                        "language_embedding"), action_space="action_abs")
    emb = np.arange(384, dtype=np.float32)
    env = metaworld_eval.MetaWorldEvalEnv("drawer-close", spec, language_embedding=emb)
    with pytest.raises(ValueError, match="training layout"):
        env.reset(mw.layout_id("train", 3))
    obs = env.reset(mw.layout_id("eval", 3))
    assert set(obs) == set(spec.observation_keys)
    assert obs["state"].shape == (39,) and obs["state"].dtype == np.float32
    np.testing.assert_array_equal(obs["proprio"], obs["state"][:4])
    assert obs["language_instruction"] == "push the drawer closed"
    np.testing.assert_array_equal(obs["language_embedding"], emb)
    # an absolute target becomes the delta that reaches it
    target = np.concatenate([env.env.mocap_target() + [0.004, -0.003, 0.002], [0.5]])
    env.step(target)
    np.testing.assert_allclose(env.env.mocap_target(), target[:3], atol=1e-9)
    with pytest.raises(ValueError, match="non-finite"):
        env.step(np.array([np.nan, 0, 0, 0]))
    with pytest.raises(ValueError, match="needs language_embedding"):
        metaworld_eval.MetaWorldEvalEnv("drawer-close", spec)
    batch = metaworld_eval.stack_observations([obs, obs])
    assert batch["state"].shape == (2, 39) and batch["language_instruction"].shape == (2,)


def test_lift_is_measured_from_the_hands_arrival_not_from_reset():
    # The hammer's reported height starts at 0 and settles 2.8 cm higher before the
    # hand arrives: that rise is not a lift (measured from reset, it counted as one).
    from atomskill_jax.eval.stages import StageTracker

    def state(hand, obj):
        s = np.zeros(39, np.float32)
        s[0:3], s[4:7] = hand, obj
        return s

    tracker = StageTracker("hammer")
    far, info = [0.0, 0.4, 0.2], {"success": 0.0}
    tracker.reset(state(far, [0.0, 0.6, 0.0]))
    for z in (0.01, 0.02, 0.035, 0.028):  # settling, the hand still far away
        assert not tracker.flags(state(far, [0.0, 0.6, z]), info).any()
    arrived = tracker.flags(state([0.0, 0.6, 0.06], [0.0, 0.6, 0.028]), info)
    assert list(arrived) == [True, False, False]  # reached, not lifted
    lifted = tracker.flags(state([0.0, 0.6, 0.075], [0.0, 0.6, 0.045]), info)
    assert list(lifted) == [True, True, False]  # 1.7 cm above its height on arrival
