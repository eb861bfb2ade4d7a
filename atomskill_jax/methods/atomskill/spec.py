"""AtomSkill (and its ACT-like ablation, `model.decoder.skill_conditioning=False`) on the
method contract (methods/spec.py).

Stages: 'skill' (φ, VQ, ψ and the contrastive alignment; dead codes re-seeded every
`train.reinit_dead_codes_every` steps) then 'sampler' (ρ and the label head on the
frozen skill space, with an EMA, starting from the skill stage's final variables
outside `train.sampler_modules`). The ACT-like ablation has the skill stage only.
Calibration: ε and the step cap of the keypose trigger from the training data
(`calibration.py`), saved with the checkpoints' assets.
"""

from __future__ import annotations

import json
import logging

from flax import nnx

from atomskill_jax.methods.atomskill import calibration
from atomskill_jax.methods.atomskill.model import AtomSkill, fake_batch, trainable_filter
from atomskill_jax.methods.spec import Hook, MethodSpec, Stage, observation_input_spec

log = logging.getLogger(__name__)


def has_skills(config) -> bool:
    return bool(config.model.decoder.get("skill_conditioning", True))


def create(config, rngs: nnx.Rngs) -> AtomSkill:
    return AtomSkill(config.model, rngs=rngs)


def _reinit_dead_codes(model, rng) -> dict:
    return model.reinit_dead_codes(rng)


def stages(config) -> tuple[Stage, ...]:
    train = config.train
    ema_stages = tuple(train.get("ema_stages", ("sampler",)))
    every = int(train.get("reinit_dead_codes_every", 0))
    hooks = (Hook("reinit", every, _reinit_dead_codes),) if every > 0 and has_skills(config) \
        else ()
    skill = Stage("skill", trainable_filter("skill"), ema="skill" in ema_stages, hooks=hooks)
    if not has_skills(config):  # the ACT-like ablation has no skill space to sample
        return (skill,)
    sampler_modules = tuple(train.get("sampler_modules", ("sampler", "label_head")))
    # The sampler modules start fresh, so a sampler whose config changed trains on an
    # existing skill model (`train.init_from`) without retraining it.
    carried = nnx.Not(nnx.Any(*(nnx.PathContains(m) for m in sampler_modules)))
    sampler = Stage("sampler", trainable_filter("sampler"), starts_from="skill",
                    carried=carried, ema="sampler" in ema_stages)
    return (skill, sampler)


def compute_loss(model, rng, batch, *, stage: str, step, train: bool):
    del step  # AtomSkill's losses do not depend on the step
    return model.compute_loss(rng, batch, train=train, stage=stage)


def spec_fake_batch(config, batch_size: int) -> dict:
    return fake_batch(config.model, batch_size)


def input_spec(config) -> dict:
    return observation_input_spec(config)


def trajectory_transform(config):
    return None  # the library's default: chunks, skill segments, keyposes


def calibrate(config, pipeline, model) -> dict | None:
    del model  # ε is a property of the data and its normalisation
    if not has_skills(config):
        return None  # no keypose trigger to calibrate
    return calibration.compute_calibration(
        [s.directory for s in pipeline.sources], json.loads(config.to_json_best_effort()),
        [s.to_json() for s in pipeline.statistics], config.data.split)


def make_policy(model, assets: dict, options: dict):
    from atomskill_jax.methods.atomskill.policy import policy_from_assets

    return policy_from_assets(model, assets, options)


def make_program(model, assets: dict, options: dict):
    from atomskill_jax.methods.atomskill.policy import make_program as program

    return program(model, assets, options)


def resolve_options(config, options: dict) -> dict:
    from atomskill_jax.methods.atomskill.runtime import RuntimeOptions, resolve_ensemble_m

    RuntimeOptions(**options)  # refuses unknown or bad options
    resample = options.get("resample_every")
    if not has_skills(config):
        resample = 0  # the ACT-like ablation has no skills to re-sample
    elif resample is None:
        resample = int(config.model.sampler.get("resample_every", 0))
    return {"resample_every": int(resample),
            "ensemble_m": resolve_ensemble_m(options.get("ensemble_m"), config.model)}


SPEC = MethodSpec(name="atomskill", create=create, stages=stages, fake_batch=spec_fake_batch,
                  input_spec=input_spec, trajectory_transform=trajectory_transform,
                  compute_loss=compute_loss, make_policy=make_policy, make_program=make_program,
                  calibrate=calibrate,
                  resolve_options=resolve_options)

__all__ = ["SPEC", "has_skills"]
