"""Instruction embeddings for datasets that store only the text (Open X-Embodiment).

At pipeline open time the distinct instructions of the split are collected (one pass
over the episodes, reading only that field; the list is cached beside the dataset,
keyed by the build's metadata, so later runs skip the pass) and embedded once with the
project's sentence encoder (all-MiniLM-L6-v2, with its on-disk cache). At read time a
step's text is looked up in that table with plain tensor ops (no lookup-table
resource), so the map stays stateless and tf.data iterator checkpoints keep working.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Callable, Sequence

import numpy as np

from atomskill_jax.data.tf_setup import tf

import tensorflow_datasets as tfds  # noqa: E402  (after tf_setup on purpose)

log = logging.getLogger(__name__)

EmbedFn = Callable[[Sequence[str]], np.ndarray]


def cache_path(directory: str, split: str) -> str:
    return os.path.join(directory, f"atomskill_instructions_{split}.json")


def _build_key(builder, split: str, field: str) -> dict:
    info = builder.info
    split_info = info.splits[split]
    return {"name": info.name, "version": str(info.version), "split": split, "field": field,
            "num_episodes": int(split_info.num_examples),
            "shard_lengths": [int(n) for n in split_info.shard_lengths],
            "num_bytes": int(split_info.num_bytes)}


def get_field(tree, path: Sequence[str]):
    for part in path:
        tree = tree[part]
    return tree


def distinct_instructions(builder, directory: str, split: str, path: Sequence[str]) -> list[str]:
    """Sorted distinct texts of steps/<path> over the split (cached beside the dataset)."""
    field = "/".join(path)
    key = _build_key(builder, split, field)
    cached = cache_path(directory, split)
    if tf.io.gfile.exists(cached):
        try:
            with tf.io.gfile.GFile(cached, "r") as f:
                data = json.loads(f.read())
            if data.get("key") == key:
                return list(data["instructions"])
            log.info("%s is for another build or field; collecting instructions again", cached)
        except (ValueError, KeyError, tf.errors.OpError) as err:
            log.warning("ignoring unreadable %s (%s); collecting instructions again", cached, err)
    ds = builder.as_dataset(split=split, decoders={"steps": tfds.decode.SkipDecoding()},
                            read_config=tfds.ReadConfig(try_autocache=False))
    ds = ds.map(lambda ep: tf.unique(tf.reshape(get_field(ep["steps"], path), [-1])).y,
                num_parallel_calls=tf.data.AUTOTUNE)
    found: set[str] = set()
    for texts in ds.as_numpy_iterator():
        found.update(t.decode("utf-8") for t in texts)
    instructions = sorted(found)
    try:
        with tf.io.gfile.GFile(cached + ".tmp", "w") as f:
            f.write(json.dumps({"key": key, "instructions": instructions}))
        tf.io.gfile.rename(cached + ".tmp", cached, overwrite=True)
    except (tf.errors.OpError, OSError) as err:  # a read-only copy: collect again next time
        log.warning("could not cache the instruction list at %s (%s)", cached, err)
    return instructions


def embed_instructions(instructions: Sequence[str], embed_fn: EmbedFn | None = None) -> np.ndarray:
    """[N, E] float32 rows, the project's sentence encoder unless `embed_fn` is given."""
    if embed_fn is None:
        from atomskill_jax.skills.vocabulary import default_embed_fn

        embed_fn = default_embed_fn()
    emb = np.asarray(embed_fn(list(instructions)), np.float32)
    if emb.ndim != 2 or emb.shape[0] != len(instructions):
        raise ValueError(f"the sentence encoder returned shape {emb.shape} for "
                         f"{len(instructions)} instructions")
    return emb


def lookup(texts: tf.Tensor, table: Sequence[str], embeddings: np.ndarray, *,
           message: str) -> tf.Tensor:
    """texts [T] -> embeddings [T, E]; a text outside the table fails with `message`."""
    texts = tf.reshape(texts, [-1])
    unique, index = tf.unique(texts)  # usually one instruction per episode
    matches = tf.equal(unique[:, None], tf.constant(list(table), tf.string)[None, :])
    known = tf.reduce_any(matches, axis=1)
    with tf.control_dependencies([tf.debugging.assert_equal(
            tf.reduce_all(known), True, message=message)]):
        rows = tf.argmax(tf.cast(matches, tf.int32), axis=1, output_type=tf.int32)
    vectors = tf.gather(tf.constant(embeddings, tf.float32), rows)
    return tf.gather(vectors, index)
