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
    """The library's default (chunks, skill segments, keyposes); a relative keypose
    also needs the step's own absolute target, `keypose_base` = action_abs[t]."""
    from atomskill_jax.methods.atomskill.model import keypose_frame

    if not config.model.decoder.predict_keypose or keypose_frame(config.model) != "relative":
        return None
    from atomskill_jax.data import pipeline
    from atomskill_jax.data.tf_setup import tf

    default = pipeline.default_trajectory_transform(config.data)

    def steps(episode, *, dataset_index):
        out = default(episode, dataset_index=dataset_index)
        out["keypose_base"] = tf.cast(episode["action_abs"], tf.float32)
        return out

    return steps


def calibrate(config, pipeline, model) -> dict | None:
    """ε and the step cap from the data (calibration.py); with a relative keypose head
    (and `decoder.epsilon_from='predictions'`, its default there) ε comes from the
    trained model's own predicted offsets on training examples instead."""
    if not has_skills(config):
        return None  # no keypose trigger to calibrate
    result = calibration.compute_calibration(
        [s.directory for s in pipeline.sources], json.loads(config.to_json_best_effort()),
        [s.to_json() for s in pipeline.statistics], config.data.split)
    if epsilon_source(config) == "predictions":
        result = _calibrate_on_predictions(config, pipeline, model, result)
    return result


def epsilon_source(config) -> str:
    """`decoder.epsilon_from`: "data" (the rule on true keyposes) or "predictions" (the
    rule on a relative head's predicted offsets); default: predictions for a relative
    keypose head, data otherwise."""
    from atomskill_jax.methods.atomskill.model import keypose_frame

    d = config.model.decoder
    frame = keypose_frame(config.model)
    source = d.get("epsilon_from", None) or ("predictions" if frame == "relative" else "data")
    if source not in ("data", "predictions"):
        raise ValueError(f"model.decoder.epsilon_from must be 'data' or 'predictions', got "
                         f"{source!r}")
    if source == "predictions" and (frame != "relative" or not d.predict_keypose):
        raise ValueError("model.decoder.epsilon_from='predictions' needs a relative keypose "
                         "head (decoder.keypose_frame='relative')")
    return source


def _calibrate_on_predictions(config, pipeline, model, data_result: dict) -> dict:
    import jax

    if jax.process_count() > 1:
        # Each process would see its own shards and save its own ε.
        log.warning("epsilon_from='predictions' runs in one process only; %d processes: "
                    "keeping the data rule's ε", jax.process_count())
        return data_result

    @nnx.jit
    def predict_offset(model, batch):
        tokens, _ = model.encode_skill(batch)
        return model.predict_actions(batch["observation"], batch["language_embedding"],
                                     tokens)[1]

    count = int(config.model.decoder.get("calibration_batches", 8))
    iterator = pipeline.iterator()
    batches = (iterator.next_local() for _ in range(count))
    dims = config.model.decoder.get("trigger_dims")
    predicted = calibration.epsilon_from_predictions(
        batches, lambda b: jax.device_get(predict_offset(model, b)),
        dims=None if dims is None else tuple(int(x) for x in dims))
    out = dict(data_result)
    out["data_rule"] = {k: data_result[k] for k in ("epsilon", "eps_end", "eps_early",
                                                    "early_fire_rate", "end_hit_rate", "rule")}
    out.update({k: predicted[k] for k in ("epsilon", "eps_end", "eps_early",
                                          "early_fire_rate", "end_hit_rate", "rule")})
    out["epsilon_from"] = "predictions"
    out["prediction_rule"] = {k: predicted[k] for k in ("num_examples", "num_ends")}
    return json.loads(json.dumps(out))


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
    out = {"resample_every": int(resample),
           "ensemble_m": resolve_ensemble_m(options.get("ensemble_m"), config.model)}
    if has_skills(config):
        # The adapter decides what the keypose trigger measures, so it is part of what
        # decides the actions (episodes evaluated with another one are not reused).
        from atomskill_jax.data.dataset_entries import parse_entries
        from atomskill_jax.policies import adapters

        # Entries are strings ("name:weight") or mappings; parse_entries reads both.
        names = [e.name for e in parse_entries(config.data)] + [
            str(config.data.get("data_dir", ""))]
        embodiment = options.get("embodiment") or "auto"
        if embodiment != "auto":
            out["adapter"] = adapters.adapter_for(embodiment, config.data.action_space).name
        else:
            try:
                out["adapter"] = adapters.adapter_for("auto", config.data.action_space,
                                                      names).name
            except ValueError:
                pass  # the policy, which sees the datasets' directories, says what is wrong
    return out


SPEC = MethodSpec(name="atomskill", create=create, stages=stages, fake_batch=spec_fake_batch,
                  input_spec=input_spec, trajectory_transform=trajectory_transform,
                  compute_loss=compute_loss, make_policy=make_policy, make_program=make_program,
                  calibrate=calibrate,
                  resolve_options=resolve_options)

__all__ = ["SPEC", "has_skills"]
