"""Compute a dataset's statistics once, save them beside it, load them by name later.

Every process computes the same numbers (the reading order does not matter), and
process 0 writes the file; so no cross-host coordination is needed. Percentiles are
exact: all steps of the numeric fields are held in memory (4 floats x 2.5 M steps for
a 5000-episode MetaWorld set is ~40 MB per field).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os

import numpy as np

from atomskill_jax.data import sources, statistics
from atomskill_jax.data.normalization import FieldStatistics
from atomskill_jax.data.statistics import DatasetStatistics, StatisticsError
from atomskill_jax.data.tf_setup import tf

log = logging.getLogger(__name__)


def dataset_fingerprint(source: sources.DatasetSource, split: str = "train") -> dict:
    """What identifies a build: name, version, episode counts, shard sizes, features."""
    info = source.builder.info
    split_info = info.splits[split]
    features = json.dumps(info.features.to_json(), sort_keys=True, default=str)
    return {
        "name": info.name,
        "version": str(info.version),
        "split": split,
        "num_episodes": int(split_info.num_examples),
        "shard_lengths": [int(n) for n in split_info.shard_lengths],
        "num_bytes": int(split_info.num_bytes),
        "features_sha256": hashlib.sha256(features.encode()).hexdigest()[:16],
    }


def statistics_path(source: sources.DatasetSource, split: str = "train") -> str:
    return os.path.join(source.directory, statistics.statistics_filename(split))


def field_statistics(values: np.ndarray) -> FieldStatistics:
    values = np.asarray(values, np.float64)
    p01, p99 = np.percentile(values, [1.0, 99.0], axis=0)
    return FieldStatistics(mean=values.mean(0), std=values.std(0), min=values.min(0),
                           max=values.max(0), p01=p01, p99=p99)


def compute_statistics(source: sources.DatasetSource, split: str = "train") -> DatasetStatistics:
    has_state = source.state_dim is not None
    ds = sources.read_episodes(source, split=split, keep_state=has_state)
    ds = ds.map(lambda ep: {"action": ep["action"], "action_abs": ep["action_abs"],
                            "observation/proprio": ep["observation"]["proprio"],
                            **({"observation/state": ep["observation"]["state"]}
                               if has_state else {})},
                num_parallel_calls=tf.data.AUTOTUNE)
    columns: dict[str, list[np.ndarray]] = {}
    num_episodes = 0
    for episode in ds.as_numpy_iterator():
        num_episodes += 1
        for key, value in episode.items():
            columns.setdefault(key, []).append(value)
        if num_episodes % 500 == 0:
            log.info("statistics of %s: %d episodes read", source.describe(), num_episodes)
    if num_episodes == 0:
        raise sources.DatasetError(f"{source.describe()}: split {split!r} has no episodes")
    values = {k: np.concatenate(v) for k, v in columns.items()}
    for key, value in values.items():
        if not np.isfinite(value).all():
            raise sources.DatasetError(f"{source.describe()}: field {key!r} holds NaN or inf; "
                                       f"rebuild the dataset")
    return DatasetStatistics(
        fields={k: field_statistics(v) for k, v in values.items()},
        num_episodes=num_episodes, num_steps=int(values["action"].shape[0]),
        fingerprint=dataset_fingerprint(source, split), split=split)


def check_fresh(stats: DatasetStatistics, source: sources.DatasetSource, path: str,
                split: str = "train") -> None:
    diffs = statistics.fingerprint_differences(stats.fingerprint,
                                               dataset_fingerprint(source, split))
    if diffs:
        raise StatisticsError(
            f"statistics file {path} is stale: it was computed for another build of "
            f"{source.describe()} ({'; '.join(diffs)}). Delete it to recompute, or point "
            f"training at the build it belongs to")


def load_statistics(name_or_path: str, data_dir: str | None = None, split: str = "train",
                    check_fingerprint: bool = True) -> DatasetStatistics:
    """The saved statistics of a dataset given by name or directory (never computes)."""
    source = sources.open_source(name_or_path, data_dir)
    path = statistics_path(source, split)
    stats = statistics.read_statistics_file(path)
    if check_fingerprint:
        check_fresh(stats, source, path, split)
    return stats


def load_or_compute_statistics(source: sources.DatasetSource, split: str = "train", *,
                               write: bool | None = None) -> DatasetStatistics:
    """Load the saved statistics, or compute them and (on process 0) save them.

    An existing but stale or invalid file is an error, never silently replaced: the
    model trained with it would normalise differently from one trained now.
    """
    path = statistics_path(source, split)
    if tf.io.gfile.exists(path):
        stats = statistics.read_statistics_file(path)
        check_fresh(stats, source, path, split)
        return stats
    log.info("computing statistics of %s (split %s)", source.describe(), split)
    stats = compute_statistics(source, split)
    if write is None:
        import jax  # only to know which process writes
        write = jax.process_index() == 0
    if write:
        try:
            statistics.write_statistics_file(stats, path)
        except OSError as err:  # a read-only dataset copy: keep going with in-memory stats
            log.warning("could not save statistics to %s (%s); they live only in this run "
                        "and its checkpoint assets", path, err)
    return stats
