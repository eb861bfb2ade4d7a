"""USR's policy as a program (policies/program.py): one model function,
`predict(params, history {key: [B, L, ...]}, language [B, E]) -> (mean chunk [B, H, A]
normalised, the prior's code [B] or -1)`, and the settings of the numpy runtime in
`runtime.py` (the inference procedure is described there)."""

from __future__ import annotations

import dataclasses

import ml_collections

from atomskill_jax.methods.usr.data import input_spec as usr_input_spec
from atomskill_jax.methods.usr.data import normalizer_keys
from atomskill_jax.methods.usr.runtime import (USROptions, USRPolicy, parse_options,
                                               resolve_ensemble_m)
from atomskill_jax.policies.program import ArraySpec, ModelFunction, Program

__all__ = ["USROptions", "USRPolicy", "make_program", "parse_options", "policy_from_assets",
           "resolve_ensemble_m"]


def make_program(model, assets: dict, options: dict) -> Program:
    from atomskill_jax.data.normalization import normalizer_from_config
    from atomskill_jax.data.statistics import DatasetStatistics
    from atomskill_jax.policies import adapters, runtime_settings
    from atomskill_jax.policies.base import PolicySpec
    from atomskill_jax.policies.model_functions import flat_params

    opts = parse_options(options)
    config = ml_collections.ConfigDict(assets["config"])
    stats = [DatasetStatistics.from_json(s, source=assets.get("source", "assets"))
             for s in assets["statistics"]]
    normalizer = normalizer_from_config(config.data, stats)
    normalizer = dataclasses.replace(normalizer, keys=normalizer_keys(config.data.action_space))
    runtime_settings.check_dataset_index({"statistics": assets["statistics"]},
                                         opts.dataset_index, "USR policy")
    m = config.model
    name = opts.name or ("usr" if str(m.policy_condition) == "skill" else "usr_no_skill")
    input_spec = usr_input_spec(config)
    spec = PolicySpec(name=name, action_space=str(config.data.action_space),
                      action_dim=int(m.action_dim), observation_keys=tuple(input_spec),
                      image_size=tuple(config.data.image_size))
    settings = runtime_settings.common_settings(
        spec, input_spec, normalizer, assets["statistics"], horizon=int(m.horizon),
        control_hz=adapters.control_hz_for(assets.get("datasets", ())))
    resolved = dataclasses.asdict(opts)
    resolved.update(name=name, ensemble_m=resolve_ensemble_m(opts.ensemble_m,
                                                             m.get("ensemble_m")))
    settings.update(history=int(m.history), options=resolved, traced_options=[])
    params, bind = flat_params(model)

    def predict(params, history, language):
        return bind(params).predict(history, language)

    L = int(m.history)
    history = {k: ArraySpec((L, *s), d) for k, (s, d) in input_spec.items()
               if k != "language_embedding"}
    language = ArraySpec(*input_spec["language_embedding"])
    return Program(method="usr", params=params, settings=settings,
                   runtime="atomskill_jax.methods.usr.runtime:build",
                   functions={"predict": ModelFunction(predict, (history, language))})


def policy_from_assets(model, assets: dict, options: dict) -> USRPolicy:
    from atomskill_jax.policies.in_process import policy_from_program

    return policy_from_program(make_program(model, assets, options))
