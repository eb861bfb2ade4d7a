"""TensorFlow read errors -> one DatasetError that names the damaged shard and the fix.

A damaged TFRecord shard surfaces from tf.data as DataLossError ("truncated record",
"corrupted record": a CRC32C mismatch), a missing one as NotFoundError, records that
are not this dataset's examples as InvalidArgumentError ("Could not parse example").
With interleaved, parallel reads the message names neither file nor dataset, so on
such an error every shard of the datasets being read is scanned (`shards.scan`) and
the first damaged ones are named, with how to rebuild. An InvalidArgumentError with
no damaged shard is not a data fault (a bug, a bad transform): it is re-raised as is.
"""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator, Sequence

from atomskill_jax.data import rebuild_hint, shards
from atomskill_jax.data.sources import DatasetError, DatasetSource
from atomskill_jax.data.tf_setup import tf

READ_ERRORS = (tf.errors.DataLossError, tf.errors.NotFoundError,
               tf.errors.InvalidArgumentError)
_SHOWN = 3  # damaged shards named in one message


class ShardError(DatasetError):
    """A dataset shard that cannot be read; the message names it and how to rebuild."""

    def __init__(self, message: str, damage: Sequence[shards.ShardDamage] = ()):
        super().__init__(message)
        self.damage = tuple(damage)


def damage_message(source: DatasetSource, damage: Sequence[shards.ShardDamage]) -> str:
    first = damage[0]
    text = f"shard {first.path} is damaged: {first.problem}"
    for more in damage[1:_SHOWN]:
        text += f"; shard {more.path} too: {more.problem}"
    if len(damage) > _SHOWN:
        text += f"; and {len(damage) - _SHOWN} more damaged shards"
    return (f"{text}. {source.describe()} cannot be read; "
            f"{rebuild_hint.rebuild_advice(source.directory)}")


def explain(err: Exception, opened: Sequence[DatasetSource], split: str = "train"):
    """The DatasetError to raise instead of TensorFlow's `err`, or None to keep `err`."""
    if not isinstance(err, READ_ERRORS):
        return None
    parse = isinstance(err, tf.errors.InvalidArgumentError)
    for source in opened:
        damage = shards.scan(source, split)  # framing and CRCs: cheap
        if not damage and parse:
            damage = shards.scan(source, split, parse=True)
        if damage:
            return ShardError(damage_message(source, damage), damage)
    if parse:
        return None
    names = "; ".join(s.describe() for s in opened)
    return DatasetError(
        f"{shards.short_tf_message(err)} while reading {names}, although a scan found every "
        f"shard intact (a disk or network fault?); run again, and if it persists "
        f"{rebuild_hint.rebuild_advice(opened[0].directory)}")


@contextlib.contextmanager
def named_shards(opened: Sequence[DatasetSource], split: str = "train"):
    """Turn read errors inside the block into `explain`'s DatasetError."""
    try:
        yield
    except READ_ERRORS as err:
        better = explain(err, opened, split)
        if better is None:
            raise
        raise better from err


def iterate(items: Iterable, opened: Sequence[DatasetSource],
            split: str = "train") -> Iterator:
    """`items` (a tf.data iterator), with read errors explained."""
    iterator = iter(items)
    while True:
        with named_shards(opened, split):
            try:
                item = next(iterator)
            except StopIteration:
                return
        yield item
