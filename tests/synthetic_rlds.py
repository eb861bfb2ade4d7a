"""Hand-made RLDS datasets with known values, for the data-pipeline tests.

Each episode `e` has known segment boundaries and values that encode where they come
from, so tests can check chunks, resampled segments and ids exactly:
  action[t, d]     = 1000 * e + t + 0.1 * d     (last dim constant 1.0, like a gripper
                                                 that never moves)
  action_abs[t, d] = -(1000 * e + t) - 0.1 * d
  proprio[t, d]    = t + d,  state[t, d] = e + t * d
  image pixels     = (t * 7 + e) % 256  (every pixel), so a frame names its step
  keypose[t]       = action_abs at the last step of t's segment
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import tensorflow_datasets as tfds

from atomskill_jax.data import episode_builder, rlds_schema

ACTION_DIM = 3
PROPRIO_DIM = 2
STATE_DIM = 4
LANGUAGE_DIM = 4


def make_episode(index: int, segment_lengths: Sequence[int], *, state: bool = True,
                 cameras: Sequence[str] = (), image_size=(16, 16)) -> dict:
    t_len = int(sum(segment_lengths))
    t = np.arange(t_len, dtype=np.float64)
    dims = np.arange(ACTION_DIM)
    action = 1000 * index + t[:, None] + 0.1 * dims[None, :]
    action[:, -1] = 1.0
    action_abs = -(1000 * index + t[:, None]) - 0.1 * dims[None, :]
    segment = np.repeat(np.arange(len(segment_lengths)), segment_lengths)
    ends = np.cumsum(segment_lengths) - 1
    keypose = action_abs[ends[segment]]
    obs = {"proprio": t[:, None] + np.arange(PROPRIO_DIM)[None, :]}
    if state:
        obs["state"] = index + t[:, None] * np.arange(STATE_DIM)[None, :]
    for cam in cameras:
        pix = ((np.arange(t_len) * 7 + index) % 256).astype(np.uint8)
        obs[f"image_{cam}"] = np.broadcast_to(
            pix[:, None, None, None], (t_len, *image_size, 3)).copy()
    first = np.arange(t_len) == 0
    last = np.arange(t_len) == t_len - 1
    labels = ["grasp", "move", "place"]
    return {
        "steps": {
            "observation": obs,
            "action": action, "action_abs": action_abs,
            "reward": last.astype(np.float32), "discount": np.ones(t_len),
            "is_first": first, "is_last": last, "is_terminal": last,
            "language_instruction": [f"task {index % 2}"] * t_len,
            "language_embedding": np.tile(np.arange(LANGUAGE_DIM) + index, (t_len, 1)),
            "skill_segment": segment,
            "skill_label": [labels[s % 3] for s in segment],
            "skill_label_id": segment % 3,
            "skill_description": [labels[s % 3] for s in segment],
            "is_keyframe": np.isin(np.arange(t_len), ends),
            "keypose": keypose,
        },
        "episode_metadata": {"episode_id": f"ep{index}", "task": f"task{index % 2}",
                             "num_skills": len(segment_lengths)},
    }


class SyntheticRlds(episode_builder.RldsEpisodeBuilder, skip_registration=True):
    """A tiny RLDS dataset of hand-made episodes (see the module docstring)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "synthetic test data"}

    def __init__(self, *, segments: Sequence[Sequence[int]], state: bool = True,
                 cameras: Sequence[str] = (), image_size=(16, 16), **kwargs):
        self._segments = [list(s) for s in segments]
        self._state = state
        self._cameras = tuple(cameras)
        self._image_size = tuple(image_size)
        super().__init__(**kwargs)

    def episode_spec(self):
        return rlds_schema.EpisodeSpec(
            action_dim=ACTION_DIM, proprio_dim=PROPRIO_DIM,
            state_dim=STATE_DIM if self._state else None, language_dim=LANGUAGE_DIM,
            cameras=self._cameras, image_size=self._image_size)

    def generate_episodes(self):
        for i, seg in enumerate(self._segments):
            yield f"ep{i}", make_episode(i, seg, state=self._state, cameras=self._cameras,
                                         image_size=self._image_size)


DEFAULT_SEGMENTS = ((5, 9, 6), (12, 3), (7,), (4, 4, 4, 4), (20, 10), (2, 3, 2))

_CACHE: dict = {}


def build(root: str, segments=DEFAULT_SEGMENTS, **kwargs) -> str:
    """Write a synthetic dataset under `root`; returns its version directory."""
    return SyntheticRlds(segments=segments, data_dir=root, **kwargs).build()


def cached(tmp_path_factory, key: str, segments=DEFAULT_SEGMENTS, **kwargs) -> str:
    """Build once per test session (datasets are read-only in tests)."""
    if key not in _CACHE:
        root = str(tmp_path_factory.mktemp(f"rlds_{key}"))
        _CACHE[key] = build(root, segments, **kwargs)
    return _CACHE[key]


def read_episodes(version_dir: str) -> list[dict]:
    """All episodes as numpy, steps stacked along time, ordered by episode id."""
    builder = tfds.builder_from_directory(version_dir)
    out = []
    for ep in tfds.as_numpy(builder.as_dataset(split="train")):
        steps = list(ep["steps"])
        stacked = {k: np.stack([s[k] for s in steps]) for k in steps[0] if k != "observation"}
        stacked["observation"] = {k: np.stack([s["observation"][k] for s in steps])
                                  for k in steps[0]["observation"]}
        stacked["episode_id"] = ep["episode_metadata"]["episode_id"].decode()
        out.append(stacked)
    return sorted(out, key=lambda e: int(e["episode_id"][2:]))


if __name__ == "__main__":  # python tests/synthetic_rlds.py OUT_DIR [camera ...]
    import sys
    print(build(sys.argv[1], cameras=sys.argv[2:]))
    print(os.listdir(sys.argv[1]))
