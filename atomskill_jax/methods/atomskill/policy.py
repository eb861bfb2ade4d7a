"""AtomSkill's policy as a program (policies/program.py): the model functions and the
settings of the numpy runtime in `runtime.py` (the inference procedure is described
there), built from a trained model and its checkpoint's assets.

Functions (every input and output batched along axis 0):
    decode(params, obs, lang, tokens)  -> (chunk [B, H, A] normalised, keypose [B, A])
    decode(params, obs, lang)          -> (chunk, keypose)   the ACT-like baseline
    sample_decode(params, obs, lang, tokens, starting [B], skill_step [B],
                  seeds [B] uint32, draws [B] int32) -> (tokens, chunk, keypose)
`sample_decode` draws new tokens with key(seeds_b) folded with draws_b and keeps them
where `starting`; the DDIM steps and guidance are compiled in (`TRACED_OPTIONS`).
"""

from __future__ import annotations

import dataclasses
import logging

import jax
import jax.numpy as jnp
import ml_collections

from atomskill_jax.methods.atomskill.runtime import (TRACED_OPTIONS, AtomSkillPolicy,
                                                     RuntimeOptions, resolve_ensemble_m)
from atomskill_jax.policies.program import ArraySpec, ModelFunction, Program

__all__ = ["AtomSkillPolicy", "RuntimeOptions", "make_program", "policy_from_assets",
           "resolve_ensemble_m"]


def _trigger_dims(dims, action_dim: int):
    """The trigger's dimensions as a sorted list (JSON-safe), checked; None: all."""
    if dims is None:
        return None
    out = sorted({int(d) for d in (dims if not isinstance(dims, int) else [dims])})
    if not out or out[0] < 0 or out[-1] >= action_dim:
        raise ValueError(f"AtomSkill policy: trigger_dims {dims} must name action dimensions "
                         f"in [0, {action_dim})")
    return out


def _calibration(assets: dict, options: RuntimeOptions, skills: bool) -> dict:
    """ε and the step cap: the option, else the checkpoint's calibration (assets), else
    `calibration.FALLBACK` with a warning."""
    from atomskill_jax.methods.atomskill import calibration

    source = assets.get("source", "the checkpoint's assets")
    calib = assets.get("calibration")
    if calib is None and assets.get("workdir"):
        calib = calibration.read_legacy_calibration(assets["workdir"])
    if calib is None and skills and (options.epsilon is None or options.max_skill_steps is None):
        logging.getLogger(__name__).warning(
            "%s holds no calibration (trained before it was saved with the checkpoints); "
            "using epsilon=%s, max_skill_steps=%s", source, calibration.FALLBACK["epsilon"],
            calibration.FALLBACK["max_skill_steps"])
    return dict(calib or calibration.FALLBACK)


def make_program(model, assets: dict, options: dict) -> Program:
    """The contract's `make_program`: `options` are `RuntimeOptions` fields (epsilon,
    requery_every, ensemble_m, ...)."""
    from atomskill_jax.data.normalization import normalizer_from_config
    from atomskill_jax.data.statistics import DatasetStatistics
    from atomskill_jax.methods.atomskill.spec import input_spec as method_input_spec
    from atomskill_jax.policies import adapters, runtime_settings
    from atomskill_jax.policies.base import PolicySpec
    from atomskill_jax.policies.model_functions import flat_params

    known = [f.name for f in dataclasses.fields(RuntimeOptions)]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"AtomSkill policy: unknown runtime options {unknown} (known: {known})")
    opts = RuntimeOptions(**options)
    config = ml_collections.ConfigDict(assets["config"])
    m = config.model
    skills = bool(m.decoder.skill_conditioning)
    source = assets.get("source", "the checkpoint's assets")
    stats = [DatasetStatistics.from_json(s, source=source) for s in assets["statistics"]]
    normalizer = normalizer_from_config(config.data, stats)
    calib = _calibration(assets, opts, skills)
    adapter = adapters.adapter_for(opts.embodiment, config.data.action_space,
                                   assets.get("datasets", ()))
    # The runtime's observation order: state, proprio, cameras, then the instruction.
    spec_in = method_input_spec(config)
    order = ["state", "proprio"] + [f"image_{c}" for c in m.cameras] + ["language_embedding"]
    input_spec = {k: spec_in[k] for k in order if k in spec_in}
    spec = PolicySpec(name=opts.name or ("atomskill" if skills else "act_like"),
                      action_space=config.data.action_space, action_dim=int(m.action_dim),
                      observation_keys=tuple(input_spec), image_size=tuple(config.data.image_size))
    settings = runtime_settings.common_settings(
        spec, input_spec, normalizer, assets["statistics"], horizon=int(m.horizon),
        control_hz=adapters.control_hz_for(assets.get("datasets", ())))
    resolved = dataclasses.asdict(opts)
    resolved.update(
        name=spec.name,
        epsilon=float(opts.epsilon if opts.epsilon is not None else calib["epsilon"]),
        max_skill_steps=int(opts.max_skill_steps if opts.max_skill_steps is not None
                            else calib["max_skill_steps"]),
        stall_steps=int(opts.stall_steps or 0),
        trigger_dims=_trigger_dims(opts.trigger_dims if opts.trigger_dims is not None
                                   else calib.get("trigger_dims"), int(m.action_dim)),
        ensemble_m=resolve_ensemble_m(opts.ensemble_m, m),
        resample_every=0 if not skills else int(
            opts.resample_every if opts.resample_every is not None
            else m.sampler.get("resample_every", 0)))
    # A quarter of ε: progress smaller than that is the hover's jitter, not convergence.
    resolved["stall_tolerance"] = float(
        opts.stall_tolerance if opts.stall_tolerance is not None else 0.25 * resolved["epsilon"])
    from atomskill_jax.methods.atomskill.model import keypose_frame

    settings.update(skills=skills, has_keypose=bool(m.decoder.predict_keypose),
                    keypose_frame=keypose_frame(m),
                    num_tokens=int(m.skill_encoder.num_tokens), d_model=int(m.d_model),
                    adapter=adapter.name, calibration=calib, options=resolved,
                    traced_options=list(TRACED_OPTIONS))
    params, bind = flat_params(model)
    return Program(method="atomskill", params=params, settings=settings,
                   runtime="atomskill_jax.methods.atomskill.runtime:build",
                   functions=_functions(bind, input_spec, settings, opts))


def _functions(bind, input_spec: dict, settings: dict, opts: RuntimeOptions) -> dict:
    obs = {k: ArraySpec(s, d) for k, (s, d) in input_spec.items() if k != "language_embedding"}
    lang = ArraySpec(*input_spec["language_embedding"])
    if not settings["skills"]:
        def decode_only(params, obs, lang):
            return bind(params).predict_actions(obs, lang, None)

        return {"decode": ModelFunction(decode_only, (obs, lang))}
    tokens = ArraySpec((settings["num_tokens"], settings["d_model"]), "float32")
    num_steps, guidance = opts.num_steps, opts.guidance

    def decode(params, obs, lang, tokens):
        return bind(params).predict_actions(obs, lang, tokens)

    def sample_decode(params, obs, lang, tokens, starting, skill_step, seeds, draws):
        model = bind(params)
        keys = jax.vmap(lambda s, d: jax.random.fold_in(jax.random.key(s), d))(seeds, draws)
        new = model.sample_skill(keys, obs, lang, num_steps=num_steps, guidance=guidance,
                                 skill_step=skill_step)
        tokens = jnp.where(starting[:, None, None], new, tokens)
        chunk, keypose = model.predict_actions(obs, lang, tokens)
        return tokens, chunk, keypose

    flags = ArraySpec((), "bool")
    ints, seeds = ArraySpec((), "int32"), ArraySpec((), "uint32")
    return {"decode": ModelFunction(decode, (obs, lang, tokens)),
            "sample_decode": ModelFunction(sample_decode,
                                           (obs, lang, tokens, flags, ints, seeds, ints))}


def policy_from_assets(model, assets: dict, options: dict) -> AtomSkillPolicy:
    """The contract's `make_policy`: the program run in this process."""
    from atomskill_jax.policies.in_process import policy_from_program

    return policy_from_program(make_program(model, assets, options))
