"""Small example files in the real on-disk formats of two sources, for builder tests.

ALOHA / ACT: `write_act_episode` writes one episode_<i>.hdf5 as ACT's recorders do
(with `compress`, each frame JPEG-encoded the way ALOHA's recorder's `cv2.imencode`
does it: the RGB array taken for BGR, zero-padded rows, `/compress_len`).

RLBench: `Observation` has the attributes of rlbench.backend.observation.Observation
that the builder reads; `write_rlbench_episode` writes
<root>/<task>/variation<k>/episodes/episode<i>/ with low_dim_obs.pkl (the observations,
images cleared as RLBench's dataset generator does), variation_descriptions.pkl and
<camera>_rgb/<n>.png.
"""

from __future__ import annotations

import dataclasses
import os
import pickle

import h5py
import numpy as np

from atomskill_jax.skills.png import encode_png


def gripper_steps(num: int, changes: dict[int, float], start: float = 1.0) -> np.ndarray:
    """A gripper command that takes value v from each step t of `changes` {t: v} on."""
    out = np.full((num,), start)
    for t, value in sorted(changes.items()):
        out[t:] = value
    return out


def act_arrays(rng, num: int, left: dict[int, float], right: dict[int, float]) -> dict:
    """qpos/qvel/effort/action of an ALOHA episode whose grippers (channels 6, 13)
    follow `left` and `right` (see gripper_steps); the joints wander."""
    action = rng.normal(0, 0.3, (num, 14))
    action[:, 6] = gripper_steps(num, left)
    action[:, 13] = gripper_steps(num, right)
    qpos = action + rng.normal(0, 0.01, (num, 14))
    return {"qpos": qpos, "qvel": rng.normal(0, 0.1, (num, 14)),
            "effort": rng.normal(0, 1.0, (num, 14)), "action": action}


def act_frames(num: int, height: int, width: int, blue: int) -> np.ndarray:
    """Frames a person can check: red 200, green counts the steps, blue per camera."""
    img = np.zeros((num, height, width, 3), np.uint8)
    img[..., 0] = 200
    img[..., 1] = (np.arange(num) * 8 % 256)[:, None, None]
    img[..., 2] = blue
    return img


def write_act_episode(path, arrays: dict, images: dict[str, np.ndarray], *, sim: bool = True,
                      compress: bool = False, with_effort: bool = True) -> None:
    import tensorflow as tf

    with h5py.File(path, "w") as root:
        root.attrs["sim"] = sim
        if compress:
            root.attrs["compress"] = True
        obs = root.create_group("observations")
        for name in ("qpos", "qvel") + (("effort",) if with_effort else ()):
            obs.create_dataset(name, data=arrays[name])
        root.create_dataset("action", data=arrays["action"])
        group = obs.create_group("images")
        if not compress:
            for cam, frames in images.items():
                group.create_dataset(cam, data=frames)
            return
        encoded = {cam: [tf.io.encode_jpeg(f[..., ::-1], quality=95).numpy() for f in frames]
                   for cam, frames in images.items()}
        lengths = np.array([[len(b) for b in enc] for enc in encoded.values()])
        padded = int(lengths.max())
        for cam, enc in encoded.items():
            rows = np.zeros((len(enc), padded), np.uint8)
            for i, data in enumerate(enc):
                rows[i, :len(data)] = np.frombuffer(data, np.uint8)
            group.create_dataset(cam, data=rows, chunks=(1, padded))
        root.create_dataset("compress_len", data=lengths)


RLBENCH_CAMERAS = ("left_shoulder", "right_shoulder", "overhead", "wrist", "front")


@dataclasses.dataclass
class Observation:
    """The attributes of rlbench.backend.observation.Observation the builder reads
    (None where not recorded, as in RLBench)."""

    joint_positions: np.ndarray | None = None
    joint_velocities: np.ndarray | None = None
    gripper_open: float | None = None
    gripper_pose: np.ndarray | None = None
    gripper_joint_positions: np.ndarray | None = None
    task_low_dim_state: np.ndarray | None = None
    left_shoulder_rgb: np.ndarray | None = None
    right_shoulder_rgb: np.ndarray | None = None
    overhead_rgb: np.ndarray | None = None
    wrist_rgb: np.ndarray | None = None
    front_rgb: np.ndarray | None = None


def rlbench_observations(rng, num: int, gripper: dict[int, float], state_dim: int,
                         images: dict[str, np.ndarray] | None = None) -> list[Observation]:
    """A demo whose gripper_open follows `gripper` ({t: value}, open before), with
    quaternions of both signs (RLBench's get_pose does not fix the sign)."""
    opens = gripper_steps(num, gripper)
    quats = rng.normal(size=(num, 4))
    quats /= np.linalg.norm(quats, axis=1, keepdims=True)
    out = []
    for t in range(num):
        obs = Observation(
            joint_positions=rng.normal(size=7), joint_velocities=rng.normal(size=7),
            gripper_open=float(opens[t]),
            gripper_pose=np.concatenate([rng.normal(0, 0.2, 3), quats[t]]),
            gripper_joint_positions=np.full(2, 0.04 * opens[t]),
            task_low_dim_state=rng.normal(size=state_dim))
        for cam, frames in (images or {}).items():
            setattr(obs, f"{cam}_rgb", frames[t])
        out.append(obs)
    return out


def write_rlbench_episode(root, task: str, variation: int, index: int,
                          observations: list, descriptions: list[str] | None,
                          images: dict[str, np.ndarray]) -> str:
    """One stored demo in RLBench's layout; returns its episode directory."""
    episode = os.path.join(root, task, f"variation{variation}", "episodes", f"episode{index}")
    os.makedirs(episode, exist_ok=True)
    stored = [dataclasses.replace(o, **{f"{c}_rgb": None for c in RLBENCH_CAMERAS})
              for o in observations]
    with open(os.path.join(episode, "low_dim_obs.pkl"), "wb") as f:
        pickle.dump(stored, f)
    if descriptions is not None:
        with open(os.path.join(episode, "variation_descriptions.pkl"), "wb") as f:
            pickle.dump(descriptions, f)
    for cam, frames in images.items():
        os.makedirs(os.path.join(episode, f"{cam}_rgb"), exist_ok=True)
        for n, frame in enumerate(frames):
            with open(os.path.join(episode, f"{cam}_rgb", f"{n}.png"), "wb") as f:
                f.write(encode_png(frame))
    return episode
