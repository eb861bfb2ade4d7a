"""Dataset statistics and their JSON file (no TensorFlow: the policy server reads them).

One file per dataset and split, in the dataset's version directory, holding for each
field mean/std/min/max/1st/99th percentile per dimension, the episode and step
counts, and a fingerprint of the dataset (`statistics_compute.dataset_fingerprint`:
its metadata and each shard's size, mtime and SHA-256) so statistics of an older build,
or of shards changed since, are noticed instead of silently used.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

import numpy as np

from atomskill_jax.data.normalization import STAT_NAMES, FieldStatistics

FORMAT_VERSION = 1
# Fields statistics are computed for ("observation/state" only where a dataset has it).
FIELDS = ("action", "action_abs", "observation/proprio", "observation/state")


def statistics_filename(split: str = "train") -> str:
    return f"atomskill_statistics_{split}.json"


class StatisticsError(ValueError):
    """A statistics file that is missing, unreadable, invalid or stale; names the file."""


@dataclasses.dataclass(frozen=True)
class DatasetStatistics:
    fields: Mapping[str, FieldStatistics]
    num_episodes: int
    num_steps: int
    fingerprint: Mapping[str, Any]
    split: str = "train"

    def __getitem__(self, field: str) -> FieldStatistics:
        return self.fields[field]

    def __contains__(self, field: str) -> bool:
        return field in self.fields

    def to_json(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, "split": self.split,
                "num_episodes": self.num_episodes, "num_steps": self.num_steps,
                "fingerprint": dict(self.fingerprint),
                "fields": {k: v.to_json() for k, v in self.fields.items()}}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], source: str = "<dict>") -> "DatasetStatistics":
        try:
            fields = {k: FieldStatistics.from_json(v) for k, v in data["fields"].items()}
            stats = cls(fields=fields, num_episodes=int(data["num_episodes"]),
                        num_steps=int(data["num_steps"]), fingerprint=data["fingerprint"],
                        split=data.get("split", "train"))
        except (KeyError, TypeError, ValueError) as err:
            raise StatisticsError(f"statistics file {source}: missing or malformed entry "
                                  f"({type(err).__name__}: {err}); delete it to recompute") from err
        for field, fs in stats.fields.items():
            for name in STAT_NAMES:
                value = getattr(fs, name)
                if not np.isfinite(value).all():
                    raise StatisticsError(
                        f"statistics file {source}: {field}/{name} has non-finite values "
                        f"{value.tolist()}; the data holds NaN/inf or the file is corrupt; "
                        f"delete it to recompute")
        return stats


def _open(path: str, mode: str):
    if "://" in path:  # gs:// and friends: TensorFlow's file system (not needed locally)
        import tensorflow as tf
        return tf.io.gfile.GFile(path, mode)
    return open(path, mode)


def read_statistics_file(path: str) -> DatasetStatistics:
    try:
        with _open(path, "r") as f:
            data = json.load(f)
    except FileNotFoundError as err:
        raise StatisticsError(f"statistics file {path} does not exist; training computes it "
                              f"(or call statistics_compute.load_or_compute_statistics)") from err
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise StatisticsError(f"statistics file {path} is unreadable ({type(err).__name__}: "
                              f"{err}); delete it to recompute") from err
    if not isinstance(data, dict):
        raise StatisticsError(f"statistics file {path}: expected a JSON object")
    return DatasetStatistics.from_json(data, source=path)


def write_statistics_file(stats: DatasetStatistics, path: str) -> str:
    """Write atomically (temporary file, then rename) so readers never see half a file."""
    tmp = f"{path}.tmp{os.getpid()}"
    with _open(tmp, "w") as f:
        json.dump(stats.to_json(), f, indent=1)
    if "://" in path:
        import tensorflow as tf
        tf.io.gfile.rename(tmp, path, overwrite=True)
    else:
        os.replace(tmp, path)
    return path


def fingerprint_differences(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    keys = sorted(set(stored) | set(current))
    return [f"{k}: {stored.get(k)!r} -> {current.get(k)!r}" for k in keys
            if stored.get(k) != current.get(k)]
