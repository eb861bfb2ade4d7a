"""The sampler stage starts from the skill stage's model but not from its sampler: a
sampler whose shape changed trains on an existing skill checkpoint (`train.init_from`),
and every variable outside the sampler is the skill checkpoint's. The sampler's
checkpoint exports its EMA (what a policy loads), not the raw trained parameters."""

import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from atomskill_jax.training import checkpoints, trainer
from tests.tiny_model import tiny_train_config


def _flat(state):
    return {"/".join(map(str, path)): np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_leaves_with_path(state)}


@pytest.fixture(scope="module")
def runs(metaworld_rlds_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("sampler_init")
    skill_run = base / "skill_run"
    config = tiny_train_config(metaworld_rlds_dir, real_model=False)
    config.stage = "skill"
    trainer.train(config, str(skill_run))

    config = tiny_train_config(metaworld_rlds_dir, real_model=False,
                               init_from=str(skill_run / "skill" / "checkpoints"))
    config.stage = "sampler"
    with config.unlocked():
        config.model.sampler_layers = 2  # the skill checkpoint's sampler has one layer
    result = trainer.train(config, str(base / "sampler_run"))
    return (skill_run / "skill" / "checkpoints", base / "sampler_run" / "sampler" / "checkpoints",
            result)


def test_changed_sampler_trains_on_an_existing_skill_model(runs):
    skill_ckpts, sampler_ckpts, result = runs
    assert result["sampler"]["step"] == 2
    skill_params, _ = checkpoints.restore_params(str(skill_ckpts), None)
    sampler_params, _ = checkpoints.restore_params(str(sampler_ckpts), None)
    before, after = _flat(skill_params), _flat(sampler_params)
    # (the stand-in also counts code usage in the sampler stage; the real model does not)
    outside = [k for k in before if "sampler" not in k and "usage" not in k]
    assert any("codebook" in k for k in outside) and any("skill_encoder" in k for k in outside)
    for key in outside:  # frozen in this stage: exactly the skill model
        np.testing.assert_array_equal(before[key], after[key], err_msg=key)
    assert any("sampler" in k and "layers" in k for k in after)  # the new, two-layer sampler


def test_sampler_checkpoint_exports_the_ema(runs):
    _, sampler_ckpts, _ = runs
    exported = _flat(checkpoints.restore_params(str(sampler_ckpts), None)[0])
    train_state = ocp.StandardCheckpointer().restore(
        os.path.join(str(sampler_ckpts), "2", "train_state"))
    ema, trained = _flat(train_state["ema"]), _flat(train_state["params"])
    assert ema and set(ema) == set(trained)
    for key in ema:  # the EMA lags the trained parameters after 2 steps
        np.testing.assert_array_equal(exported[key], ema[key], err_msg=key)
        assert not np.array_equal(ema[key], trained[key]), key
