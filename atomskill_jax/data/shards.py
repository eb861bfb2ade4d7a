"""The TFRecord shard files of a dataset split: a fingerprint of their bytes, and a scan
that names the damaged ones.

Fingerprint (saved with the statistics): per shard its size, mtime and SHA-256.
Checking it on every `stats` / `train` start costs one stat per shard: size and mtime
equal -> the shard is taken as unchanged. Only a shard whose mtime moved is hashed
again, so a copied dataset (new mtimes, same bytes) still matches its statistics,
while a rewritten or truncated shard is noticed. Damage that keeps size and mtime
(bit rot) is not seen here; TFRecord's per-record CRC32C catches it at read time
(`read_errors`).

Scan (only after a read error: tf.data interleaves files, so TensorFlow's message does
not say which one failed): each shard alone through tf.data.TFRecordDataset, which
checks the framing and both CRC32Cs of every record, and its record count against
dataset_info.json (a file cut exactly at a record boundary has intact records but
too few). Optionally each record is also parsed with the dataset's features.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re

from atomskill_jax.data import rebuild_hint
from atomskill_jax.data.sources import DatasetError
from atomskill_jax.data.tf_setup import tf

import tensorflow_datasets as tfds  # noqa: E402  (after tf_setup on purpose)

_CHUNK = 4 << 20


@dataclasses.dataclass(frozen=True)
class ShardDamage:
    path: str
    problem: str  # short: "corrupted record at 7480 (after 2 of 6 records read intact)"


def split_shards(source, split: str = "train") -> list[tuple[str, int]]:
    """(path, number of episodes) of each shard of `split`, from dataset_info.json."""
    info = source.builder.info.splits[split]
    return [(os.path.join(source.directory, name), int(n))
            for name, n in zip(info.filenames, info.shard_lengths)]


def _missing(path: str, source) -> DatasetError:
    return DatasetError(f"shard {path} is missing (listed in {source.directory}/"
                        f"{rebuild_hint.INFO_FILE}); {source.describe()} is incomplete: "
                        f"{rebuild_hint.rebuild_advice(source.directory)}")


def _stat(path: str) -> tuple[int, int]:
    if "://" not in path:  # os.stat: nanosecond mtimes (gfile rounds to seconds)
        st = os.stat(path)
        return int(st.st_size), int(st.st_mtime_ns)
    st = tf.io.gfile.stat(path)
    return int(st.length), int(st.mtime_nsec)


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with tf.io.gfile.GFile(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fingerprint(source, split: str = "train") -> dict[str, dict]:
    """{file name: {"bytes", "mtime_ns", "sha256"}} for every shard of `split`."""
    out = {}
    for path, _ in split_shards(source, split):
        try:
            size, mtime = _stat(path)
        except (FileNotFoundError, tf.errors.NotFoundError):
            raise _missing(path, source) from None
        out[os.path.basename(path)] = {"bytes": size, "mtime_ns": mtime, "sha256": sha256(path)}
    return out


def changes(stored: dict, source, split: str = "train") -> dict[str, str]:
    """{file name: how it differs} from a saved fingerprint (empty: unchanged). Hashes
    only shards whose size matches but whose mtime moved."""
    current = {os.path.basename(p): p for p, _ in split_shards(source, split)}
    found = {name: "no longer listed" for name in sorted(set(stored) - set(current))}
    for name, path in current.items():
        saved = stored.get(name)
        if not isinstance(saved, dict):
            found[name] = "new"
            continue
        try:
            size, mtime = _stat(path)
        except (FileNotFoundError, tf.errors.NotFoundError):
            raise _missing(path, source) from None
        if size != saved.get("bytes"):
            found[name] = f"{saved.get('bytes')} -> {size} bytes"
        elif mtime != saved.get("mtime_ns") and sha256(path) != saved.get("sha256"):
            found[name] = "same size, other bytes (SHA-256 differs)"
    return found


def short_tf_message(err: Exception, limit: int = 160) -> str:
    """TensorFlow's message, first line, without its function-node / transformation
    prefixes and op suffix: "corrupted record at 7480"."""
    text = (getattr(err, "message", None) or str(err)).strip()
    text = re.sub(r"^\{\{function_node [^}]*\}\}\s*", "", text)
    text = re.sub(r"^Error in user-defined function passed to \S+ transformation with "
                  r"iterator: \S+: ", "", text)
    text = text.splitlines()[0] if text else type(err).__name__
    text = text.split(" [Op:", 1)[0].strip().replace("' failed with ", ": ")
    return text if len(text) <= limit else text[:limit - 3] + "..."


def scan(source, split: str = "train", *, parse: bool = False,
         only: set[str] | None = None) -> list[ShardDamage]:
    """The damaged shards of `split` (all of them, in file order); `only`: file names."""
    parse_fn = None
    if parse:  # the episode structure only: images stay encoded, so this stays cheap
        features = source.builder.info.features

        def parse_fn(record):
            return features.deserialize_example(
                record, decoders={"steps": tfds.decode.SkipDecoding()})
    damaged = []
    for path, expected in split_shards(source, split):
        if only is not None and os.path.basename(path) not in only:
            continue
        if not tf.io.gfile.exists(path):
            damaged.append(ShardDamage(path, "missing"))
            continue
        ds = tf.data.TFRecordDataset(path)
        if parse_fn is not None:
            ds = ds.map(parse_fn)
        count = 0
        try:
            for _ in ds:
                count += 1
        except tf.errors.OpError as err:
            damaged.append(ShardDamage(path, f"{short_tf_message(err)} (after {count} of "
                                             f"{expected} records read intact)"))
            continue
        if count != expected:
            damaged.append(ShardDamage(path, f"holds {count} records but dataset_info.json "
                                             f"lists {expected} (truncated or replaced)"))
    return damaged
