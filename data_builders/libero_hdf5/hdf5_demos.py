"""Reading LIBERO demonstration files (robomimic HDF5 layout), one checked demo at a time.

    data.attrs['problem_info']        JSON; 'language_instruction' is the task text
    data.attrs['macros_image_convention']  'opengl' (default, images upside down) or 'opencv'
    data/demo_<i>/actions             float [T, 7]   OSC_POSE delta
    data/demo_<i>/obs/ee_states       float [T, 6]   ee xyz + axis-angle
    data/demo_<i>/obs/gripper_states  float [T, 2]   finger joint positions
    data/demo_<i>/obs/joint_states    float [T, 7]   arm joint positions
    data/demo_<i>/obs/agentview_rgb, eye_in_hand_rgb  uint8 [T, H, W, 3]
    data/demo_<i>/rewards, dones      optional [T]

Every problem raises `rlds_schema.EpisodeError` naming the demo and the HDF5 path of the
field (`data/demo_3/obs/ee_states`) with the file in the reason, so the builder base skips
that demo alone and reports it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re

import numpy as np

from atomskill_jax.data.rlds_schema import EpisodeError
from atomskill_jax.envs import libero

_DEMO_KEY = re.compile(r"^demo_(\d+)$")
# obs field -> trailing shape (None: any size there)
_OBS_FIELDS = {"ee_states": (6,), "gripper_states": (2,), "joint_states": (7,)}


def task_name(path: str) -> str:
    """KITCHEN_SCENE3_turn_on_the_stove_demo.hdf5 -> KITCHEN_SCENE3_turn_on_the_stove."""
    stem = os.path.basename(path)
    for suffix in (".hdf5", ".h5"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    return stem[: -len("_demo")] if stem.endswith("_demo") else stem


@dataclasses.dataclass
class FileInfo:
    path: str
    task: str
    instruction: str
    demos: list[tuple[int, str]]  # (index, key), by index
    flip_images: bool
    image_size: tuple[int, int] | None  # of the first demo with images, if any


def read_file_info(handle, path: str) -> FileInfo:
    """The file-level facts; raises ValueError naming the file and attribute at fault."""
    if "data" not in handle:
        raise ValueError(f"{path}: no 'data' group (not a robomimic/LIBERO demo file)")
    data = handle["data"]
    raw = data.attrs.get("problem_info")
    if raw is None:
        raise ValueError(f"{path}: data.attrs['problem_info'] missing (it holds the "
                         "language instruction)")
    try:
        info = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
        instruction = str(info["language_instruction"]).strip()
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: data.attrs['problem_info'] is not JSON with a "
                         f"'language_instruction' ({type(err).__name__}: {err})") from None
    demos = sorted((int(m.group(1)), key) for key in data.keys()
                   if (m := _DEMO_KEY.match(key)))
    if not demos:
        raise ValueError(f"{path}: no data/demo_<i> groups")
    convention = data.attrs.get("macros_image_convention", "opengl")
    convention = convention.decode() if isinstance(convention, bytes) else str(convention)
    size = None
    for _, key in demos:
        obs = data[key].get("obs")
        ds = None if obs is None else obs.get("agentview_rgb", obs.get("eye_in_hand_rgb"))
        if ds is not None and len(ds.shape) == 4:
            size = (int(ds.shape[1]), int(ds.shape[2]))
            break
    return FileInfo(path=path, task=task_name(path), instruction=instruction, demos=demos,
                    flip_images=convention != "opencv", image_size=size)


def read_demo(handle, info: FileInfo, key: str, episode_id: str,
              cameras: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The arrays of one demo, checked: equal lengths, shapes, finite numbers."""
    group = handle["data"][key]

    def fail(field: str, reason: str):
        return EpisodeError(episode_id, f"data/{key}/{field}", f"{reason} (in {info.path})")

    def get(field: str, trailing, dtype=None) -> np.ndarray:
        try:
            node = group[field]
        except KeyError:
            raise fail(field, "missing") from None
        try:
            arr = np.asarray(node[()])
        except Exception as err:  # noqa: BLE001 - a damaged dataset reads as any h5py error
            raise fail(field, f"unreadable ({type(err).__name__}: {err})") from None
        if arr.ndim != 1 + len(trailing) or any(
                want is not None and have != want for have, want in zip(arr.shape[1:], trailing)):
            shown = ", ".join("?" if d is None else str(d) for d in trailing)
            raise fail(field, f"expected shape [T, {shown}], got {list(arr.shape)}")
        if dtype is not None and arr.dtype != dtype:
            raise fail(field, f"expected dtype {np.dtype(dtype).name}, got {arr.dtype}")
        if dtype is None:
            if not np.issubdtype(arr.dtype, np.number):
                raise fail(field, f"expected numbers, got dtype {arr.dtype}")
            bad = ~np.isfinite(arr.astype(np.float64))
            if bad.any():
                raise fail(field, f"{int(bad.sum())} non-finite values (NaN or inf), first "
                                  f"at step {int(np.argwhere(bad)[0][0])}")
        return arr

    out = {"actions": get("actions", (libero.ACTION_DIM,))}
    for name, trailing in _OBS_FIELDS.items():
        out[name] = get(f"obs/{name}", trailing)
    for cam in cameras:
        out[f"image_{cam}"] = get(f"obs/{cam}_rgb", (None, None, 3), np.uint8)
    for name in ("rewards", "dones"):
        if name in group:
            out[name] = get(name, ())
    num = len(out["actions"])
    if num == 0:
        raise fail("actions", "empty (0 steps)")
    for name, arr in out.items():
        if len(arr) != num:
            field = name if name in ("rewards", "dones") else (
                f"obs/{name[len('image_'):]}_rgb" if name.startswith("image_") else f"obs/{name}")
            raise fail(field, f"{len(arr)} steps, but actions has {num}")
    return out
