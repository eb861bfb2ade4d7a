"""A tiny RLDS dataset in Open X-Embodiment's RT-1 (fractal20220817_data) layout.

Foreign keys as the published layout has them (steps/action/{world_vector,
rotation_delta, gripper_closedness_action, terminate_episode}, steps/observation/
{image, base_pose_tool_reached, gripper_closed, natural_language_instruction,
natural_language_embedding}), with known values so tests can check the
standardisation exactly. Episode e of T = len(GRIPPER[e]) steps:
  world_vector[t]   = (0.01 (t + 1), 0.02 e, -0.005 (t % 3))
  rotation_delta[t] = (0.001 t, 0.0, 0.002 e)
  gripper_closedness_action: RT-1's relative command, +1 close / -1 open / 0 keep,
      with sub-threshold jitter (+-0.04) on the keep steps
  gripper_closed[t] = 1 once a close acted, 0 once an open acted
  base_pose_tool_reached[t] = (0.3 + 0.01 t, 0.1 e, 0.2, 0, 0, 0, 1)
  image pixels      = (7 t + e) % 256 (every pixel: a frame names its step)
  instruction       = INSTRUCTIONS[e % 2]
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

# Per episode: the step where the close acts and where the open acts (None: never).
EVENTS = ((4, 11), (6, None), (None, None), (3, 9))
LENGTHS = (16, 12, 8, 14)
INSTRUCTIONS = ("pick coke can", "open middle drawer")
IMAGE_SHAPE = (6, 10, 3)


def gripper_command(episode: int) -> np.ndarray:
    close, open_ = EVENTS[episode]
    t_len = LENGTHS[episode]
    rng = np.random.default_rng(episode)
    cmd = rng.uniform(-0.04, 0.04, t_len)  # below the 0.1 threshold: "keep"
    if close is not None:
        cmd[close] = 1.0
    if open_ is not None:
        cmd[open_] = -1.0
    return cmd.astype(np.float32)


def expected_gripper(episode: int) -> np.ndarray:
    """The project's absolute command: -1 open, +1 closed, from the acting step on."""
    close, open_ = EVENTS[episode]
    out = -np.ones(LENGTHS[episode], np.float32)
    if close is not None:
        out[close:open_ if open_ is not None else None] = 1.0
    return out


def episode(e: int) -> dict:
    t_len = LENGTHS[e]
    t = np.arange(t_len, dtype=np.float32)
    closed = (expected_gripper(e) > 0).astype(np.float32)
    pix = ((7 * np.arange(t_len) + e) % 256).astype(np.uint8)
    steps = []
    for i in range(t_len):
        steps.append({
            "action": {
                "world_vector": np.array([0.01 * (i + 1), 0.02 * e, -0.005 * (i % 3)],
                                         np.float32),
                "rotation_delta": np.array([0.001 * i, 0.0, 0.002 * e], np.float32),
                "gripper_closedness_action": gripper_command(e)[i:i + 1],
                "terminate_episode": np.array([0, 1, 0] if i < t_len - 1 else [1, 0, 0],
                                              np.int32),
            },
            "observation": {
                "image": np.full(IMAGE_SHAPE, pix[i], np.uint8),
                "base_pose_tool_reached": np.array(
                    [0.3 + 0.01 * t[i], 0.1 * e, 0.2, 0, 0, 0, 1], np.float32),
                "gripper_closed": closed[i:i + 1],
                "natural_language_instruction": INSTRUCTIONS[e % 2],
                "natural_language_embedding": np.full(16, e, np.float32),
            },
            "reward": float(i == t_len - 1),
            "is_first": i == 0, "is_last": i == t_len - 1, "is_terminal": i == t_len - 1,
        })
    return {"steps": steps}


class FractalLike(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """RT-1's layout, a few hand-made episodes (see the module docstring)."""

    VERSION = tfds.core.Version("0.1.0")
    RELEASE_NOTES = {"0.1.0": "test data in the fractal20220817_data layout"}
    url_infos = None  # nothing is downloaded (see data/episode_builder.py)

    def _info(self):
        f = tfds.features
        return tfds.core.DatasetInfo(builder=self, features=f.FeaturesDict({
            "steps": f.Dataset({
                "action": f.FeaturesDict({
                    "world_vector": f.Tensor(shape=(3,), dtype=np.float32),
                    "rotation_delta": f.Tensor(shape=(3,), dtype=np.float32),
                    "gripper_closedness_action": f.Tensor(shape=(1,), dtype=np.float32),
                    "terminate_episode": f.Tensor(shape=(3,), dtype=np.int32),
                }),
                "observation": f.FeaturesDict({
                    "image": f.Image(shape=IMAGE_SHAPE, dtype=np.uint8),
                    "base_pose_tool_reached": f.Tensor(shape=(7,), dtype=np.float32),
                    "gripper_closed": f.Tensor(shape=(1,), dtype=np.float32),
                    "natural_language_instruction": f.Text(),
                    # RT-1's is 512-d (USE); smaller here, unused like the real one.
                    "natural_language_embedding": f.Tensor(shape=(16,), dtype=np.float32),
                }),
                "reward": f.Scalar(dtype=np.float32),
                "is_first": np.bool_, "is_last": np.bool_, "is_terminal": np.bool_,
            }),
        }))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for e in range(len(LENGTHS)):
            yield f"ep{e}", episode(e)


def build(root: str) -> str:
    """Write the dataset under `root`; returns its version directory."""
    builder = FractalLike(data_dir=root)
    builder.download_and_prepare()
    return builder.data_dir
