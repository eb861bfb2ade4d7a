"""The generic chunk runtime: a model that maps normalised observations and the
instruction embedding to an action chunk, executed with re-planning every
`requery_every` steps and optional temporal ensembling (ACT's m), batched over B
environments. Methods without skills (the MLP floor) use it as their policy; it runs
exactly the arithmetic of AtomSkill's skill-less (ACT-like) path.

A program (policies/program.py): one model function, `decode(params, observation,
language_embedding) -> chunk [B, H, A]` (normalised); this module's `ChunkPolicy` is
its numpy runtime (`build`), used in-process, by exported artefacts and by the server.
Normalisation uses the statistics saved in the checkpoint's assets: observations in
(`observation/*`), chunks out (the action space's field).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Mapping, Sequence

import numpy as np

from atomskill_jax.policies import chaining, runtime_settings
from atomskill_jax.policies.base import Policy, TaskInfo, batch_size
from atomskill_jax.policies.program import ArraySpec


@dataclasses.dataclass(frozen=True)
class ChunkOptions:
    requery_every: int = 1  # a new chunk every k steps
    ensemble_m: float | str | None = None  # ACT's m; "off"; None: the config's default
    dataset_index: int = 0  # which dataset's statistics (multi-dataset runs)
    name: str | None = None
    seed: int = 0  # unused (deterministic), accepted so every policy takes it

    def __post_init__(self):
        if int(self.requery_every) < 1:
            raise ValueError(f"requery_every must be >= 1, got {self.requery_every}")
        m = self.ensemble_m
        if m is not None and m != "off" and (isinstance(m, (str, bool))
                                               or not math.isfinite(float(m))):
            raise ValueError(f"ensemble_m must be a finite number, 'off' or None "
                             f"(the config's), got {m!r}")


def resolve_ensemble_m(given, default) -> float | None:
    """The ensembling weight a policy runs with: the option, else the config's default;
    None when off."""
    if given == "off":
        return None
    if given is not None:
        return float(given)
    return None if default is None else float(default)


class ChunkPolicy(Policy):
    """`functions["decode"](observation, language_embedding) -> chunk [B, H, A]`
    (normalised), compiled for the batch size at `reset`."""

    def __init__(self, functions: Mapping[str, Callable], settings: dict, options: ChunkOptions):
        self.functions, self.settings, self.options = dict(functions), settings, options
        self.normalizer = runtime_settings.normalizer(settings)
        self.spec = runtime_settings.policy_spec(settings, options.name)
        self.horizon, self.action_dim = int(settings["horizon"]), int(self.spec.action_dim)
        self.ensemble_m = options.ensemble_m
        self.input_spec = runtime_settings.input_spec(settings)
        self._obs_keys = [k for k in self.input_spec if k != "language_embedding"]
        self._warm: set[int] = set()
        self._batch = 0

    def reset(self, task_info: Sequence[TaskInfo]) -> None:
        b = len(task_info)
        self.warmup(b)
        self._batch = b
        self._chunks = chaining.ChunkBuffer(b, self.horizon, self.action_dim,
                                            requery_every=self.options.requery_every,
                                            ensemble_m=self.ensemble_m)

    def warmup(self, b: int) -> None:
        if b in self._warm:
            return
        zeros = {k: s.zeros(b) for k, s in self.input_spec.items()}
        lang = zeros.pop("language_embedding")
        self.functions["decode"](zeros, lang)
        self._warm.add(b)

    def _model_inputs(self, observation: Mapping[str, np.ndarray]):
        missing = [k for k in self._obs_keys + ["language_embedding"] if k not in observation]
        if missing:
            raise KeyError(f"policy {self.spec.name!r}: observation lacks {missing} "
                           f"(has {sorted(observation)})")
        batch = {"observation": {k: np.asarray(observation[k]) for k in self._obs_keys}}
        obs = self.normalizer.normalize(batch, dataset_index=self.options.dataset_index)
        return obs["observation"], np.asarray(observation["language_embedding"], np.float32)

    def infer(self, observation: Mapping[str, np.ndarray]) -> np.ndarray:
        b = batch_size(observation)
        if b != self._batch:
            raise ValueError(f"policy {self.spec.name!r}: {b} observations after reset() with "
                             f"{self._batch} environments; call reset first")
        obs, lang = self._model_inputs(observation)
        query = self._chunks.needs_query()
        if query.any():
            chunk = self.functions["decode"](obs, lang)
            chunk = self.normalizer.unnormalize(
                {"action_chunk": np.asarray(chunk)},
                dataset_index=self.options.dataset_index)["action_chunk"]
            self._chunks.add(chunk, query)
        action = self._chunks.action()
        self._chunks.advance()
        return action

    def planned_actions(self) -> np.ndarray:
        """[B, h, A]: the newest chunk's actions from the next step on (see chaining)."""
        return self._chunks.planned()


def build(functions: Mapping[str, Callable], settings: dict, overrides: Mapping) -> ChunkPolicy:
    """The program runtime factory (policies/program.py)."""
    from atomskill_jax.policies.program import merged_options

    options = merged_options(settings, overrides, what="chunk policy")
    if "ensemble_m" in overrides and overrides["ensemble_m"] is not None:
        options["ensemble_m"] = resolve_ensemble_m(overrides["ensemble_m"], None)
    opts = ChunkOptions(**options)
    runtime_settings.check_dataset_index(settings, opts.dataset_index, "chunk policy")
    return ChunkPolicy(functions, settings, opts)


def _predict_actions(model, obs, lang):
    return model.predict_actions(obs, lang)[0]


def chunk_program(model, assets: dict, options: dict, *, method: str, default_name: str,
                  observation_keys: Sequence[str], default_ensemble_m=None,
                  predict: Callable = _predict_actions):
    """A chunk policy's program from a model and its checkpoint's assets (config,
    statistics); `options` are ChunkOptions fields. `predict(model, obs, lang)` defaults to
    `model.predict_actions(obs, lang)[0]`."""
    import ml_collections

    from atomskill_jax.data.normalization import normalizer_from_config
    from atomskill_jax.data.statistics import DatasetStatistics
    from atomskill_jax.policies import adapters
    from atomskill_jax.policies.base import PolicySpec
    from atomskill_jax.policies.model_functions import flat_params
    from atomskill_jax.policies.program import ModelFunction, Program

    known = [f.name for f in dataclasses.fields(ChunkOptions)]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"policy {default_name!r}: unknown runtime options {unknown} "
                         f"(known: {known})")
    opts = ChunkOptions(**options)
    config = ml_collections.ConfigDict(assets["config"])
    stats = [DatasetStatistics.from_json(s, source=assets.get("source", "assets"))
             for s in assets["statistics"]]
    m = config.model
    image_size = tuple(config.data.image_size)
    shapes = {"proprio": ((int(m.proprio_dim),), "float32"),
              "state": ((int(m.state_dim),), "float32"),
              "language_embedding": ((int(m.language_dim),), "float32")}
    input_spec = {k: shapes.get(k, ((*image_size, 3), "uint8")) for k in observation_keys}
    input_spec.setdefault("language_embedding", shapes["language_embedding"])
    spec = PolicySpec(name=opts.name or default_name, action_space=config.data.action_space,
                      action_dim=int(m.action_dim), observation_keys=tuple(input_spec),
                      image_size=image_size)
    normalizer = normalizer_from_config(config.data, stats)
    settings = runtime_settings.common_settings(
        spec, input_spec, normalizer, assets["statistics"], horizon=int(m.horizon),
        control_hz=adapters.control_hz_for(assets.get("datasets", ())))
    resolved = dataclasses.asdict(opts)
    resolved["ensemble_m"] = resolve_ensemble_m(opts.ensemble_m, default_ensemble_m)
    resolved["name"] = spec.name
    settings.update(options=resolved, traced_options=[])
    params, bind = flat_params(model)

    def decode(params, obs, lang):
        return predict(bind(params), obs, lang)

    obs_specs = {k: ArraySpec(s, d) for k, (s, d) in input_spec.items()
                 if k != "language_embedding"}
    lang_spec = ArraySpec(*input_spec["language_embedding"])
    return Program(method=method, params=params, settings=settings,
                   runtime="atomskill_jax.policies.chunk_policy:build",
                   functions={"decode": ModelFunction(decode, (obs_specs, lang_spec))})


def chunk_policy_from_assets(model, assets: dict, options: dict, **kwargs) -> ChunkPolicy:
    """The in-process chunk policy (see `chunk_program`)."""
    from atomskill_jax.policies.in_process import policy_from_program

    return policy_from_program(chunk_program(model, assets, options, **kwargs))
