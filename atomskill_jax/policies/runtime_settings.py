"""Settings every program runtime shares (policies/program.py): the policy's spec, its
input spec, and the normaliser with the checkpoint's statistics, to and from JSON.
Numpy only: exported policies rebuild their runtimes from these."""

from __future__ import annotations

from typing import Any, Mapping

from atomskill_jax.data.normalization import (Normalizer, normalizer_from_json,
                                              normalizer_to_json)
from atomskill_jax.data.statistics import DatasetStatistics
from atomskill_jax.policies.base import PolicySpec
from atomskill_jax.policies.program import ArraySpec


def common_settings(spec: PolicySpec, input_spec: Mapping[str, tuple], normalizer: Normalizer,
                    statistics: list, *, horizon: int, control_hz: float | None = None) -> dict:
    """`input_spec`: {observation key: (shape, dtype)} of what `infer` reads;
    `statistics`: the checkpoint's assets["statistics"] (JSON)."""
    return {"spec": {**spec.to_dict(), "observation_keys": list(spec.observation_keys),
                     "image_size": list(spec.image_size)},
            "input_spec": {k: ArraySpec(tuple(s), str(d)).to_json()
                           for k, (s, d) in input_spec.items()},
            "normalizer": normalizer_to_json(normalizer), "statistics": list(statistics),
            "horizon": int(horizon), "control_hz": control_hz}


def policy_spec(settings: Mapping[str, Any], name: str | None = None) -> PolicySpec:
    s = dict(settings["spec"])
    s["observation_keys"] = tuple(s["observation_keys"])
    s["image_size"] = tuple(s["image_size"])
    if name:
        s["name"] = name
    return PolicySpec(**s)


def input_spec(settings: Mapping[str, Any]) -> dict[str, ArraySpec]:
    return {k: ArraySpec.from_json(v) for k, v in settings["input_spec"].items()}


def normalizer(settings: Mapping[str, Any], source: str = "the policy's settings") -> Normalizer:
    stats = [DatasetStatistics.from_json(s, source=source) for s in settings["statistics"]]
    return normalizer_from_json(settings["normalizer"], stats)


def check_dataset_index(settings: Mapping[str, Any], index: int, what: str) -> None:
    n = len(settings["statistics"])
    if not 0 <= int(index) < n:
        raise ValueError(f"{what} option dataset_index={index}: the checkpoint has statistics "
                         f"of {n} dataset(s)")
