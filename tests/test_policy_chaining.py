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


def test_a_skill_that_stops_converging_ends_after_stall_steps():
    trigger = chaining.SkillTrigger(3, epsilon=0.1, max_skill_steps=100, stall_steps=3,
                                    stall_tolerance=0.05)
    trigger.start_skills()
    # env 0 converges steadily: never stalls. env 1 hovers at 0.5 with jitter smaller
    # than the tolerance: ends on the 3rd step without progress. env 2 has no keypose
    # (NaN): only the cap could end it.
    d1 = [1.0, 0.5, 0.49, 0.52, 0.47]  # best 0.5 at step 2; 0.49, 0.52, 0.47 are < 0.05 better
    ended = [trigger.step([1.0 - 0.1 * i, d1[i], np.nan]).copy() for i in range(5)]
    assert not any(e[0] for e in ended)
    assert [bool(e[1]) for e in ended] == [False, False, False, False, True]
    assert not any(e[2] for e in ended)
    assert trigger.stalled.tolist() == [0, 1, 0] and trigger.capped.tolist() == [0, 0, 0]
    # The next skill starts with a fresh best: one step of no progress is not a stall.
    assert trigger.start_skills().tolist() == [False, True, False]
    assert not trigger.step([0.5, 0.9, np.nan])[1]
    assert trigger.since_best.tolist() == [0, 0, 6]


def test_stall_off_by_default_and_bad_settings_refused():
    trigger = chaining.SkillTrigger(1, epsilon=0.1, max_skill_steps=50)
    trigger.start_skills()
    assert not any(trigger.step([0.5])[0] for _ in range(40))  # hovering: only the cap
    with pytest.raises(ValueError, match="stall"):
        chaining.SkillTrigger(1, epsilon=0.1, max_skill_steps=5, stall_steps=-1)
    with pytest.raises(ValueError, match="stall"):
        chaining.SkillTrigger(1, epsilon=0.1, max_skill_steps=5, stall_tolerance=float("nan"))


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


LN2 = float(np.log(2.0))  # ensembling weight m: weights exp(m * age) = 1, 2, 4, ...


def _chunk(offset, t, horizon=3):
    """[1, H, 1]: the chunk predicted at step t says offset + 10 t + j for step t + j."""
    return (offset + 10.0 * t + np.arange(horizon, dtype=np.float32))[None, :, None]


def test_ensembled_actions_by_hand_per_environment():
    """H=3, m=ln 2, a chunk every step. Env 0: t=1 (2*1 + 1*10)/3 = 4; t=2 (4*2 + 2*11
    + 1*20)/7 = 50/7; t=3 the step-0 chunk has run out: (4*12 + 2*21 + 1*30)/7 = 120/7.
    Env 1 (values +100) starts a new skill at t=2: its older chunks are forgotten,
    t=2 -> 120, t=3 -> (2*121 + 1*130)/3 = 124."""
    buf = chaining.ChunkBuffer(2, 3, 1, requery_every=1, ensemble_m=LN2)
    want = [[0.0, 100.0], [4.0, 104.0], [50 / 7, 120.0], [120 / 7, 124.0]]
    for t, expected in enumerate(want):
        if t == 2:
            buf.clear([False, True])
        assert buf.needs_query().tolist() == [True, True]
        buf.add(np.concatenate([_chunk(0, t), _chunk(100, t)]), [True, True])
        np.testing.assert_allclose(buf.action()[:, 0], expected, rtol=1e-6)
        buf.advance()


def test_ensembling_with_sparse_requeries_and_partial_masks():
    """H=3, m=ln 2, env 0 re-queried every 2 steps (chunks at t=0, 2): t=1 -> 1; t=2 ->
    (4*2 + 1*20)/5 = 5.6; t=3 -> 21 (the t=0 chunk has run out). Env 1 skips its due
    re-query at t=2 and executes its t=0 chunk, 100, 101, 102, until it runs out; at
    t=3 it must query (130, nothing older left to blend)."""
    buf = chaining.ChunkBuffer(2, 3, 1, requery_every=2, ensemble_m=LN2)
    queries, got = [], []
    for t in range(4):
        need = buf.needs_query()
        queries.append(need.tolist())
        buf.add(np.concatenate([_chunk(0, t), _chunk(100, t)]),
                need & np.array([True, t in (0, 3)]))
        got.append(buf.action()[:, 0].tolist())
        buf.advance()
    assert queries == [[True, True], [False, False], [True, True], [False, True]]
    np.testing.assert_allclose(got, [[0.0, 100.0], [1.0, 101.0], [5.6, 102.0], [21.0, 130.0]],
                               rtol=1e-6)


def test_chunks_of_unmasked_environments_are_kept():
    """add() with a mask touches only the masked environments' chunks and ages."""
    buf = chaining.ChunkBuffer(2, 3, 2, requery_every=3)
    buf.add(np.stack([np.full((3, 2), 1.0), np.full((3, 2), 2.0)]), [True, True])
    buf.advance()
    buf.add(np.stack([np.full((3, 2), 5.0), np.full((3, 2), 6.0)]), [True, False])
    np.testing.assert_array_equal(buf.action(), [[5.0, 5.0], [2.0, 2.0]])
    assert buf.ages[:, 0].tolist() == [0, 1]
    buf.add(np.zeros((2, 3, 2)), [False, False])  # nothing masked: nothing changes
    np.testing.assert_array_equal(buf.action(), [[5.0, 5.0], [2.0, 2.0]])
    assert buf.needs_query().tolist() == [False, False]
    buf.advance()
    buf.advance()
    assert buf.needs_query().tolist() == [False, True]  # env 1's chunk is 3 steps old
    with pytest.raises(ValueError, match="requery_every"):
        chaining.ChunkBuffer(1, 3, 1, requery_every=0)


def test_trigger_counts_and_reset():
    """A keypose reached on the cap's step is a reached skill, not a capped one; counters
    are per environment; reset() without a mask resets every environment."""
    trigger = chaining.SkillTrigger(2, epsilon=0.5, max_skill_steps=2)
    assert trigger.start_skills().tolist() == [True, True]
    assert trigger.start_skills().tolist() == [False, False]  # nothing due any more
    assert trigger.step([1.0, 1.0]).tolist() == [False, False]
    need = trigger.step([0.1, 1.0])  # step 2 = the cap: env 0 reached, env 1 capped
    assert need.tolist() == [True, True] and trigger.capped.tolist() == [0, 1]
    need[:] = False  # the returned mask is a copy
    assert trigger.need_skill.tolist() == [True, True]
    assert trigger.steps.tolist() == [2, 2]
    assert trigger.start_skills().tolist() == [True, True]
    assert trigger.steps.tolist() == [0, 0] and trigger.switches.tolist() == [2, 2]
    trigger.step([0.0, 0.0])
    trigger.reset()
    assert trigger.need_skill.tolist() == [True, True] and trigger.steps.tolist() == [0, 0]
    assert trigger.switches.tolist() == [0, 0] and trigger.capped.tolist() == [0, 0]
    with pytest.raises(ValueError, match="max_skill_steps"):
        chaining.SkillTrigger(1, epsilon=0.1, max_skill_steps=0)
    with pytest.raises(ValueError, match="min_skill_steps"):
        chaining.SkillTrigger(1, epsilon=0.1, max_skill_steps=5, min_skill_steps=0)


def test_buffer_defaults_dtypes_and_running_out():
    """Defaults: a query every step, no ensembling. Actions are float32 (also when
    ensembled); a chunk not replaced within its horizon leaves nothing to execute."""
    buf = chaining.ChunkBuffer(1, 2, 1)
    buf.add(np.arange(2.0)[None, :, None], [True])
    buf.advance()
    assert buf.needs_query().tolist() == [True]
    assert buf.action().dtype == np.float32 and buf.action()[0, 0] == 1.0
    buf.advance()
    with pytest.raises(RuntimeError, match="^ChunkBuffer.action: an environment has no chunk"):
        buf.action()
    ens = chaining.ChunkBuffer(1, 2, 1, ensemble_m=0.1)
    ens.add(np.arange(2.0)[None, :, None], [True])
    assert ens.action().dtype == np.float32
    # Masks given as 0/1 are masks, not indices.
    two = chaining.ChunkBuffer(2, 2, 1, requery_every=2)
    two.add(np.ones((2, 2, 1)), np.array([1, 1]))
    two.add(np.full((2, 2, 1), 7.0), np.array([0, 1]))
    np.testing.assert_array_equal(two.action()[:, 0], [1.0, 7.0])
    two.clear(np.array([0, 1]))
    assert two.needs_query().tolist() == [False, True]


def test_trigger_defaults_cap_of_one_and_counters():
    """min_skill_steps defaults to 1 (a keypose reached on the first step ends the skill);
    a cap of 1 is allowed; capped skills add up; 0/1 reset masks are masks."""
    trigger = chaining.SkillTrigger(2, epsilon=0.5, max_skill_steps=1)
    for _ in range(3):
        trigger.start_skills()
        assert trigger.step([0.1, 9.0]).tolist() == [True, True]
    assert trigger.capped.tolist() == [0, 3] and trigger.switches.tolist() == [3, 3]
    assert {a.dtype.kind for a in (trigger.steps, trigger.switches, trigger.capped)} == {"i"}
    trigger.start_skills()
    trigger.reset(np.array([0, 1]))
    assert trigger.switches.tolist() == [4, 0] and trigger.capped.tolist() == [0, 0]
    with pytest.raises(ValueError, match="^max_skill_steps and min_skill_steps must be >= 1$"):
        chaining.SkillTrigger(1, epsilon=0.1, max_skill_steps=0)
