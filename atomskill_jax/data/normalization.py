"""Normalise and unnormalise dicts of numpy arrays with saved dataset statistics.

Plain numpy (no TensorFlow, no JAX) so the trainer, the exported policy and the
policy server apply the very same arithmetic. Modes:
  "mean_std": (x - mean) / std
  "bounds":   1st..99th percentile mapped to [-1, 1], then clipped to [-1, 1]
  "min_max":  min..max mapped to [-1, 1]
  "none":     unchanged
A dimension whose spread (std or half-range) is below `eps` (e.g. a gripper that
never moves) is only shifted, never divided by a tiny number, so a value it takes
at deployment that it never took in the data stays finite. A per-dimension mask
leaves chosen dimensions (False) untouched.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

MODES = ("mean_std", "bounds", "min_max", "none")
EPS = 1e-6
STAT_NAMES = ("mean", "std", "min", "max", "p01", "p99")


@dataclasses.dataclass(frozen=True)
class FieldStatistics:
    """Per-dimension statistics of one field; arrays of shape [D] (or [N, D] stacked)."""

    mean: np.ndarray
    std: np.ndarray
    min: np.ndarray
    max: np.ndarray
    p01: np.ndarray
    p99: np.ndarray

    def to_json(self) -> dict[str, list[float]]:
        return {k: np.asarray(getattr(self, k), np.float64).tolist() for k in STAT_NAMES}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "FieldStatistics":
        return cls(**{k: np.asarray(data[k], np.float32) for k in STAT_NAMES})

    @classmethod
    def stack(cls, items: Sequence["FieldStatistics"]) -> "FieldStatistics":
        """One row per dataset, for batches that mix datasets (see `Normalizer`)."""
        return cls(**{k: np.stack([getattr(s, k) for s in items]) for k in STAT_NAMES})


def _shift_and_scale(stats: FieldStatistics, mode: str, eps: float):
    if mode == "mean_std":
        shift, scale = stats.mean, stats.std
    elif mode in ("bounds", "min_max"):
        lo, hi = (stats.p01, stats.p99) if mode == "bounds" else (stats.min, stats.max)
        shift, scale = (hi + lo) / 2.0, (hi - lo) / 2.0
    else:
        raise ValueError(f"unknown normalisation mode {mode!r}; expected one of {MODES}")
    scale = np.where(scale < eps, 1.0, scale)  # constant dimension: shift only
    return np.asarray(shift, np.float32), np.asarray(scale, np.float32)


def _broadcast(param: np.ndarray, x: np.ndarray, row_index: np.ndarray | None):
    """Align [D] or per-dataset [N, D] parameters with x of shape [B, ..., D]."""
    if row_index is None:
        return param
    rows = param[np.asarray(row_index)]  # [B, D]
    return rows.reshape(rows.shape[:1] + (1,) * (x.ndim - 2) + rows.shape[1:])


def normalize(x, stats: FieldStatistics, mode: str, mask=None, *, row_index=None,
              eps: float = EPS) -> np.ndarray:
    """Normalise the last axis of `x`. With `row_index` [B], stats rows are per example."""
    x = np.asarray(x, np.float32)
    if mode == "none":
        return x
    shift, scale = (_broadcast(p, x, row_index) for p in _shift_and_scale(stats, mode, eps))
    y = (x - shift) / scale
    if mode == "bounds":
        y = np.clip(y, -1.0, 1.0)
    return _apply_mask(x, y, mask)


def unnormalize(y, stats: FieldStatistics, mode: str, mask=None, *, row_index=None,
                eps: float = EPS) -> np.ndarray:
    """Inverse of `normalize` (exact except where "bounds" clipped)."""
    y = np.asarray(y, np.float32)
    if mode == "none":
        return y
    shift, scale = (_broadcast(p, y, row_index) for p in _shift_and_scale(stats, mode, eps))
    return _apply_mask(y, y * scale + shift, mask)


def _apply_mask(original: np.ndarray, transformed: np.ndarray, mask) -> np.ndarray:
    if mask is None:
        return transformed.astype(np.float32)
    mask = np.asarray(mask, bool)
    if mask.shape != original.shape[-1:]:
        raise ValueError(f"normalisation mask has {mask.shape[0]} entries but the field has "
                         f"{original.shape[-1]} dimensions")
    return np.where(mask, transformed, original).astype(np.float32)


def get_path(tree: Mapping[str, Any], path: str):
    for part in path.split("/"):
        tree = tree[part]
    return tree


def set_path(tree: dict, path: str, value) -> dict:
    """A copy of `tree` with `path` replaced (nested dicts along the path are copied)."""
    head, _, rest = path.partition("/")
    out = dict(tree)
    out[head] = set_path(tree[head], rest, value) if rest else value
    return out


def has_path(tree: Mapping[str, Any], path: str) -> bool:
    try:
        get_path(tree, path)
        return True
    except (KeyError, TypeError):
        return False


@dataclasses.dataclass(frozen=True)
class Normalizer:
    """Normalises the keys of a batch dict with the statistics field each key holds.

    `keys` maps a "/"-path in the batch (e.g. "action_chunk", "observation/proprio")
    to a statistics field ("action", "action_abs", "observation/proprio", ...).
    `statistics` holds one {field: FieldStatistics} per dataset; with several, each
    example uses the row of its `dataset_index`. Keys absent from a batch are skipped,
    so the same normaliser serves training batches and single observations.
    """

    keys: Mapping[str, str]
    statistics: Sequence[Mapping[str, FieldStatistics]]
    mode: str = "mean_std"
    masks: Mapping[str, Sequence[bool]] = dataclasses.field(default_factory=dict)
    index_key: str = "dataset_index"

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"unknown normalisation mode {self.mode!r}; expected one of {MODES}")

    def _apply(self, fn, batch: Mapping[str, Any], dataset_index) -> dict:
        out = dict(batch)
        if dataset_index is None and len(self.statistics) > 1:
            dataset_index = batch.get(self.index_key)
            if dataset_index is None:
                raise ValueError(f"batch has no {self.index_key!r} to choose among "
                                 f"{len(self.statistics)} datasets' statistics")
        for path, field in self.keys.items():
            if not has_path(out, path):
                continue
            per_dataset = [s[field] for s in self.statistics]
            if len(per_dataset) == 1 or np.ndim(dataset_index) == 0:
                stats = per_dataset[int(dataset_index or 0)]
                rows = None
            else:
                stats, rows = FieldStatistics.stack(per_dataset), dataset_index
            value = fn(get_path(out, path), stats, self.mode, self.masks.get(field),
                       row_index=rows)
            out = set_path(out, path, value)
        return out

    def normalize(self, batch: Mapping[str, Any], dataset_index=None) -> dict:
        return self._apply(normalize, batch, dataset_index)

    def unnormalize(self, batch: Mapping[str, Any], dataset_index=None) -> dict:
        return self._apply(unnormalize, batch, dataset_index)


# Statistics-field aliases accepted in config.normalization.mask.
MASK_ALIASES = {"proprio": "observation/proprio", "state": "observation/state"}


def normalizer_keys(action_space: str) -> dict[str, str]:
    """Which statistics field normalises which key of an AtomSkill example."""
    return {"action_chunk": action_space, "skill/actions": action_space,
            "keypose": "action_abs", "keypose_base": "action_abs",
            "observation/proprio": "observation/proprio",
            "observation/state": "observation/state"}


def normalizer_from_config(config, statistics: Sequence[Any]) -> Normalizer:
    """The normaliser a data config describes (`config.action_space`, `.normalization`).

    `statistics`: per dataset, a `statistics.DatasetStatistics` or a mapping
    field -> FieldStatistics (e.g. loaded from a checkpoint's assets by a server).
    """
    masks = config.normalization.get("mask", None) or {}
    masks = {MASK_ALIASES.get(k, k): tuple(bool(b) for b in v) for k, v in masks.items()}
    return Normalizer(keys=normalizer_keys(config.action_space),
                      statistics=[getattr(s, "fields", s) for s in statistics],
                      mode=config.normalization.mode, masks=masks)


def normalizer_to_json(normalizer: Normalizer) -> dict:
    """The normaliser's rule without its statistics (saved beside them by exports)."""
    return {"keys": dict(normalizer.keys), "mode": normalizer.mode,
            "masks": {k: [bool(b) for b in v] for k, v in normalizer.masks.items()},
            "index_key": normalizer.index_key}


def normalizer_from_json(data: Mapping[str, Any], statistics: Sequence[Any]) -> Normalizer:
    """Inverse of `normalizer_to_json`, with per-dataset statistics (DatasetStatistics
    or {field: FieldStatistics})."""
    return Normalizer(keys=dict(data["keys"]), mode=str(data["mode"]),
                      statistics=[getattr(s, "fields", s) for s in statistics],
                      masks={k: tuple(bool(b) for b in v) for k, v in data["masks"].items()},
                      index_key=str(data.get("index_key", "dataset_index")))
