"""Trajectory-level transforms: one episode of per-step tensors [T, ...] in, one
AtomSkill training example per time step out (still stacked along T; `unbatch` later).

Pure TensorFlow ops, vectorised over the episode, so they run eagerly in tests and
inside tf.data graphs alike, and keep no state (iterator checkpoints stay valid).

A skill segment is a maximal run of equal `skill_segment` values; the contract
numbers them 0, 1, ... but runs are what the methods need, so a mislabelled repeat
cannot merge two separate skills.
"""

from __future__ import annotations

from atomskill_jax.data.tf_setup import tf

# Bit layout of the segment uid: dataset (15 bits) | episode (32) | segment (16).
EPISODE_SHIFT = 16
DATASET_SHIFT = 48


def segment_runs(skill_segment: tf.Tensor):
    """Run index per step [T], and first/last step (inclusive) of each run [S]."""
    skill_segment = tf.convert_to_tensor(skill_segment)
    changed = tf.not_equal(skill_segment[1:], skill_segment[:-1])
    run = tf.cumsum(tf.cast(tf.concat([[False], changed], 0), tf.int32))
    steps = tf.range(tf.shape(skill_segment)[0], dtype=tf.int32)
    return run, tf.math.segment_min(steps, run), tf.math.segment_max(steps, run)


def action_chunks(actions: tf.Tensor, horizon: int):
    """a[t:t+H] for every t [T, H, A]; past the end the last action repeats, mask False."""
    num_steps = tf.shape(actions)[0]
    index = tf.range(num_steps)[:, None] + tf.range(horizon)[None, :]
    mask = index < num_steps
    return tf.gather(actions, tf.minimum(index, num_steps - 1)), mask


def resample_segments(actions: tf.Tensor, starts: tf.Tensor, ends: tf.Tensor, length: int):
    """Each segment's actions linearly interpolated to `length` points [S, L, A].

    Point j sits at start + j * (n - 1) / (L - 1); in float64 the first and last
    points land exactly on the segment's first and last step.
    """
    if length < 2:
        raise ValueError(f"skill resample length must be >= 2, got {length}")
    starts64 = tf.cast(starts, tf.float64)[:, None]
    spans = tf.cast(ends - starts, tf.float64)[:, None]
    pos = starts64 + tf.range(length, dtype=tf.float64)[None, :] * spans / (length - 1)
    lo = tf.cast(tf.floor(pos), tf.int32)
    hi = tf.minimum(lo + 1, ends[:, None])
    frac = tf.cast(pos - tf.cast(lo, tf.float64), actions.dtype)[..., None]
    return tf.gather(actions, lo) * (1 - frac) + tf.gather(actions, hi) * frac


def training_steps(episode: dict, *, dataset_index: int, horizon: int, resample_length: int,
                   action_space: str = "action") -> dict:
    """Per-step AtomSkill examples of one episode (see `example_spec` in pipeline.py).

    `episode` is a dict of per-step tensors as `sources.read_episodes` gives it.
    """
    if action_space not in ("action", "action_abs"):
        raise ValueError(f"action_space must be 'action' or 'action_abs', got {action_space!r}")
    actions = tf.convert_to_tensor(episode[action_space])
    num_steps = tf.shape(actions)[0]
    run, starts, ends = segment_runs(episode["skill_segment"])
    tf.debugging.assert_less(tf.size(starts), 1 << EPISODE_SHIFT,
                             message="more skill segments in one episode than segment ids hold")
    chunk, chunk_mask = action_chunks(actions, horizon)
    resampled = resample_segments(actions, starts, ends, resample_length)
    episode_index = tf.cast(episode["episode_index"], tf.int64)
    uid_base = (tf.constant(dataset_index << DATASET_SHIFT, tf.int64)
                + tf.bitwise.left_shift(episode_index, EPISODE_SHIFT))
    observation = dict(episode["observation"])
    return {
        "observation": observation,
        "language_embedding": tf.cast(episode["language_embedding"], tf.float32),
        "action_chunk": chunk,
        "action_chunk_mask": chunk_mask,
        "skill": {
            "actions": tf.gather(resampled, run),
            "length": tf.gather(ends - starts + 1, run),
            "start": tf.gather(starts, run),
            "end": tf.gather(ends, run),
            "label_id": tf.cast(episode["skill_label_id"], tf.int32),
            "uid": uid_base + tf.cast(run, tf.int64),
        },
        "keypose": tf.cast(episode["keypose"], tf.float32),
        "timestep": tf.range(num_steps, dtype=tf.int32),
        "episode_length": tf.fill([num_steps], num_steps),
        "dataset_index": tf.fill([num_steps], tf.constant(dataset_index, tf.int32)),
    }


def decode_segment_uid(uid: int) -> tuple[int, int, int]:
    """(dataset index, episode index, segment run index) of a segment uid."""
    uid = int(uid)
    return (uid >> DATASET_SHIFT, (uid >> EPISODE_SHIFT) & ((1 << 32) - 1),
            uid & ((1 << EPISODE_SHIFT) - 1))
