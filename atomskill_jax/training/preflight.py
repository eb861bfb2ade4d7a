"""Checks before the first step: the saved normalisation statistics fit the dataset.

`make_pipeline` already refuses statistics of another build or of shards changed since
(fingerprint: metadata plus each shard's size, mtime and SHA-256), names a changed shard
that is damaged, and refuses files with NaN/inf. Here, beyond that: every field the
normaliser uses is present with the dataset's dimension, spreads are sane (std >= 0, min <= max), and a few raw batches
lie inside the recorded [min, max] (a file edited by hand, or copied from a sibling
dataset with the same layout, passes the fingerprint but not this). A model trained
with wrong statistics would learn in the wrong units, silently; so refuse. Reading
those batches is the first read of the data: a damaged shard the fingerprint cannot
see (same size and mtime) fails its CRC here, and is named (`pipeline.numpy_batches`).
"""

from __future__ import annotations

import itertools

import numpy as np

from atomskill_jax.data import normalization, statistics_compute
from atomskill_jax.data.statistics import StatisticsError


def _expected_dims(source, use_state: bool) -> dict[str, int]:
    dims = {"action": source.action_dim, "action_abs": source.action_dim,
            "observation/proprio": source.proprio_dim}
    if use_state:
        dims["observation/state"] = source.state_dim
    return dims


def check_statistics(pipeline, data_config, *, num_batches: int = 2, tolerance: float = 1e-3):
    """Raise StatisticsError naming the statistics file, field and dimension at fault."""
    split = data_config.get("split", "train")
    for source, stats in zip(pipeline.sources, pipeline.statistics):
        path = statistics_compute.statistics_path(source, split)
        fix = f"delete {path} so training recomputes it"
        for field, dim in _expected_dims(source, data_config.use_state).items():
            if field not in stats:
                raise StatisticsError(f"statistics file {path} has no field {field!r} which "
                                      f"training normalises; {fix}")
            fs = stats[field]
            for name in normalization.STAT_NAMES:
                value = np.asarray(getattr(fs, name))
                if value.shape != (dim,):
                    raise StatisticsError(
                        f"statistics file {path}: {field}/{name} has shape {value.shape} but "
                        f"{source.describe()} has {field} of dimension {dim}; {fix}")
                if not np.isfinite(value).all():
                    raise StatisticsError(f"statistics file {path}: {field}/{name} is not "
                                          f"finite; {fix}")
            if (np.asarray(fs.std) < 0).any() or (np.asarray(fs.min) > np.asarray(fs.max)).any():
                raise StatisticsError(f"statistics file {path}: {field} has negative std or "
                                      f"min > max; {fix}")
    if num_batches > 0:
        _check_coverage(pipeline, data_config, num_batches, tolerance)


def _check_coverage(pipeline, data_config, num_batches: int, tolerance: float) -> None:
    keys = normalization.normalizer_keys(data_config.action_space)
    for batch in itertools.islice(pipeline.numpy_batches(), num_batches):
        index = np.asarray(batch.get("dataset_index", np.zeros(1, np.int32)))
        for key, field in keys.items():
            if not normalization.has_path(batch, key):
                continue
            value = np.asarray(normalization.get_path(batch, key), np.float64)
            for d, (source, stats) in enumerate(zip(pipeline.sources, pipeline.statistics)):
                rows = value[index == d] if index.shape[:1] == value.shape[:1] else value
                if rows.size == 0:
                    continue
                rows = rows.reshape(-1, rows.shape[-1])
                lo, hi = np.asarray(stats[field].min), np.asarray(stats[field].max)
                slack = tolerance * np.maximum(hi - lo, 1.0)
                bad = (rows < lo - slack) | (rows > hi + slack)
                if bad.any():
                    dim = int(np.argwhere(bad)[0][1])
                    seen = (rows[:, dim].min(), rows[:, dim].max())
                    path = statistics_compute.statistics_path(source, data_config.split)
                    raise StatisticsError(
                        f"statistics file {path} does not cover the data: {key} dimension "
                        f"{dim} takes values in [{seen[0]:.4g}, {seen[1]:.4g}] but the file "
                        f"records {field} in [{lo[dim]:.4g}, {hi[dim]:.4g}]; the file belongs "
                        f"to other data: delete it so training recomputes it")
