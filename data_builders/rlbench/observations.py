"""RLBench demonstrations (sequences of `Observation`) as RLDS step arrays.

Works on anything with the attributes of `rlbench.backend.observation.Observation`
(gripper_pose: xyz + quaternion xyzw; gripper_open: 1 open, 0 closed;
task_low_dim_state; <camera>_rgb images; None where RLBench did not record them), so
it needs neither rlbench nor CoppeliaSim. numpy only.

proprio [8] = gripper pose (xyz, quaternion xyzw) + gripper_open.
state   [S] = task_low_dim_state (object poses etc.), zero-padded to the dataset's S.
action  [8] = action_abs = the *next step's* gripper pose + gripper_open: an absolute
        end-effector target, exactly the vector RLBench's
        MoveArmThenGripper(EndEffectorPoseViaPlanning(), Discrete()) action mode executes;
        the last step targets its own pose (stay).

Why the next step and not the next keyframe (PerAct / C2F-ARM's convention)? Training
here predicts chunks of per-step actions and takes keyposes from the skill annotation
(`keypose` = `action_abs` at the segment's terminal keyframe, cut where gripper_open
changes), which recovers the keyframe target at the skill level; keyframe-only actions
would be constant over a segment and leave nothing for the chunk to predict.
Quaternions are unit length with w >= 0 (as PerAct does): q and -q are the same rotation,
and RLBench's poses flip sign between steps, which would look like jumps to a regressor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from atomskill_jax.data.rlds_schema import EpisodeError

CAMERAS = ("left_shoulder", "right_shoulder", "overhead", "wrist", "front")
POSE_DIM = 7
PROPRIO_DIM = ACTION_DIM = POSE_DIM + 1  # pose + gripper_open
GRIPPER_CHANNEL = 7


def canonical_quaternions(quat: np.ndarray) -> np.ndarray:
    """[..., 4] xyzw -> unit length with w >= 0 (the same rotations)."""
    quat = np.asarray(quat, np.float64)
    quat = quat / np.linalg.norm(quat, axis=-1, keepdims=True)
    return np.where(quat[..., 3:4] < 0, -quat, quat)


def _stacked(observations: Sequence, name: str, episode_id: str, size: int | None,
             *, optional: bool = False) -> np.ndarray | None:
    """One float attribute of every observation as [T, size] (size None: any, but the
    same at every step); None if `optional` and never recorded."""
    values = [getattr(obs, name, None) for obs in observations]
    missing = [t for t, v in enumerate(values) if v is None]
    if missing:
        if optional and len(missing) == len(values):
            return None
        raise EpisodeError(episode_id, name, f"not recorded (None) at step {missing[0]} of "
                           f"{len(values)}; record demos with it in the ObservationConfig")
    rows = []
    for t, value in enumerate(values):
        row = np.asarray(value, np.float64).reshape(-1)
        want = size if size is not None else (len(rows[0]) if rows else len(row))
        if len(row) != want:
            raise EpisodeError(episode_id, name, f"{len(row)} values at step {t}, expected "
                               f"{want}")
        if not np.isfinite(row).all():
            raise EpisodeError(episode_id, name, f"non-finite value (NaN or inf) at step {t}")
        rows.append(row)
    return np.stack(rows)


def low_dim_state_size(observations: Sequence) -> int | None:
    """Length of task_low_dim_state in the first observation (None: not recorded)."""
    value = getattr(observations[0], "task_low_dim_state", None) if observations else None
    return None if value is None else int(np.asarray(value).size)


def camera_frames(observations: Sequence, camera: str, episode_id: str) -> np.ndarray | None:
    """uint8 [T, H, W, 3] from the observations' `<camera>_rgb` attributes; None when
    they are all None (stored demos keep images as PNG files instead)."""
    name = f"{camera}_rgb"
    values = [getattr(obs, name, None) for obs in observations]
    if all(v is None for v in values):
        return None
    missing = [t for t, v in enumerate(values) if v is None]
    if missing:
        raise EpisodeError(episode_id, name, f"None at step {missing[0]} of {len(values)}")
    frames = [np.asarray(v) for v in values]
    for t, frame in enumerate(frames):
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3 or (
                frame.shape != frames[0].shape):
            raise EpisodeError(episode_id, name, f"step {t}: expected uint8 [H, W, 3] like "
                               f"step 0 {frames[0].shape}, got {frame.dtype} {frame.shape}")
    return np.stack(frames)


def instruction_of(descriptions, episode_id: str) -> str:
    """The first variation description (RLBench lists several phrasings of one task)."""
    if isinstance(descriptions, (str, bytes)) or not isinstance(descriptions, Sequence):
        raise EpisodeError(episode_id, "variation_descriptions",
                           f"expected a list of strings, got {type(descriptions).__name__}")
    if not descriptions or not isinstance(descriptions[0], str) or not descriptions[0].strip():
        raise EpisodeError(episode_id, "variation_descriptions",
                           f"its first entry is not a non-empty string: {descriptions[:1]!r}")
    return descriptions[0].strip()


def demo_arrays(observations: Sequence, *, episode_id: str, cameras: Sequence[str] = (),
                images: Mapping[str, np.ndarray] | None = None,
                state_dim: int | None = None) -> dict[str, np.ndarray]:
    """proprio, action (= action_abs), state (if state_dim) and image_<camera> of one demo.

    images: per camera uint8 [T, H, W, 3] read elsewhere (stored demos' PNGs); cameras
    not in it come from the observations' `<camera>_rgb` attributes.
    """
    num = len(observations)
    if num == 0:
        raise EpisodeError(episode_id, "observations", "empty demo (0 steps)")
    pose = _stacked(observations, "gripper_pose", episode_id, POSE_DIM)
    opened = _stacked(observations, "gripper_open", episode_id, 1)
    norms = np.linalg.norm(pose[:, 3:], axis=1)
    if (norms < 1e-6).any():
        raise EpisodeError(episode_id, "gripper_pose", "zero quaternion at step "
                           f"{int(np.argmax(norms < 1e-6))}")
    pose = np.concatenate([pose[:, :3], canonical_quaternions(pose[:, 3:])], axis=1)
    proprio = np.concatenate([pose, opened], axis=1).astype(np.float32)
    action = np.concatenate([proprio[1:], proprio[-1:]], axis=0)
    out = {"proprio": proprio, "action": action}
    if state_dim is not None:
        state = _stacked(observations, "task_low_dim_state", episode_id, None)
        if state.shape[1] > state_dim:
            raise EpisodeError(episode_id, "task_low_dim_state",
                               f"{state.shape[1]} values, more than the dataset's state size "
                               f"{state_dim} (from other demos); build this task separately")
        out["state"] = np.pad(state, ((0, 0), (0, state_dim - state.shape[1]))).astype(
            np.float32)
    for cam in cameras:
        frames = (images or {}).get(cam)
        if frames is None:
            frames = camera_frames(observations, cam, episode_id)
        if frames is None:
            raise EpisodeError(episode_id, f"{cam}_rgb", "no images (neither in the "
                               "observations nor as PNG files)")
        if len(frames) != num:
            raise EpisodeError(episode_id, f"{cam}_rgb", f"{len(frames)} images for {num} steps")
        out[f"image_{cam}"] = frames
    return out
