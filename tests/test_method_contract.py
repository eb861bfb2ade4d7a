"""Every registered method on the one contract (methods/spec.py), end to end through the
generic code only: its tiny config trains one step per stage on the real MetaWorld RLDS
fixture (the trainer iterates the spec's stages), saves, reloads through
`policies.loading` (the spec's `make_policy`), and `reset` + `infer` run on an
observation built from the spec's input spec. The ACT-like ablation (AtomSkill without
skills, one stage) runs too."""

from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np
import pytest

from atomskill_jax.methods import registry
from atomskill_jax.training import config_flags
from tests.tiny_model import REPO

# The ACT-like ablation with dead-code re-seeding on (as the cpu config has it): it has
# no codebook, so the trainer must skip that chore (it used to stop the run) and train
# only the skill stage.
VARIANTS = [(name, {}) for name in registry.names()] + [
    ("atomskill", {"model.decoder.skill_conditioning": "False",
                   "train.reinit_dead_codes_every": "1"})]


def _config(name: str, overrides: dict, dataset: str):
    config = config_flags.load_config(os.path.join(REPO, "configs", f"{name}.py") + ":tiny")
    config = config_flags.apply_overrides(config, overrides)
    config.data.datasets = ({"name": str(dataset), "weight": 1.0},)
    spec = registry.get_spec(config)
    for stage in spec.stage_names(config):  # one step per stage
        config.train[f"{stage}_steps"] = 1
    config.train.update(checkpoint_every=1, log_every=1, progress=False,
                        check_statistics_batches=1)
    return config


@pytest.mark.parametrize("name,overrides", VARIANTS,
                         ids=[n + ("-no_skills" if o else "") for n, o in VARIANTS])
def test_method_trains_every_stage_reloads_and_infers(name, overrides, metaworld_rlds_dir,
                                                      tiny_trained_workdir, tmp_path):
    from atomskill_jax.envs import metaworld as mw
    from atomskill_jax.policies.base import Policy, TaskInfo
    from atomskill_jax.policies.loading import load_policy, read_workdir_assets
    from atomskill_jax.training import trainer

    config = _config(name, overrides, metaworld_rlds_dir)
    spec = registry.get_spec(config)
    stages = spec.stage_names(config)
    assert spec.name == name and stages
    if overrides:  # the ACT-like ablation: one stage, no sampler
        assert stages == ["skill"]
    if name == "atomskill" and not overrides:
        # The session's tiny AtomSkill (tests/conftest.py) went through the same trainer,
        # two steps per stage: train nothing twice.
        workdir, steps = tiny_trained_workdir, 2
    else:
        workdir, steps = str(tmp_path), 1
        results = trainer.train(config, workdir)
        assert list(results) == stages and all(r["step"] == 1 for r in results.values())
    for stage in stages:
        assert os.path.isdir(os.path.join(workdir, stage, "checkpoints", str(steps)))

    assets = read_workdir_assets(workdir)[0]
    assert assets["method"] == name and assets["stage"] == stages[-1]
    resolved = ml_collections.ConfigDict(assets["config"])
    if spec.calibrate is not None and assets.get("calibration") is not None:
        assert assets["calibration"]["epsilon"] > 0  # saved at the end of training

    if name == "mlp":  # options a method does not take are refused, None means default
        with pytest.raises(ValueError, match=r"unknown runtime options \['epsilon'\]"):
            load_policy(workdir, epsilon=0.1)
    policy = load_policy(workdir, epsilon=None)
    assert isinstance(policy, Policy) and policy.checkpoint_step == steps
    b = 2
    policy.reset([TaskInfo("pick-place", "pick", mw.layout_id("eval", i), 0, i)
                  for i in range(b)])
    r = np.random.default_rng(0)
    obs = {}
    for key, (shape, dtype) in spec.input_spec(resolved).items():
        obs[key] = (r.integers(0, 256, (b, *shape)).astype(dtype) if dtype == "uint8"
                    else r.normal(size=(b, *shape)).astype(dtype))
    actions = [np.asarray(policy.infer(obs)) for _ in range(3)]
    assert all(a.shape == (b, int(resolved.model.action_dim)) for a in actions)
    assert all(np.isfinite(a).all() for a in actions)
    _exported_policy_acts_as_in_process(workdir, tmp_path, spec, resolved, name, overrides)
    # The fake batch has the structure the pipeline gives the loss.
    fake = spec.fake_batch(resolved, 4)
    assert jax.tree.structure(fake) is not None and "action_chunk" in fake


def test_registry_lists_every_method_and_refuses_unknown_ones():
    assert registry.names() == ["atomskill", "mlp", "usr"]
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        registry.spec_by_name("nope")
    with pytest.raises(ValueError, match="is not a MethodSpec"):
        registry.spec_by_name("tests.tiny_model:TinyModel")
    legacy = ml_collections.ConfigDict({"model_factory": "atomskill_jax.models.atomskill:AtomSkill"})
    assert registry.method_name(legacy) == "atomskill"


def _exported_policy_acts_as_in_process(workdir, tmp_path, spec, config, name, overrides):
    """`atomskill export`'s directory, loaded with jax and numpy only (export/loader.py),
    sends the in-process policy's actions to 1e-5, with its stateful parts on: temporal
    ensembling and, for AtomSkill, skills ending (the step cap) and starting again."""
    from atomskill_jax.export import loader, writer
    from atomskill_jax.policies.base import TaskInfo
    from atomskill_jax.policies.loading import load_policy

    options = {"ensemble_m": 0.1}
    skills = name == "atomskill" and not overrides
    if skills:
        options["max_skill_steps"] = 2
    out = str(tmp_path / "exported")
    manifest = writer.export_workdir(workdir, out, platforms=("cpu",))
    assert manifest["method"] == name
    infos = [TaskInfo("pick-place", "pick", 1_000_000 + i, 0, i) for i in range(2)]
    r = np.random.default_rng(1)
    steps = []
    for _ in range(5):
        obs = {}
        for key, (shape, dtype) in spec.input_spec(config).items():
            obs[key] = (r.integers(0, 256, (2, *shape)).astype(dtype) if dtype == "uint8"
                        else (0.3 * r.normal(size=(2, *shape))).astype(dtype))
        steps.append(obs)
    actions = []
    for policy in (load_policy(workdir, **options), loader.load_policy(out, **options)):
        policy.reset(infos)
        actions.append(np.stack([policy.infer(o) for o in steps]))
        if skills:
            assert policy.skill_counts()["skills"].tolist() == [3, 3]  # steps 0, 2, 4
    np.testing.assert_allclose(actions[1], actions[0], rtol=1e-5, atol=1e-5)
    assert np.abs(actions[0][1:] - actions[0][:-1]).max() > 1e-4  # not constant
