"""USR's training examples, their normalisation keys, a fake batch and the input spec.

Example (one step t of an episode of T steps; batches add a leading axis B):
  observation/{state, proprio, image_<c>}          o_t
  observation_future/{...}                         o_{min(t+H, T-1)}  (Stage I, pseudo-labels)
  observation_history/{...}  [L, ...]              o_{t-L+1..t}, the current frame last;
                                                   frames before the episode start repeat
                                                   o_0 (the policy runtime pads the same way)
  language_embedding float32[E]
  action_chunk float32[H, A], action_chunk_mask bool[H]   (data/traj_transforms.action_chunks)
  timestep, episode_length, dataset_index int32

Images are decoded and resized here, once per episode frame, because the frame transform
(data/frame_transforms.process_frame) decodes `observation/` only; so the step shuffle
buffer holds decoded history frames: keep `data.example_shuffle_buffer` small with cameras.
"""

from __future__ import annotations

import numpy as np

from atomskill_jax.data.normalization import normalizer_keys as default_normalizer_keys

GROUPS = ("observation", "observation_future", "observation_history")
LOW_DIM = ("state", "proprio")


def normalizer_keys(action_space: str) -> dict[str, str]:
    """Each group's state/proprio normalised by the `observation/*` statistics. The
    normaliser aligns per-dataset rows with [B, D] and [B, L, D] alike (rows broadcast
    over the history axis), so mixed-dataset batches are normalised row by row."""
    base = default_normalizer_keys(action_space)
    keys = {"action_chunk": base["action_chunk"]}
    for group in GROUPS:
        for field in LOW_DIM:
            keys[f"{group}/{field}"] = f"observation/{field}"
    return keys


def trajectory_transform(config):
    import functools

    m = config.model
    return functools.partial(training_steps, horizon=int(m.horizon), history=int(m.history),
                             action_space=str(config.data.action_space),
                             cameras=tuple(config.data.cameras),
                             image_size=tuple(config.data.image_size))


def training_steps(episode: dict, dataset_index: int, *, horizon: int, history: int,
                   action_space: str, cameras=(), image_size=(128, 128)) -> dict:
    """Per-step USR examples of one episode (pure TensorFlow; see the module docstring)."""
    from atomskill_jax.data import frame_transforms, traj_transforms
    from atomskill_jax.data.tf_setup import tf

    if action_space not in ("action", "action_abs"):
        raise ValueError(f"data.action_space must be 'action' or 'action_abs', got {action_space!r}")
    if history < 1:
        raise ValueError(f"model.history must be >= 1, got {history}")
    actions = tf.convert_to_tensor(episode[action_space])
    num_steps = tf.shape(actions)[0]
    observation = dict(episode["observation"])
    for cam in cameras:
        key = f"image_{cam}"
        frames = observation[key]

        def decode(frame):
            if frame.dtype == tf.string:
                frame = frame_transforms.decode_image(frame)
            return frame_transforms.resize_image(frame, image_size)

        observation[key] = tf.map_fn(decode, frames, fn_output_signature=tf.TensorSpec(
            [*image_size, 3], tf.uint8))
    steps = tf.range(num_steps)
    future = tf.minimum(steps + horizon, num_steps - 1)
    past = tf.maximum(steps[:, None] + tf.range(-history + 1, 1)[None, :], 0)  # [T, L]
    chunk, chunk_mask = traj_transforms.action_chunks(actions, horizon)
    return {
        "observation": observation,
        "observation_future": {k: tf.gather(v, future) for k, v in observation.items()},
        "observation_history": {k: tf.gather(v, past) for k, v in observation.items()},
        "language_embedding": tf.cast(episode["language_embedding"], tf.float32),
        "action_chunk": chunk,
        "action_chunk_mask": chunk_mask,
        "timestep": tf.range(num_steps, dtype=tf.int32),
        "episode_length": tf.fill([num_steps], num_steps),
        "dataset_index": tf.fill([num_steps], tf.constant(dataset_index, tf.int32)),
    }


def observation_shapes(config) -> dict:
    """{observation key: (shape, dtype name)} of one frame."""
    m = config.model
    shapes = {}
    if bool(config.data.use_state) and int(m.state_dim) > 0:
        shapes["state"] = ((int(m.state_dim),), "float32")
    shapes["proprio"] = ((int(m.proprio_dim),), "float32")
    for cam in tuple(config.data.cameras):
        shapes[f"image_{cam}"] = ((*tuple(config.data.image_size), 3), "uint8")
    return shapes


def input_spec(config) -> dict:
    return {**observation_shapes(config),
            "language_embedding": ((int(config.model.language_dim),), "float32")}


def fake_batch(config, batch_size: int, seed: int = 0) -> dict:
    """A numpy batch with the structure of `training_steps` after batching; the history
    of the first half of the batch starts at the episode start (repeated first frame)."""
    rng = np.random.default_rng(seed)
    m = config.model
    b, h, L = int(batch_size), int(m.horizon), int(m.history)

    def frames(lead):
        out = {}
        for key, (shape, dtype) in observation_shapes(config).items():
            if dtype == "uint8":
                out[key] = rng.integers(0, 256, (*lead, *shape), dtype=np.uint8)
            else:
                out[key] = rng.normal(size=(*lead, *shape)).astype(np.float32)
        return out

    history = frames((b, L))
    timestep = np.where(np.arange(b) < b // 2, 0, L + 3).astype(np.int32)
    for v in history.values():
        v[: b // 2] = v[: b // 2, :1]  # t = 0: every past frame is o_0
    current = {k: v[:, -1].copy() for k, v in history.items()}
    valid = np.where(np.arange(b) >= b - b // 4, max(h // 2, 1), h)
    return {
        "observation": current,
        "observation_future": frames((b,)),
        "observation_history": history,
        "language_embedding": rng.normal(size=(b, int(m.language_dim))).astype(np.float32),
        "action_chunk": rng.normal(size=(b, h, int(m.action_dim))).astype(np.float32),
        "action_chunk_mask": np.arange(h)[None, :] < valid[:, None],
        "timestep": timestep,
        "episode_length": np.full(b, 50, np.int32),
        "dataset_index": np.zeros(b, np.int32),
    }
