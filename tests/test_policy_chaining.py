"""Skill chaining on synthetic predictions: trigger, cap, re-query, ensembling, adapter."""

import numpy as np
import pytest

from atomskill_jax.policies import adapters, chaining


def test_skill_switches_exactly_when_distance_crosses_epsilon():
    trigger = chaining.SkillTrigger(2, epsilon=0.5, max_skill_steps=100)
    assert trigger.start_skills().all()
    # env 0 approaches the keypose; env 1 stays away.
    for d0, expect in [(2.0, False), (1.0, False), (0.5, False), (0.4999, True)]:
        need = trigger.step([d0, 3.0])
        assert need.tolist() == [expect, False], d0
    assert trigger.start_skills().tolist() == [True, False]
    assert trigger.steps.tolist() == [0, 4]
    assert trigger.switches.tolist() == [2, 1]


def test_step_cap_and_min_steps_hold():
    trigger = chaining.SkillTrigger(3, epsilon=0.1, max_skill_steps=5, min_skill_steps=2)
    trigger.start_skills()
    # env 0 never gets close: capped after exactly 5 steps; env 1 is close at once but
    # must run min 2 steps; env 2 has no keypose (NaN): only the cap ends it.
    history = []
    for _ in range(5):
        history.append(trigger.step([9.0, 0.0, np.nan]).copy())
    assert [h[0] for h in history] == [False] * 4 + [True]
    assert history[0][1] == False and history[1][1] == True  # noqa: E712
    assert history[4][2] and not any(h[2] for h in history[:4])
    assert trigger.capped.tolist() == [1, 0, 1]
    trigger.reset([True, False, False])
    assert trigger.need_skill.tolist() == [True, True, True]  # 1, 2 were due anyway
    assert trigger.steps[0] == 0 and trigger.capped.tolist() == [0, 0, 1]


@pytest.mark.parametrize("k", [1, 3, 8])
def test_requery_every_k_steps_and_chunk_execution(k):
    horizon = 4
    buf = chaining.ChunkBuffer(1, horizon, 1, requery_every=k)
    queries, executed = [], []
    for t in range(12):
        need = buf.needs_query()
        if need[0]:
            queries.append(t)
            chunk = (100 * t + np.arange(horizon, dtype=np.float32))[None, :, None]
            buf.add(chunk, need)
        executed.append(float(buf.action()[0, 0]))
        buf.advance()
    every = min(k, horizon)  # a chunk runs out after H steps
    assert queries == list(range(0, 12, every))
    # Each action is the right element of the chunk predicted at the last query.
    assert executed == [100 * q + (t - q) for t in range(12)
                        for q in [max(x for x in queries if x <= t)]]


def test_clear_forces_a_query_and_is_per_env():
    buf = chaining.ChunkBuffer(2, 4, 2, requery_every=4)
    buf.add(np.zeros((2, 4, 2)), [True, True])
    buf.advance()
    assert buf.needs_query().tolist() == [False, False]
    buf.clear([False, True])
    assert buf.needs_query().tolist() == [False, True]
    with pytest.raises(RuntimeError):
        buf.action()


def test_temporal_ensembling_weights():
    m, horizon = 0.5, 4
    buf = chaining.ChunkBuffer(1, horizon, 1, requery_every=1, ensemble_m=m)
    # Chunk predicted at step q says value 10*q for every future step.
    for t in range(6):
        buf.add(np.full((1, horizon, 1), 10.0 * t), [True])
        got = buf.action()[0, 0]
        preds = [q for q in range(t + 1) if t - q < horizon]  # chunks covering step t
        # ACT: w_i = exp(-m i), i = 0 the oldest prediction.
        w = np.exp(-m * np.arange(len(preds)))
        want = np.sum(w * 10.0 * np.asarray(preds)) / w.sum()
        np.testing.assert_allclose(got, want, rtol=1e-5)
        buf.advance()
    # First step: only one chunk, so exactly its action.
    buf2 = chaining.ChunkBuffer(1, horizon, 1, ensemble_m=m)
    buf2.add(np.arange(4, dtype=np.float32).reshape(1, 4, 1), [True])
    assert buf2.action()[0, 0] == 0.0


def test_keypose_distance():
    d = chaining.keypose_distance([[0, 0, 0], [1, 1, 1]], [[3, 4, 0], [1, 1, 1]])
    np.testing.assert_allclose(d, [5.0, 0.0])


def test_metaworld_delta_adapter():
    adapter = adapters.MetaWorldDeltaAdapter()
    obs = {"proprio": np.array([[0.1, 0.6, 0.2, 0.9], [0.0, 0.5, 0.1, 0.3]], np.float32)}
    action = np.array([[1.0, -0.5, 0.0, 0.7], [3.0, 0.0, -2.0, -1.5]], np.float32)
    out = adapter.to_absolute(action, obs)
    np.testing.assert_allclose(out[0], [0.11, 0.595, 0.2, 0.7], atol=1e-6)
    # Clipped to [-1, 1] as the env clips the command (gripper too).
    np.testing.assert_allclose(out[1], [0.01, 0.5, 0.09, -1.0], atol=1e-6)
    assert adapters.adapter_for("auto", "action", ["/d/metaworld_scripted/rlbench6/1.0.0"]
                                ).name == "metaworld"
    assert adapters.adapter_for("auto", "action_abs", ["x"]).name == "absolute"
    with pytest.raises(ValueError, match="embodiment"):
        adapters.adapter_for("auto", "action", ["aloha_sim"])


def test_metaworld_adapter_matches_env_absolute_target():
    """Against the env's own delta->target rule (mocap target + scaled delta): the
    hand-position approximation is off by at most the hand's lag behind the mocap."""
    from atomskill_jax.envs import metaworld as mw

    env = mw.MetaWorldEnv("reach")
    env.set_layout(0)
    obs = env.reset()
    adapter = adapters.MetaWorldDeltaAdapter()
    rng = np.random.default_rng(0)
    for _ in range(10):
        delta = rng.uniform(-1, 1, 4)
        want = env.absolute_target(delta)
        got = adapter.to_absolute(delta[None], {"proprio": mw.proprio_from_state(obs)[None]})[0]
        assert np.abs(got - want).max() < 0.02  # < 2 cm: two steps of motion
        obs, *_ = env.step(delta)
    env.close()
