"""Compute a dataset's statistics once, save them beside it, load them by name later.

Every process computes the same numbers (the reading order does not matter), and
process 0 writes the file; so no cross-host coordination is needed. Percentiles are
exact: all steps of the numeric fields are held in memory (4 floats x 2.5 M steps for
a 5000-episode MetaWorld set is ~40 MB per field).

The fingerprint saved with them is the build's metadata (dataset_info.json) plus each
shard's size, mtime and SHA-256 (`shards.fingerprint`), so statistics of data changed
since are noticed, not only of another build. A file written before shard fingerprints
existed is recomputed once (with a message) when its metadata still matches.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os

import numpy as np

from atomskill_jax.data import read_errors, shards, sources, statistics
from atomskill_jax.data.normalization import FieldStatistics
from atomskill_jax.data.statistics import DatasetStatistics, StatisticsError
from atomskill_jax.data.tf_setup import tf

log = logging.getLogger(__name__)


SHARDS_KEY = "shards"


def dataset_fingerprint(source: sources.DatasetSource, split: str = "train", *,
                        with_shards: bool = True) -> dict:
    """What identifies a build: name, version, episode counts, shard lengths, features,
    and (with_shards) every shard file's size, mtime and SHA-256."""
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
        # A standardised foreign dataset: its statistics are of the standardised fields.
        **({"standardization": source.standardization.tag}
           if source.standardization is not None else {}),
        **({SHARDS_KEY: shards.fingerprint(source, split)} if with_shards else {}),
    }


def statistics_path(source: sources.DatasetSource, split: str = "train") -> str:
    """Beside the dataset; a standardised read has its own file per standardisation
    (name + content hash), so differently standardised uses of one dataset never mix."""
    name = statistics.statistics_filename(split)
    if source.standardization is not None:
        stem, ext = os.path.splitext(name)
        name = f"{stem}.{source.standardization.tag}{ext}"
    return os.path.join(source.directory, name)


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
    # A damaged shard is named (tfds also checks the episode count: a shard cut at a
    # record boundary fails too).
    for episode in read_errors.iterate(ds.as_numpy_iterator(), [source], split):
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


def is_legacy(stats: DatasetStatistics) -> bool:
    """Saved before fingerprints covered the shard files (so shards cannot be checked)."""
    return SHARDS_KEY not in stats.fingerprint


def check_fresh(stats: DatasetStatistics, source: sources.DatasetSource, path: str,
                split: str = "train") -> None:
    """Refuse statistics of another build, or of shards changed since they were computed.

    A changed shard that is damaged is named as such (read_errors.ShardError), with how
    to rebuild; an intact one means the data was rewritten: the statistics are stale.
    """
    stored = {k: v for k, v in stats.fingerprint.items() if k != SHARDS_KEY}
    diffs = statistics.fingerprint_differences(
        stored, dataset_fingerprint(source, split, with_shards=False))
    if not diffs and not is_legacy(stats):
        changed = shards.changes(stats.fingerprint[SHARDS_KEY], source, split)
        if changed:
            damage = shards.scan(source, split, only=set(changed))
            if damage:
                raise read_errors.ShardError(read_errors.damage_message(source, damage),
                                             damage)
            diffs = [f"shard {name}: {how}" for name, how in changed.items()]
    if diffs:
        raise StatisticsError(
            f"statistics file {path} is stale: it was computed for other data than "
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
        if is_legacy(stats):
            log.warning("statistics file %s predates shard fingerprints, so changed shards "
                        "cannot be noticed; run `atomskill stats --data=%s` to refresh it",
                        path, source.directory)
    return stats


def load_or_compute_statistics(source: sources.DatasetSource, split: str = "train", *,
                               write: bool | None = None) -> DatasetStatistics:
    """Load the saved statistics, or compute them and (on process 0) save them.

    An existing but stale or invalid file is an error, never silently replaced: the
    model trained with it would normalise differently from one trained now. A file of
    the same build saved before shard fingerprints is recomputed (same data, same
    numbers) so its shards are covered from now on.
    """
    path = statistics_path(source, split)
    old = None
    if tf.io.gfile.exists(path):
        stats = statistics.read_statistics_file(path)
        check_fresh(stats, source, path, split)
        if not is_legacy(stats):
            return stats
        old = stats
        log.warning("statistics file %s predates shard fingerprints; recomputing it once so "
                    "that changed shards are noticed from now on", path)
    else:
        log.info("computing statistics of %s (split %s)", source.describe(), split)
    stats = compute_statistics(source, split)
    if old is not None:
        _warn_if_different(old, stats, path)
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


def _warn_if_different(old: DatasetStatistics, new: DatasetStatistics, path: str) -> None:
    for field, fs in new.fields.items():
        before = old.fields.get(field)
        if before is None or not np.allclose(before.mean, fs.mean, rtol=1e-5, atol=1e-6) \
                or not np.allclose(before.std, fs.std, rtol=1e-5, atol=1e-6):
            log.warning("recomputed statistics %s differ from the old file in %s: the data "
                        "changed since it was computed; models trained with the old file "
                        "normalise differently", path, field)
            return
