"""The loaded AtomSkill policy against a reference computed by hand.

The session's tiny trained workdir (real model, real MetaWorld statistics) is loaded
twice: as the policy under test and as a bare model. Each action the policy sends is
recomputed from the model's own calls (`sample_skill`, `predict_actions`) with the
normalisation done here in numpy from the checkpoint's saved statistics, so a policy
that skips a normalisation, mixes environments' skills or blends chunks wrongly
sends a different action than the reference.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from atomskill_jax.policies.base import TaskInfo

H = 4  # the tiny config's horizon (asserted below)
EPS_STD = 1e-6  # normalization.EPS: spreads below it are only shifted


B = 3  # every test runs 3 environments: the policy compiles once for the module


@pytest.fixture(scope="module")
def reference(tiny_trained_workdir):
    """(policy, statistics fields, run config) of the workdir's latest checkpoint. The
    reference calls the policy's own jitted model functions (`decode`, `sample_decode`
    with every environment starting), on inputs normalised here: the eager model takes
    tens of seconds per call on 2 cores."""
    import ml_collections

    from atomskill_jax.policies.loading import load_policy, read_workdir_assets

    # epsilon 0: no keypose is ever reached; a long cap: skills end only when a test says.
    policy = load_policy(tiny_trained_workdir, epsilon=0.0, max_skill_steps=100)
    assets = read_workdir_assets(tiny_trained_workdir)[0]
    config = ml_collections.ConfigDict(assets["config"])
    assert int(config.model.horizon) == H and config.data.normalization.mode == "mean_std"
    assert config.data.action_space == "action" and policy.adapter.name == "metaworld"
    fields = assets["statistics"][0]["fields"]
    return policy, {k: {s: np.asarray(v[s], np.float64) for s in ("mean", "std")}
                    for k, v in fields.items()}, config


def _reset(reference, *, epsilon=0.0, requery_every=1, ensemble_m=None, resample_every=0):
    """The shared policy, reset for B fresh episodes with these runtime options."""
    policy = reference[0]
    policy.options = dataclasses.replace(policy.options, requery_every=requery_every)
    policy.ensemble_m, policy.epsilon = ensemble_m, epsilon
    policy.resample_every = resample_every
    infos = [TaskInfo("pick-place", "pick", 1_000_000 + i, 0, i) for i in range(B)]
    policy.reset(infos)
    return policy, infos


def _scale(field):
    return np.where(field["std"] < EPS_STD, 1.0, field["std"])


def _norm(x, field):
    return (np.asarray(x, np.float64) - field["mean"]) / _scale(field)


def _unnorm(y, field):
    return np.asarray(y, np.float64) * _scale(field) + field["mean"]


def _obs(stats, b, seed):
    """Observations where the data lives (state within half a std of its mean; proprio
    is the state's first four entries, as the MetaWorld builder writes it)."""
    r = np.random.default_rng(seed)
    st = stats["observation/state"]
    state = st["mean"] + 0.5 * st["std"] * r.normal(size=(b, len(st["mean"])))
    lang = r.normal(size=(b, 384))
    lang /= np.linalg.norm(lang, axis=1, keepdims=True)
    return {"state": state.astype(np.float32), "proprio": state[:, :4].astype(np.float32),
            "language_embedding": lang.astype(np.float32)}


def _model_obs(obs, stats):
    return {"proprio": jnp.asarray(_norm(obs["proprio"], stats["observation/proprio"]),
                                   jnp.float32),
            "state": jnp.asarray(_norm(obs["state"], stats["observation/state"]), jnp.float32)}


def _decode(reference, obs, tokens):
    """(un-normalised chunk [B, H, A], normalised keypose [B, A]) by hand."""
    policy, stats = reference[:2]
    chunk, keypose = policy.functions["decode"](_model_obs(obs, stats), obs["language_embedding"],
                                                np.asarray(tokens, np.float32))
    return _unnorm(np.asarray(chunk), stats["action"]), np.asarray(keypose, np.float64)


def _sample(reference, obs, infos, counter, steps_in=0, seed=0):
    """Tokens each environment's draw number `counter` (since reset) gives for a new
    skill: the key is the documented per-environment seed (runtime.episode_seed: the
    option seed, task, seed, layout and episode of its TaskInfo) folded with the
    environment's draw count."""
    from atomskill_jax.methods.atomskill.runtime import episode_seed

    policy, stats = reference[:2]
    seeds = np.array([episode_seed(seed, info) for info in infos], np.uint32)
    tokens, _, _ = policy.functions["sample_decode"](
        _model_obs(obs, stats), obs["language_embedding"], np.zeros_like(policy._tokens),
        np.ones(len(infos), bool), np.full(len(infos), steps_in, np.int32), seeds,
        np.full(len(infos), counter, np.int32))
    return np.asarray(tokens)


class _Commanded:
    """MetaWorld's commanded mocap target by hand, stepped once per executed action as
    the env does: it starts at the first observation's hand plus the mocap offset at
    rest, each action adds clip(delta) * 0.01, and it stays within pick-place's mocap
    bounds ((-0.5, 0.4, 0.05), (0.5, 1, 0.5)); the gripper entry is clip(a[3])."""

    LOW, HIGH = np.array([-0.5, 0.4, 0.05]), np.array([0.5, 1.0, 0.5])

    def __init__(self):
        self.target = None

    def step(self, action, obs):
        a = np.clip(np.asarray(action, np.float64), -1, 1)
        if self.target is None:
            self.target = np.clip(np.asarray(obs["proprio"], np.float64)[:, :3]
                                  + np.array([-0.0046, -0.0014, 0.0049]), self.LOW, self.HIGH)
        self.target = np.clip(self.target + 0.01 * a[:, :3], self.LOW, self.HIGH)
        return np.concatenate([self.target, a[:, 3:]], axis=1)


def _distance(reference, target, keypose):
    """The trigger's distance: the absolute target, normalised with action_abs, to the
    predicted keypose."""
    stats = reference[1]
    return np.linalg.norm(_norm(target, stats["action_abs"]) - keypose, axis=1)


def test_actions_are_the_unnormalised_decoder_output_on_normalised_observations(reference):
    stats = reference[1]
    policy, infos = _reset(reference)
    obs = [_obs(stats, B, seed) for seed in range(3)]
    tokens = _sample(reference, obs[0], infos, 0)
    commanded = _Commanded()
    for t in range(3):
        action = policy.infer(obs[t])
        target = commanded.step(action, obs[t])
        # One skill for the whole run (epsilon 0): the tokens drawn at step 0.
        np.testing.assert_array_equal(np.asarray(policy._tokens), tokens)
        chunk, keypose = _decode(reference, obs[t], tokens)  # re-queried every step
        np.testing.assert_allclose(action, chunk[:, 0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(policy.last_distance,
                                   _distance(reference, target, keypose), rtol=1e-5)
    # The statistics matter here: un-normalised and normalised chunks differ.
    assert np.abs(chunk[:, 0] - _norm(chunk[:, 0], stats["action"])).min() > 1e-2
    # Every environment due at once, after steps that sampled nothing: the second
    # sampler call of the episode (key index 1), for all of them.
    policy._trigger.need_skill[:] = True
    obs3 = _obs(stats, B, 3)
    action = policy.infer(obs3)
    tokens = _sample(reference, obs3, infos, 1)
    np.testing.assert_array_equal(np.asarray(policy._tokens), tokens)
    np.testing.assert_allclose(action, _decode(reference, obs3, tokens)[0][:, 0], rtol=1e-5,
                               atol=1e-6)
    assert policy.skill_counts()["skills"].tolist() == [2] * B


def test_resampling_draws_with_the_steps_into_the_skill(reference):
    """resample_every=2: at step 2 the skill's tokens are drawn again (sampler call 1)
    with the sampler told the skill is 2 steps old; no new skill is counted."""
    stats = reference[1]
    obs = [_obs(stats, B, seed) for seed in range(30, 33)]
    policy, infos = _reset(reference, resample_every=2)
    for t in range(3):
        policy.infer(obs[t])
    assert policy.skill_counts()["skills"].tolist() == [1] * B
    tokens = _sample(reference, obs[2], infos, 1, steps_in=2)
    np.testing.assert_array_equal(np.asarray(policy._tokens), tokens)
    assert np.abs(tokens - _sample(reference, obs[2], infos, 1, steps_in=0)).max() > 0


def _codebook(policy):
    rows = [np.asarray(v) for k, v in policy.program.params.items()
            if k.split("/")[-1] == "codebook"]
    assert len(rows) == 1, "expected one VQ codebook in the model state"
    return rows[0]


def test_a_skill_starting_in_one_environment_leaves_the_others_alone(reference):
    """After step 0 only env j has come within epsilon of its keypose. At step 1 env j
    alone gets new tokens, a new chunk and a new keypose; the others keep theirs and go
    on executing their step-0 chunk (re-query every 3 steps)."""
    stats = reference[1]
    obs = [_obs(stats, B, seed) for seed in range(10, 14)]
    policy, infos = _reset(reference, requery_every=3)
    policy.infer(obs[0])
    d0 = np.sort(policy.last_distance)
    j = int(np.argmin(policy.last_distance))
    assert d0[1] - d0[0] > 1e-3, d0  # distinct distances: exactly one crosses
    # The same episodes again, epsilon between the smallest distance and the others.
    policy, infos = _reset(reference, requery_every=3, epsilon=0.5 * (d0[0] + d0[1]))
    commanded = _Commanded()
    a0 = policy.infer(obs[0])
    commanded.step(a0, obs[0])
    policy._trigger.epsilon = 0.0  # from here on only the test decides who starts
    chunk0, keypose0 = _decode(reference, obs[0], _sample(reference, obs[0], infos, 0))
    np.testing.assert_allclose(a0, chunk0[:, 0], rtol=1e-5, atol=1e-6)
    # Mark every skill with a code no draw used, so a skill replaced where it should
    # not be shows at once.
    codebook = _codebook(policy)
    used = {tuple(row) for row in np.asarray(policy._tokens).reshape(-1, codebook.shape[1])}
    spare = [row for row in codebook if tuple(row) not in used]
    assert spare, "the sampler used every code; no spare code to mark the skills with"
    held = np.broadcast_to(spare[0], np.asarray(policy._tokens).shape).copy()
    policy._tokens = held

    others = [i for i in range(B) if i != j]
    a1 = policy.infer(obs[1])
    target1 = commanded.step(a1, obs[1])
    new = _sample(reference, obs[1], infos, 1)
    tokens = np.asarray(policy._tokens)
    np.testing.assert_array_equal(tokens[others], held[others])
    np.testing.assert_array_equal(tokens[j], new[j])
    chunk1, keypose1 = _decode(reference, obs[1], tokens)
    np.testing.assert_allclose(a1[j], chunk1[j, 0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a1[others], chunk0[others, 1], rtol=1e-5, atol=1e-6)
    keypose = np.where(np.arange(B)[:, None] == j, keypose1, keypose0)
    np.testing.assert_allclose(policy.last_distance,
                               _distance(reference, target1, keypose), rtol=1e-5)
    assert policy.skill_counts()["skills"].tolist() == [1 + (i == j) for i in range(B)]

    # Step 2: nobody re-queries. Step 3: the others' chunks are 3 steps old and are
    # re-queried with their held tokens; env j's (from step 1) is not.
    a2 = policy.infer(obs[2])
    commanded.step(a2, obs[2])
    np.testing.assert_allclose(a2[others], chunk0[others, 2], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a2[j], chunk1[j, 1], rtol=1e-5, atol=1e-6)
    a3 = policy.infer(obs[3])
    target3 = commanded.step(a3, obs[3])
    chunk3, keypose3 = _decode(reference, obs[3], tokens)
    np.testing.assert_allclose(a3[others], chunk3[others, 0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a3[j], chunk1[j, 2], rtol=1e-5, atol=1e-6)
    keypose = np.where(np.arange(B)[:, None] == j, keypose1, keypose3)
    np.testing.assert_allclose(policy.last_distance,
                               _distance(reference, target3, keypose), rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(policy._tokens), tokens)
    assert policy.skill_counts()["skills"].tolist() == [1 + (i == j) for i in range(B)]


def test_temporal_ensembling_of_real_chunks(reference):
    """ensemble_m = m: the action at step t is sum_q w_q chunk_q[t - q] / sum_q w_q over
    the chunks predicted at steps q > t - H, w_q = exp(m (t - q)) (ACT: the oldest
    prediction weighs most), all un-normalised."""
    m, steps = 0.5, 6
    stats = reference[1]
    obs = [_obs(stats, B, seed) for seed in range(20, 20 + steps)]
    policy, infos = _reset(reference, ensemble_m=m)
    tokens = _sample(reference, obs[0], infos, 0)
    chunks = [_decode(reference, o, tokens)[0] for o in obs]
    for t in range(steps):
        action = policy.infer(obs[t])
        qs = [q for q in range(t + 1) if t - q < H]
        w = np.exp(m * np.array([t - q for q in qs], np.float64))
        want = sum(wq * chunks[q][:, t - q] for wq, q in zip(w, qs)) / w.sum()
        np.testing.assert_allclose(action, want, rtol=1e-5, atol=1e-6)
    # Ensembling changed the actions here (the chunks disagree): the check has teeth.
    assert np.abs(action - chunks[-1][:, 0]).max() > 1e-3


def _restore(path):
    """An orbax item as a nested dict of numpy arrays, read without the loader."""
    import orbax.checkpoint as ocp

    from atomskill_jax.policies.loading import single_device_target

    checkpointer = ocp.StandardCheckpointer()
    meta = checkpointer.metadata(path).item_metadata.tree
    return jax.tree.map(np.asarray, checkpointer.restore(path, single_device_target(meta)))


def _flat(tree, prefix=()):
    """{path tuple: array} of a restored nnx state (leaves under a 'value' key)."""
    if isinstance(tree, dict):
        if set(tree) == {"value"}:
            return {prefix: np.asarray(tree["value"])}
        out = {}
        for k, v in tree.items():
            out.update(_flat(v, prefix + (str(k),)))
        return out
    return {prefix: np.asarray(tree)}


def test_policy_runs_the_ema_sampler_and_the_frozen_skill_model(tiny_trained_workdir,
                                                                 reference):
    """What the loaded policy computes with: the sampler checkpoint's `params` item, whose
    sampler is the EMA of the raw trained sampler (train_state `params`) and whose skill
    model is the skill stage's, untouched. In the tiny run (2 sampler steps, warm-up
    lr(0) = 0 so step 0 leaves the init in place) the EMA is, by hand,
    d * init + (1 - d) * raw with the warm-up decay of step 1,
    d = min(ema_decay, (1 + 1) / (10 + 1)) (training/train_state.py)."""
    import os

    from flax import nnx

    from atomskill_jax.training.optimizer import learning_rate_schedule

    from atomskill_jax.policies.loading import load_model

    policy, _, config = reference
    assert learning_rate_schedule(config.optim, int(config.train.sampler_steps))(0) == 0.0, (
        "the tiny config's warm-up no longer starts at lr 0: the hand EMA below assumes "
        "step 0 leaves the sampler at its init; update this test")
    assert int(config.train.sampler_steps) == 2, "the hand EMA below is for 2 sampler steps"
    # Every variable the policy runs (its program's parameters, by state path).
    ran = {tuple(k.split("/")): np.asarray(v) for k, v in policy.program.params.items()}
    flat = nnx.to_flat_state(nnx.state(load_model(tiny_trained_workdir)[0]))
    is_param = {tuple(str(p) for p in k) for k, v in flat if isinstance(v, nnx.Param)}
    assert set(ran) == {tuple(str(p) for p in k) for k, _ in flat}
    root = os.path.join(tiny_trained_workdir, "{}", "checkpoints", "2", "{}")
    saved = _flat(_restore(root.format("sampler", "params")))
    skill = _flat(_restore(root.format("skill", "params")))
    train = _restore(root.format("sampler", "train_state"))
    raw, ema = _flat(train["params"]), _flat(train["ema"])
    assert raw and set(raw) == set(ema) and set(ran) == set(saved) == set(skill)
    assert all("sampler" in k or "label_head" in k for k in raw)

    decay = min(float(config.train.ema_decay), 2.0 / 11.0)
    moved = 0.0
    for key, value in ran.items():
        np.testing.assert_array_equal(value, saved[key], err_msg=str(key))
        if key in raw:
            init = skill[key]
            # float32 rounding only; decay 0.5 instead would move them by ~3e-5 here
            np.testing.assert_allclose(value, decay * init + (1 - decay) * raw[key],
                                       rtol=1e-6, atol=1e-7, err_msg=str(key))
            moved = max(moved, float(np.abs(raw[key] - init).max()))
        elif key in is_param:  # the skill model, frozen in the sampler stage
            np.testing.assert_array_equal(value, skill[key], err_msg=str(key))
    assert moved > 1e-5  # the raw sampler moved, so the EMA is distinguishable from it

