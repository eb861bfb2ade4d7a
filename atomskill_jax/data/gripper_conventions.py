"""Foreign gripper commands -> the project's convention (+1 closed, -1 open), in TensorFlow.

Vectorised over an episode [T] so it runs inside tf.data maps and eagerly in tests.
Absolute commands are mapped linearly (the dataset's `open` value to -1, `closed` to
+1, clipped) and optionally binarised at the midpoint. Relative commands (RT-1: +1
close, -1 open, 0 keep) become the state they leave the gripper in: the last command
that acted; before the first one the gripper is in the opposite state (a first
"close" means it was open), and an episode without any is open throughout.
"""

from __future__ import annotations

from atomskill_jax.data.standardize_spec import CLOSED, OPEN, GripperConvention
from atomskill_jax.data.tf_setup import tf


def absolute_to_ours(values: tf.Tensor, closed: float, open_: float, *,
                     binarize: bool = False) -> tf.Tensor:
    values = tf.cast(values, tf.float32)
    fraction = (values - open_) / (closed - open_)  # 0 open .. 1 closed
    ours = tf.clip_by_value(OPEN + (CLOSED - OPEN) * fraction, OPEN, CLOSED)
    if binarize:
        ours = tf.where(ours >= 0.5 * (CLOSED + OPEN), CLOSED, OPEN)
    return ours


def relative_to_ours(values: tf.Tensor, closed: float, open_: float, *,
                     threshold: float = 0.1) -> tf.Tensor:
    values = tf.cast(values, tf.float32)
    mid, half = 0.5 * (closed + open_), 0.5 * (closed - open_)
    toward_closed = (values - mid) / half  # +1: the close command, -1: the open one
    event = tf.where(toward_closed > threshold, 1, tf.where(toward_closed < -threshold, -1, 0))
    steps = tf.range(tf.shape(event)[0])
    # Index of the last acting command at or before each step (-1: none yet).
    last = tf.scan(tf.maximum, tf.where(event != 0, steps, -1), initializer=tf.constant(-1))
    acting = tf.boolean_mask(event, event != 0)
    before_first = tf.cond(tf.size(acting) > 0, lambda: -acting[0], lambda: tf.constant(-1))
    state = tf.where(last >= 0, tf.gather(event, tf.maximum(last, 0)), before_first)
    return tf.where(state > 0, CLOSED, OPEN)


def to_ours(values: tf.Tensor, convention: GripperConvention) -> tf.Tensor:
    """values [T, ...] in `convention` -> the project's absolute command, same shape."""
    shape = tf.shape(values)
    flat = tf.reshape(values, [shape[0], -1])
    if convention.kind == "absolute":
        out = absolute_to_ours(flat, convention.closed, convention.open,
                               binarize=convention.binarize)
    else:  # each channel its own gripper
        out = tf.transpose(tf.map_fn(
            lambda column: relative_to_ours(column, convention.closed, convention.open,
                                            threshold=convention.threshold),
            tf.transpose(tf.cast(flat, tf.float32))))
    return tf.reshape(out, shape)
