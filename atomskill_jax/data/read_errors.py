"""TensorFlow read errors -> one DatasetError that names the damaged shard and the fix.

A damaged TFRecord shard surfaces from tf.data as DataLossError ("truncated record",
"corrupted record": a CRC32C mismatch), a missing one as NotFoundError, records that
are not this dataset's examples as InvalidArgumentError ("Could not parse example"),
one cut at a record boundary as FailedPreconditionError (fewer episodes than listed).
With interleaved, parallel reads the message names neither file nor dataset, so on
such an error every shard of the datasets being read is scanned (`shards.scan`) and
the first damaged ones are named, with how to rebuild. Any of these but DataLossError
with no damaged shard is not a data fault (a bug, a bad transform): it is re-raised.
"""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator, Sequence

from atomskill_jax.data import rebuild_hint, shards
from atomskill_jax.data.sources import DatasetError, DatasetSource
from atomskill_jax.data.tf_setup import tf

# DataLossError is always the data; the others may be (then a scan finds the shard) or
# may be something else (then they are re-raised as they are).
READ_ERRORS = (tf.errors.DataLossError, tf.errors.NotFoundError,
               tf.errors.InvalidArgumentError, tf.errors.FailedPreconditionError)
_SHOWN = 3  # damaged shards named in one message


class ShardError(DatasetError):
    """A dataset shard that cannot be read; the message names it and how to rebuild."""

    def __init__(self, message: str, damage: Sequence[shards.ShardDamage] = ()):
        super().__init__(message)
        self.damage = tuple(damage)


def damage_message(source: DatasetSource, damage: Sequence[shards.ShardDamage]) -> str:
    def one(d: shards.ShardDamage) -> str:
        return f"shard {d.path} is " + ("missing" if d.problem == "missing"
                                        else f"damaged: {d.problem}")

    text = "; ".join(one(d) for d in damage[:_SHOWN])
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
        damage = shards.scan(source, split)  # framing, CRCs and record counts: cheap
        if not damage and parse:
            damage = shards.scan(source, split, parse=True)
        if damage:
            return ShardError(damage_message(source, damage), damage)
    if not isinstance(err, tf.errors.DataLossError):
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
