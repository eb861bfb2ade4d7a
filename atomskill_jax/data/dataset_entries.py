"""The entries of `config.data.datasets`: what to read, how often, and how to see it.

An entry is a string "name" or "name:weight" (as `--config.data.datasets=a:2,b` gives),
or a mapping with the keys
  name         a dataset name under data_dir, or a version directory (required)
  weight       relative sampling rate (default 1.0)
  standardize  a registered standardisation (data/oxe_standardizations.py, e.g.
               "fractal") or an inline mapping (data/standardize_spec.py) for a
               foreign RLDS dataset (Open X-Embodiment); absent: the project's schema
  cameras      {model camera: dataset camera}: which of the dataset's images the
               model's `data.cameras` names read, e.g. {"front": "corner", "wrist":
               "gripperPOV"} reads image_corner as camera "front"; a value is a camera
               name (image_<value>) or an observation key ("image" in RT-1 data)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

ENTRY_KEYS = ("name", "weight", "standardize", "cameras")


@dataclasses.dataclass(frozen=True)
class DatasetEntry:
    name: str
    weight: float = 1.0
    standardize: Any = None  # a registered name, a mapping, or None
    cameras: Mapping[str, str] = dataclasses.field(default_factory=dict)


def _plain(value: Any) -> Any:
    return value.to_dict() if hasattr(value, "to_dict") else value


def _from_string(text: str) -> DatasetEntry:
    name, _, weight = text.strip().rpartition(":")
    try:
        return DatasetEntry(name, float(weight)) if name else DatasetEntry(text.strip())
    except ValueError:  # a ':' inside a path such as gs://bucket
        return DatasetEntry(text.strip())


def _from_mapping(raw: Mapping, index: int) -> DatasetEntry:
    where = f"config.data.datasets[{index}]"
    unknown = set(raw) - set(ENTRY_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)} (known: "
                         f"{', '.join(ENTRY_KEYS)})")
    if not raw.get("name"):
        raise ValueError(f"{where}: 'name' missing (a dataset name or directory)")
    cameras = _plain(raw.get("cameras")) or {}
    if not isinstance(cameras, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) and v for k, v in cameras.items()):
        raise ValueError(f"{where} ({raw['name']}): 'cameras' maps model camera names to the "
                         f"dataset's cameras, e.g. {{'front': 'corner'}}; got {cameras!r}")
    return DatasetEntry(name=str(raw["name"]), weight=float(raw.get("weight", 1.0)),
                        standardize=_plain(raw.get("standardize")) or None,
                        cameras=dict(cameras))


def parse_entries(config) -> list[DatasetEntry]:
    """The entries of `config.datasets` (a data config), checked."""
    entries = config.datasets
    if isinstance(entries, str):
        entries = [e for e in entries.split(",") if e.strip()]
    out = [_from_string(e) if isinstance(e, str) else _from_mapping(_plain(e), i)
           for i, e in enumerate(entries)]
    if not out:
        raise ValueError("config.datasets is empty: name at least one dataset")
    weights = [e.weight for e in out]
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"config.datasets weights must be >= 0 with a positive sum: "
                         f"{[(e.name, e.weight) for e in out]}")
    return out
