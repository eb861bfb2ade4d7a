"""Fake batches with the input pipeline's structure, for benchmarks and tests that need
no dataset."""

from __future__ import annotations

import numpy as np


def default_example_batch(batch_size: int, *, action_dim: int, proprio_dim: int,
                          state_dim: int, language_dim: int, cameras=(), image_size=(32, 32),
                          horizon: int, skill_length: int, num_labels: int,
                          seed: int = 0) -> dict:
    """A numpy batch with the structure of the default trajectory transform's examples
    (data/traj_transforms.training_steps, after batching).

    Pairs of examples share a skill segment (same uid, label and resampled actions),
    and the last quarter of the batch has chunks running past the episode end.
    """
    cameras, image_size, length = tuple(cameras), tuple(image_size), int(skill_length)
    rng = np.random.default_rng(seed)
    b = batch_size
    segment = np.arange(b) // 2
    num_segments = int(segment.max()) + 1
    observation = {"proprio": rng.normal(size=(b, proprio_dim)).astype(np.float32)}
    if state_dim:
        observation["state"] = rng.normal(size=(b, state_dim)).astype(np.float32)
    for cam in cameras:
        observation[f"image_{cam}"] = rng.integers(0, 256, (b, *image_size, 3), dtype=np.uint8)
    valid_steps = np.where(np.arange(b) >= b - b // 4, horizon // 2, horizon)
    mask = np.arange(horizon)[None, :] < valid_steps[:, None]
    segment_actions = rng.normal(size=(num_segments, length, action_dim)).astype(np.float32)
    starts = (segment * 10).astype(np.int32)
    lengths = np.full(b, 10, np.int32)
    return {
        "observation": observation,
        "language_embedding": rng.normal(size=(b, language_dim)).astype(np.float32),
        "action_chunk": rng.normal(size=(b, horizon, action_dim)).astype(np.float32),
        "action_chunk_mask": mask,
        "skill": {
            "actions": segment_actions[segment],
            "length": lengths,
            "start": starts,
            "end": starts + lengths - 1,
            "label_id": (segment % int(num_labels)).astype(np.int32),
            "uid": segment.astype(np.int64),
        },
        "keypose": rng.normal(size=(b, action_dim)).astype(np.float32),
        "timestep": (starts + np.arange(b) % 2).astype(np.int32),
        "episode_length": np.full(b, 10 * num_segments, np.int32),
        "dataset_index": np.zeros(b, np.int32),
    }
