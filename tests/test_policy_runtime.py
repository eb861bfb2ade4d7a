"""AtomSkill policy at runtime: a tiny trained workdir loaded without TensorFlow, skill
chaining through the real model, closed-loop rollouts in MetaWorld, the ACT-like path."""

import functools
import pickle
import subprocess
import sys

import numpy as np
import pytest

from atomskill_jax.envs import metaworld as mw
from atomskill_jax.policies.base import TaskInfo
from tests.tiny_model import REPO, child_env, copy_workdir

@pytest.fixture(scope="module")
def workdir(tiny_trained_workdir, tmp_path_factory):
    """A copy of the session's tiny trained workdir (2+2 steps, trained in a child with
    1 device): the trainer saved its calibration with the sampler stage's checkpoints."""
    out = copy_workdir(tiny_trained_workdir, tmp_path_factory, "policy_workdir")
    from atomskill_jax.policies.loading import read_workdir_assets

    calib = read_workdir_assets(str(out))[0]["calibration"]
    assert calib["eps_end"] == 0.0 and 0 < calib["epsilon"] < calib["eps_early"]
    assert calib["end_hit_rate"] == 1.0 and calib["max_skill_steps"] >= 10
    return str(out)


def _obs(b, seed=0):
    r = np.random.default_rng(seed)
    return {"state": r.normal(size=(b, 39)).astype(np.float32),
            "proprio": r.normal(size=(b, 4)).astype(np.float32),
            "language_embedding": r.normal(size=(b, 384)).astype(np.float32)}


def _infos(b, seed=0):
    return [TaskInfo("pick-place", "pick", mw.layout_id("eval", i), seed, i) for i in range(b)]


def test_loaded_policy_chains_skills(workdir):
    from atomskill_jax.policies.loading import load_policy, read_workdir_assets

    policy = load_policy(workdir)
    assert policy.checkpoint_step == 2 and policy.spec.name == "atomskill"
    assert policy.epsilon == read_workdir_assets(workdir)[0]["calibration"]["epsilon"]
    policy.reset(_infos(3))
    a = [policy.infer(_obs(3)) for _ in range(2)]
    assert a[0].shape == (3, 4) and np.isfinite(a[0]).all()
    # Same episodes, same skills and actions (reset reseeds the sampler).
    policy.reset(_infos(3))
    np.testing.assert_allclose(policy.infer(_obs(3)), a[0], rtol=1e-6)

    # The trigger is rebuilt from these at reset (no reload, no recompile).
    # epsilon = inf: every executed action "reaches" the keypose -> a skill per step.
    policy.epsilon = float("inf")
    policy.reset(_infos(2))
    for _ in range(4):
        policy.infer(_obs(2))
    assert policy.skill_counts()["skills"].tolist() == [4, 4]
    # epsilon = 0: only the cap ends skills (every 3 steps here).
    policy.epsilon, policy.max_skill_steps = 0.0, 3
    policy.reset(_infos(2))
    for _ in range(7):
        policy.infer(_obs(2))
    counts = policy.skill_counts()
    assert counts["skills"].tolist() == [3, 3] and counts["capped"].tolist() == [2, 2]


def test_resampling_within_a_skill(workdir):
    """resample_every=r: the current skill is sampled again every r steps with the steps
    since it began (r, 2r, ...), without counting as a new skill; r=0 never does."""
    from atomskill_jax.policies.loading import load_policy

    def sampled_at(resample_every, steps=7):
        policy = load_policy(workdir, resample_every=resample_every)
        policy.epsilon, policy.max_skill_steps = 0.0, 100  # no trigger, no cap
        policy.reset(_infos(2))
        calls, original = [], policy.functions["sample_decode"]

        def spy(*args):  # (obs, lang, tokens, starting, skill_step, seeds, draws)
            calls.append((len(calls), np.asarray(args[3]).tolist(), np.asarray(args[4]).tolist()))
            return original(*args)

        policy.functions["sample_decode"] = spy
        step_of_call = []
        for t in range(steps):
            before = len(calls)
            policy.infer(_obs(2, seed=t))
            if len(calls) > before:
                step_of_call.append((t, calls[-1][2]))
        assert policy.skill_counts()["skills"].tolist() == [1, 1]
        return step_of_call

    assert sampled_at(3) == [(0, [0, 0]), (3, [3, 3]), (6, [6, 6])]
    assert sampled_at(0) == [(0, [0, 0])]
    assert sampled_at(None) == [(0, [0, 0])]  # the tiny config's sampler.resample_every: 0
    from atomskill_jax.methods.atomskill.policy import RuntimeOptions

    with pytest.raises(ValueError, match="resample_every"):
        RuntimeOptions(resample_every=-1)



def test_forced_skill_tokens_replace_the_sampler_draw(workdir):
    """force_skill (teacher forcing, bench/held_skills.py): a forced environment starts
    its next skill with the given tokens and makes no sampler draw; the others sample."""
    from atomskill_jax.policies.loading import load_policy

    policy = load_policy(workdir)
    policy.epsilon, policy.max_skill_steps = float("inf"), 100  # a new skill every step
    policy.reset(_infos(2))
    policy.infer(_obs(2))  # first skills: sampled for both
    first = policy.skill_state()["tokens"]
    forced = np.full_like(first, 0.5)
    policy.force_skill(forced, np.array([True, False]))
    calls, original = [], policy.functions["sample_decode"]

    def spy(*args):  # (obs, lang, tokens, starting, ...)
        calls.append(np.asarray(args[3]).tolist())
        return original(*args)

    policy.functions["sample_decode"] = spy
    policy.infer(_obs(2, seed=1))
    now = policy.skill_state()["tokens"]
    np.testing.assert_array_equal(now[0], forced[0])
    assert calls == [[False, True]]  # env 1 sampled, env 0 did not
    assert policy.skill_counts()["skills"].tolist() == [2, 2]
    policy.infer(_obs(2, seed=2))  # forcing lasts one skill: both sample again
    assert calls[-1] == [True, True]

def test_ensembling_option_and_config_default(workdir):
    """ensemble_m: the option wins, 'off' turns a config default off, None reads the
    model config's decoder.ensemble_m (absent in older workdirs: off)."""
    import argparse

    import ml_collections

    from atomskill_jax.commands import eval as eval_command
    from atomskill_jax.methods.atomskill.policy import RuntimeOptions, resolve_ensemble_m
    from atomskill_jax.policies.loading import load_policy

    model = ml_collections.ConfigDict({"decoder": {"ensemble_m": 0.01}})
    assert resolve_ensemble_m(None, model) == 0.01
    assert resolve_ensemble_m("off", model) is None
    assert resolve_ensemble_m(0.3, model) == 0.3
    assert resolve_ensemble_m(None, ml_collections.ConfigDict({"decoder": {}})) is None
    for bad in ("often", float("nan"), True):
        with pytest.raises(ValueError, match="ensemble_m"):
            RuntimeOptions(ensemble_m=bad)
    sub = argparse.ArgumentParser().add_subparsers()
    eval_command.add_parser(sub)
    parser = sub.choices["eval"]
    assert parser.parse_args(["--ensemble-m=off"]).ensemble_m == "off"
    assert parser.parse_args(["--ensemble-m=0.05"]).ensemble_m == 0.05
    with pytest.raises(SystemExit):
        parser.parse_args(["--ensemble-m=often"])
    # The loaded policy blends chunks only when asked (the tiny config has no default).
    assert load_policy(workdir).ensemble_m is None
    policy = load_policy(workdir, ensemble_m=0.05)
    policy.reset(_infos(2))
    assert policy.ensemble_m == 0.05 and policy._chunks.chunks.shape[1] == policy.horizon


def test_raw_parameters_differ_from_ema(workdir):
    from flax import nnx

    from atomskill_jax.policies.loading import load_model

    ema = nnx.state(load_model(workdir)[0], nnx.Param)
    raw = nnx.state(load_model(workdir, use_ema=False)[0], nnx.Param)
    diff = {k: float(np.abs(np.asarray(a.get_value()) - np.asarray(b.get_value())).max())
            for (k, a), (_, b) in zip(nnx.to_flat_state(ema), nnx.to_flat_state(raw))}
    sampler = [d for k, d in diff.items() if "sampler" in k]
    others = [d for k, d in diff.items() if "sampler" not in k]
    assert max(sampler) > 0 and max(others) == 0  # the sampler stage kept an EMA


def test_loading_never_imports_tensorflow(workdir):
    code = f"""
import sys, numpy as np
from atomskill_jax.policies.loading import load_policy
from atomskill_jax.policies.base import TaskInfo
p = load_policy({workdir!r})
p.reset([TaskInfo('pick-place', 'pick', 1000000)])
p.infer({{'state': np.zeros((1, 39), np.float32), 'proprio': np.zeros((1, 4), np.float32),
          'language_embedding': np.zeros((1, 384), np.float32)}})
assert 'tensorflow' not in sys.modules, 'tensorflow imported'
import jax; assert jax.device_count() == 1
print('OK')
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=child_env(),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]


def test_closed_loop_smoke_in_metaworld_through_the_cli(workdir, tmp_path, capsys):
    """`atomskill eval` -> evaluate -> write_report, 1 task x 2 episodes x 30 steps (the
    loop and the metrics, not success); then `--compare` of the workdir and the report."""
    from atomskill_jax import cli
    from atomskill_jax.eval import load_report
    from atomskill_jax.policies.loading import policy_factory

    factory = policy_factory(workdir, requery_every=2)
    assert isinstance(pickle.loads(pickle.dumps(factory)), functools.partial)
    out = tmp_path / "report"
    argv = ["eval", f"--workdir={workdir}", "--tasks=pick-place", "--episodes=2",
            "--max-steps=30", "--workers=0", "--requery-every=2", f"--out={out}"]
    assert cli.main(argv) == 0
    report = load_report(str(out))
    assert len(report.results) == 2
    for r in report.results:
        assert r.task == "pick-place" and 1 <= r.steps <= 30
        assert 0 <= r.stages_completed <= r.num_stages
    meta = report.meta
    assert meta["checkpoint_step"] == 2 and meta["policy"]["name"] == report.name
    assert meta["runtime_options"]["requery_every"] == 2 and meta["calibration"]["epsilon"] > 0
    assert "--tasks=pick-place" in meta["command"]
    capsys.readouterr()
    assert cli.main(["eval", "--compare", str(out), str(out)]) == 0
    table = capsys.readouterr().out
    assert "pick-place" in table and table.count("checkpoint step 2") == 2
    assert cli.main(["eval", "--compare", str(tmp_path)]) == 2  # nothing there: an error


def test_act_like_baseline_executes_chunks(metaworld_rlds_dir):
    """skill_conditioning=False: no sampler; the decoder runs every k steps and its
    chunk is executed in order (randomly initialised: the path, not the numbers)."""
    import ml_collections
    from flax import nnx

    from atomskill_jax.data.normalization import FieldStatistics
    from atomskill_jax.methods.atomskill.model import AtomSkill
    from atomskill_jax.methods.atomskill.config import tiny_model_config
    from atomskill_jax.methods.atomskill.policy import policy_from_assets

    m = tiny_model_config()
    m.decoder.skill_conditioning = False
    m.cameras, m.state_dim, m.proprio_dim, m.language_dim = (), 39, 4, 384
    config = ml_collections.ConfigDict({"model": m, "data": {
        "action_space": "action", "image_size": (32, 32),
        "normalization": {"mode": "mean_std"}}})
    model = AtomSkill(m, rngs=nnx.Rngs(0))

    def stats(d):
        z = np.zeros(d, np.float32)
        return FieldStatistics(z, z + 1, z - 1, z + 1, z - 1, z + 1).to_json()

    fields = {"action": stats(4), "action_abs": stats(4), "observation/proprio": stats(4),
              "observation/state": stats(39)}
    assets = {"config": config.to_dict(), "datasets": ["metaworld_scripted"],
              "statistics": [{"fields": fields, "num_episodes": 1, "num_steps": 1,
                              "fingerprint": "test"}]}
    policy = policy_from_assets(model, assets, {"requery_every": 3})
    assert policy.spec.name == "act_like" and set(policy.functions) == {"decode"}
    policy.reset(_infos(2))
    calls = []
    decode = policy.functions["decode"]
    policy.functions["decode"] = lambda *a: calls.append(1) or decode(*a)
    chunk = np.asarray(decode(*policy._model_inputs(_obs(2)))[0])
    actions = [policy.infer(_obs(2)) for _ in range(7)]
    assert len(calls) == 3  # steps 0, 3, 6
    np.testing.assert_allclose(np.stack(actions[:3], 1), chunk[:, :3], rtol=1e-5, atol=1e-6)



def test_trigger_compares_only_the_chosen_dimensions(workdir):
    """trigger_dims=(0,): the keypose distance is that of action dimension 0 alone
    (recomputed here from the executed action, the adapter and the saved statistics);
    the default compares the whole action."""
    from atomskill_jax.policies.loading import load_policy

    distances = {}
    for dims in (None, (0,)):
        policy = load_policy(workdir, trigger_dims=dims)
        policy.reset(_infos(3))
        obs = _obs(3)
        action = policy.infer(obs)
        adapter = type(policy.adapter)()  # the policy's own has stepped its target already
        adapter.reset([info.task for info in _infos(3)])
        target = policy.normalizer.normalize({"keypose": adapter.to_absolute(action, obs)})
        keypose = policy.normalizer.normalize({"keypose": policy.skill_state()["keypose"]})
        diff = target["keypose"] - keypose["keypose"]
        pick = slice(None) if dims is None else list(dims)
        np.testing.assert_allclose(policy.last_distance,
                                   np.linalg.norm(diff[:, pick], axis=-1), rtol=1e-4)
        distances[dims] = policy.last_distance
    assert (distances[(0,)] < distances[None]).all()
    with pytest.raises(ValueError, match="trigger_dims"):
        load_policy(workdir, trigger_dims=(99,))


def test_stall_option_reaches_the_trigger_and_the_eval_command(workdir):
    """stall_steps: off unless asked (the paper; old calibrations hold none); the
    tolerance defaults to a quarter of ε; a held skill that hovers away from its
    keypose is ended after stall_steps steps, before the cap."""
    import argparse

    from atomskill_jax.commands import eval as eval_command
    from atomskill_jax.policies.loading import load_policy

    policy = load_policy(workdir, resample_every=0)
    policy.reset(_infos(1))
    assert policy._trigger.stall_steps == 0
    # The hand rule: with the same observation every step its target stays put (the
    # commanded target would drift on with the untrained policy's actions).
    policy = load_policy(workdir, resample_every=0, stall_steps=3, epsilon=1e-9,
                         embodiment="metaworld_hand")
    policy.reset(_infos(1))
    trigger = policy._trigger
    assert trigger.stall_steps == 3
    assert trigger.stall_tolerance == pytest.approx(0.25e-9)
    assert load_policy(workdir, stall_steps=3, stall_tolerance=0.5).options.stall_tolerance == 0.5
    # The same observation every step: the distance to the keypose stops improving.
    starts = []
    for _ in range(12):
        policy.infer(_obs(1))
        starts.append(int(policy.skill_counts()["skills"][0]))
    assert policy.skill_counts()["stalled"][0] >= 1
    assert policy.skill_counts()["capped"][0] == 0 and starts[-1] >= 2
    sub = argparse.ArgumentParser().add_subparsers()
    eval_command.add_parser(sub)
    # Refused when the options are made, before any rollout (eval's resolve_options).
    from atomskill_jax.methods.atomskill.runtime import RuntimeOptions

    for bad in ({"stall_steps": -1}, {"stall_tolerance": float("nan")}):
        with pytest.raises(ValueError, match="stall"):
            RuntimeOptions(**bad)
    args = sub.choices["eval"].parse_args(["--stall-steps=30", "--stall-tolerance=0.01"])
    assert (args.stall_steps, args.stall_tolerance) == (30, 0.01)


def test_relative_keypose_is_anchored_on_the_query_steps_target(workdir):
    """keypose_frame='relative': the model's keypose output is an offset from the query
    step's target. At a query step the trigger distance is the offset's own norm; until
    the next query the anchored keypose stays put while the target moves."""
    from atomskill_jax.policies.loading import load_policy

    policy = load_policy(workdir, requery_every=3, ensemble_m="off")
    policy.relative_keypose = True  # what settings keypose_frame='relative' sets
    offset = np.linspace(0.4, 0.9, policy.action_dim).astype(np.float32)
    sample_decode, decode = policy.functions["sample_decode"], policy.functions["decode"]

    def shifted(out):
        return (*out[:-1], np.broadcast_to(offset, np.shape(out[-1])).copy())

    policy.functions["sample_decode"] = lambda *a: shifted(sample_decode(*a))
    policy.functions["decode"] = lambda *a: shifted(decode(*a))
    infos = _infos(2)
    policy.reset(infos)
    replay = type(policy.adapter)()
    replay.reset([info.task for info in infos])
    anchored = None
    for t in range(5):
        obs = _obs(2, seed=t)
        action = policy.infer(obs)
        target = policy.normalizer.normalize({"keypose": replay.to_absolute(action, obs)})["keypose"]
        if t % 3 == 0:  # a query step
            np.testing.assert_allclose(policy.last_distance,
                                       np.full(2, np.linalg.norm(offset)), rtol=1e-5)
            anchored = target + offset
        else:
            np.testing.assert_allclose(policy.last_distance,
                                       np.linalg.norm(target - anchored, axis=-1), rtol=1e-5)
        assert (policy.skill_counts()["skills"] == 1).all()  # never close enough to fire
