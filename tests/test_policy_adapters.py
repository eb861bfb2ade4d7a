"""Embodiment adapters: a delta action as the absolute target the keypose trigger
compares with the predicted keypose (policies/adapters.py)."""

import numpy as np
import pytest

from atomskill_jax.policies import adapters


def test_hand_adapter_rule_and_clipping():
    adapter = adapters.MetaWorldHandAdapter()
    adapter.reset(["reach", "reach"])
    obs = {"proprio": np.array([[0.1, 0.6, 0.2, 0.9], [0.0, 0.5, 0.1, 0.3]], np.float32)}
    action = np.array([[1.0, -0.5, 0.0, 0.7], [3.0, 0.0, -2.0, -1.5]], np.float32)
    out = adapter.to_absolute(action, obs)
    np.testing.assert_allclose(out[0], [0.11, 0.595, 0.2, 0.7], atol=1e-6)
    # Clipped to [-1, 1] as the env clips the command (gripper too).
    np.testing.assert_allclose(out[1], [0.01, 0.5, 0.09, -1.0], atol=1e-6)


def test_auto_choice():
    assert adapters.adapter_for("auto", "action", ["/d/metaworld_scripted/rlbench6/1.0.0"]
                                ).name == "metaworld"
    assert adapters.adapter_for("metaworld_hand", "action").name == "metaworld_hand"
    assert adapters.adapter_for("auto", "action_abs", ["x"]).name == "absolute"
    with pytest.raises(ValueError, match="embodiment"):
        adapters.adapter_for("auto", "action", ["aloha_sim"])


def _rollout(task, deltas):
    """(the env's own absolute target of each delta, before it is applied: mocap +
    scaled delta, clipped to the bounds; proprio observed before each delta)."""
    from atomskill_jax.envs import metaworld as mw

    env = mw.MetaWorldEnv(task)
    env.set_layout(0)
    obs = env.reset()
    want, seen = [], []
    for delta in deltas:
        want.append(env.absolute_target(delta))
        seen.append(mw.proprio_from_state(obs))
        obs, *_ = env.step(delta)
    env.close()
    return np.stack(want), np.stack(seen)


def test_commanded_target_follows_the_env_where_the_hand_does_not():
    """Two episodes side by side: pick-out-of-hole (its own lower z bound, -0.05) driven
    down into the table and against the bound, then sideways; reach, random deltas. The
    commanded target tracks the env's mocap target to 1 mm at every step; the hand rule
    misses it by centimetres once the hand is blocked (the cause of skills that never
    reached their keypose)."""
    rng = np.random.default_rng(0)
    down = np.tile([0.0, 0.0, -1.0, 1.0], (40, 1))
    side = np.tile([1.0, 0.3, -0.2, -1.0], (20, 1))
    pressing = np.concatenate([down, side])
    wandering = rng.uniform(-1.5, 1.5, (60, 4))
    runs = [_rollout("pick-out-of-hole", pressing), _rollout("reach-v3", wandering)]
    commanded, hand = adapters.MetaWorldCommandedAdapter(), adapters.MetaWorldHandAdapter()
    commanded.reset(["pick-out-of-hole", "reach-v3"])
    hand.reset(["pick-out-of-hole", "reach-v3"])
    errors, hand_errors = [], []
    for t in range(60):
        action = np.stack([pressing[t], wandering[t]])
        obs = {"proprio": np.stack([r[1][t] for r in runs])}
        want = np.stack([r[0][t] for r in runs])
        errors.append(np.abs(commanded.to_absolute(action, obs) - want).max(axis=-1))
        hand_errors.append(np.abs(hand.to_absolute(action, obs) - want).max(axis=-1))
    errors, hand_errors = np.array(errors), np.array(hand_errors)
    assert errors.max() < 1e-3, errors.max(axis=0)
    # The bound itself was reached (z -0.05 is below the default bound 0.05).
    assert runs[0][0][39, 2] == pytest.approx(-0.05, abs=1e-6)
    assert hand_errors[:, 0].max() > 0.02  # the blocked hand is centimetres off
    # A new episode starts from the new hand position, not the old target.
    commanded.reset(["reach"])
    start = np.array([[0.0, 0.6, 0.2, 0.0]], np.float32)
    out = commanded.to_absolute(np.zeros((1, 4)), {"proprio": start})
    np.testing.assert_allclose(out[0, :3], start[0, :3] + adapters.METAWORLD_MOCAP_MINUS_HAND,
                               atol=1e-6)
    with pytest.raises(ValueError, match="2 environments|1 environments"):
        commanded.to_absolute(np.zeros((2, 4)), {"proprio": np.zeros((2, 4))})


def test_mocap_bounds_table_matches_every_mt50_env():
    from atomskill_jax.envs import metaworld as mw
    from atomskill_jax.eval import suites

    for task in suites.resolve_tasks("mt50", None):
        env = mw.MetaWorldEnv(task).env
        low, high = adapters.metaworld_mocap_bounds(task)
        np.testing.assert_allclose(low, env.mocap_low, atol=1e-9, err_msg=task)
        np.testing.assert_allclose(high, env.mocap_high, atol=1e-9, err_msg=task)


def test_the_adapter_is_part_of_the_evaluation_identity():
    """Episodes evaluated under another trigger rule are not reused: the resolved eval
    options name the adapter (skills only: the ACT-like baseline has no trigger)."""
    import os

    from atomskill_jax.methods.atomskill.spec import resolve_options
    from atomskill_jax.training import config_flags

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    config = config_flags.load_config(os.path.join(repo, "configs", "atomskill.py") + ":tiny")
    config.data.datasets = ({"name": "/d/metaworld_scripted/rlbench6/1.0.0", "weight": 1.0},)
    assert resolve_options(config, {})["adapter"] == "metaworld"
    assert resolve_options(config, {"embodiment": "metaworld_hand"})["adapter"] == "metaworld_hand"
    with pytest.raises(ValueError, match="unknown embodiment"):
        resolve_options(config, {"embodiment": "metaworld_elbow"})  # before any rollout
    # Entries given as strings on the command line (the demo's "name/config" form).
    config.data.datasets = ("metaworld_scripted/custom",)
    assert resolve_options(config, {})["adapter"] == "metaworld"
    config.model.decoder.skill_conditioning = False
    assert "adapter" not in resolve_options(config, {})
    import argparse

    from atomskill_jax.commands import eval as eval_command

    sub = argparse.ArgumentParser().add_subparsers()
    eval_command.add_parser(sub)
    args = sub.choices["eval"].parse_args(["--embodiment=metaworld_hand"])
    assert args.embodiment == "metaworld_hand"
