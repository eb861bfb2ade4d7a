"""Reading ALOHA episode files in the ACT HDF5 layout, one checked episode per file.

    episode_<i>.hdf5
      attrs['sim']                   bool: recorded in simulation (ACT's scripted/sim data)
      attrs['compress']              optional bool: images are JPEG (real-robot recordings)
      /action                        float [T, 14]  absolute joint targets (per arm 6 joints
                                                    + normalised gripper, 0 closed .. 1 open)
      /observations/qpos             float [T, 14]  same layout as the action
      /observations/qvel             float [T, 14]
      /observations/effort           float [T, 14]  real-robot files only
      /observations/images/<camera>  uint8 [T, H, W, 3] (480x640; cam_high, cam_low,
                                     cam_left_wrist, cam_right_wrist on the real ALOHA,
                                     'top' in ACT's sim episodes), or with
                                     compress: uint8 [T, N], one zero-padded JPEG per row
      /compress_len                  with compress: [cameras, T] byte counts (not needed:
                                     a JPEG ends with FF D9, so the zero padding is stripped;
                                     its rows follow the recorder's camera order, which the
                                     file does not store)

Compressed frames were written by ALOHA's recorder with OpenCV (`cv2.imencode` of the
RGB array, which OpenCV takes for BGR), so a standard decoder returns red and blue
swapped; they are swapped back here, giving the arrays the recorder held (what
`cv2.imdecode` returns in ACT's training code).

Every problem with a file raises `rlds_schema.EpisodeError` naming the episode, the HDF5
path of the field and the file, so the builder skips that file alone and reports it.
"""

from __future__ import annotations

import dataclasses
import os
import re

import numpy as np

from atomskill_jax.data.rlds_schema import EpisodeError

JOINT_DIM = 14  # two arms x (6 joints + gripper)
IMAGES = "observations/images"
# The four ALOHA cameras, in the order datasets list them; other names (e.g. a mobile
# base's) are kept after these, sorted.
KNOWN_CAMERAS = ("cam_high", "cam_low", "cam_left_wrist", "cam_right_wrist")
_EPISODE_FILE = re.compile(r"^episode_(\d+)\.hdf5$")
_READ_CHUNK = 64  # frames read (and resized) at once: a 480x640 episode never sits whole


@dataclasses.dataclass
class FileInfo:
    path: str
    index: int  # the i of episode_<i>.hdf5
    task: str  # the directory's name
    sim: bool | None  # None: the file does not say
    compressed: bool
    cameras: tuple[str, ...]  # in the file, in KNOWN_CAMERAS order then sorted
    has_effort: bool


def episode_index(path: str) -> int:
    match = _EPISODE_FILE.match(os.path.basename(path))
    if match is None:
        raise ValueError(f"{path}: not named episode_<i>.hdf5 (the ACT layout)")
    return int(match.group(1))


def task_name(path: str) -> str:
    """The name of the directory holding the episode file."""
    return os.path.basename(os.path.dirname(os.path.abspath(path)))


def order_cameras(names) -> tuple[str, ...]:
    names = set(names)
    return (tuple(c for c in KNOWN_CAMERAS if c in names)
            + tuple(sorted(names - set(KNOWN_CAMERAS))))


def read_file_info(handle, path: str) -> FileInfo:
    """The file-level facts; raises ValueError naming the file and what is wrong."""
    if "action" not in handle or "observations" not in handle:
        missing = [k for k in ("action", "observations") if k not in handle]
        raise ValueError(f"{path}: {', '.join('/' + k for k in missing)} missing (not an "
                         "ACT/ALOHA episode file)")
    try:
        sim = handle.attrs.get("sim")
        images = handle.get(IMAGES)
        cameras = order_cameras(images.keys()) if images is not None else ()
        compressed = bool(handle.attrs.get("compress", False)) or any(
            len(images[c].shape) == 2 for c in cameras)
    except Exception as err:  # noqa: BLE001 - e.g. a camera that is a group, a bad attribute
        raise ValueError(f"{path}: /{IMAGES} or the root attributes are damaged "
                         f"({type(err).__name__}: {err})") from None
    return FileInfo(path=path, index=episode_index(path), task=task_name(path),
                    sim=None if sim is None else bool(sim), compressed=compressed,
                    cameras=cameras, has_effort="effort" in handle["observations"])


def read_episode(handle, info: FileInfo, episode_id: str, *, cameras: tuple[str, ...],
                 with_effort: bool, image_size: tuple[int, int] | None) -> dict[str, np.ndarray]:
    """The checked arrays of one file: qpos, qvel, (effort), action, image_<camera>
    (resized to `image_size` unless None); equal lengths, shapes, finite numbers."""

    def fail(field: str, reason: str):
        return EpisodeError(episode_id, f"/{field}", f"{reason} (in {info.path})")

    def dataset(field: str):
        try:
            return handle[field]
        except KeyError:
            raise fail(field, "missing") from None

    def numbers(field: str) -> np.ndarray:
        try:
            arr = np.asarray(dataset(field)[()])
        except EpisodeError:
            raise
        except Exception as err:  # noqa: BLE001 - a damaged dataset reads as any h5py error
            raise fail(field, f"unreadable ({type(err).__name__}: {err})") from None
        if arr.ndim != 2 or arr.shape[1] != JOINT_DIM:
            raise fail(field, f"expected shape [T, {JOINT_DIM}], got {list(arr.shape)}")
        if not np.issubdtype(arr.dtype, np.number):
            raise fail(field, f"expected numbers, got dtype {arr.dtype}")
        bad = ~np.isfinite(arr.astype(np.float64))
        if bad.any():
            raise fail(field, f"{int(bad.sum())} non-finite values (NaN or inf), first at "
                              f"step {int(np.argwhere(bad)[0][0])}")
        return arr.astype(np.float32)

    out = {"action": numbers("action")}
    num = len(out["action"])
    if num == 0:
        raise fail("action", "empty (0 steps)")
    names = ["qpos", "qvel"] + (["effort"] if with_effort else [])
    for name in names:
        out[name] = numbers(f"observations/{name}")
        if len(out[name]) != num:
            raise fail(f"observations/{name}", f"{len(out[name])} steps, but /action has {num}")
    for cam in cameras:
        field = f"{IMAGES}/{cam}"
        if cam not in info.cameras:
            have = ", ".join(info.cameras) or "none"
            raise fail(field, f"missing (this file has cameras: {have})")
        out[f"image_{cam}"] = _frames(dataset(field), num, image_size,
                                      lambda reason, f=field: fail(f, reason))
    return out


def _frames(ds, num: int, size, fail) -> np.ndarray:
    """[T, H, W, 3] uint8 frames of one camera dataset, read and resized in chunks."""
    if ds.dtype != np.uint8:
        raise fail(f"expected dtype uint8, got {ds.dtype}")
    if ds.shape[0] != num:
        raise fail(f"{ds.shape[0]} steps, but /action has {num}")
    compressed = len(ds.shape) == 2
    if not compressed and (len(ds.shape) != 4 or ds.shape[3] != 3):
        raise fail(f"expected shape [T, H, W, 3] (or [T, N] JPEG bytes), got {list(ds.shape)}")
    chunks = []
    for start in range(0, num, _READ_CHUNK):
        stop = min(start + _READ_CHUNK, num)
        try:
            block = ds[start:stop]
        except Exception as err:  # noqa: BLE001 - truncated or damaged chunks
            raise fail(f"unreadable at steps {start}-{stop - 1} "
                       f"({type(err).__name__}: {err})") from None
        if compressed:
            block = _decode_jpegs(block, start, fail)
        if size is not None and block.shape[1:3] != tuple(size):
            block = resize_frames(block, size)
        chunks.append(block)
    return np.concatenate(chunks)


def _decode_jpegs(rows: np.ndarray, first_step: int, fail) -> np.ndarray:
    from atomskill_jax.data.tf_setup import tf

    frames = []
    for i, row in enumerate(rows):
        data = row.tobytes().rstrip(b"\0")
        try:
            image = tf.io.decode_jpeg(data, channels=3).numpy()
        except Exception as err:  # noqa: BLE001 - TensorFlow raises InvalidArgumentError
            raise fail(f"step {first_step + i}: not a JPEG image ({type(err).__name__}: "
                       f"{str(err).splitlines()[0] if str(err) else ''})") from None
        if frames and image.shape != frames[0].shape:
            raise fail(f"step {first_step + i}: a {image.shape[1]}x{image.shape[0]} image "
                       f"after {frames[0].shape[1]}x{frames[0].shape[0]} ones")
        frames.append(image[..., ::-1])  # OpenCV's BGR encoding of the RGB array
    return np.stack(frames)


def native_image_size(handle, info: FileInfo, camera: str) -> tuple[int, int]:
    """(H, W) of one camera's frames (decoding the first if compressed)."""
    ds = handle[f"{IMAGES}/{camera}"]
    if len(ds.shape) == 4:
        return int(ds.shape[1]), int(ds.shape[2])
    first = _decode_jpegs(ds[0:1], 0, lambda reason: ValueError(f"{info.path}: {reason}"))
    return int(first.shape[1]), int(first.shape[2])


def resize_frames(frames: np.ndarray, size) -> np.ndarray:
    """uint8 [T, h, w, 3] -> [T, H, W, 3], bilinear antialiased, as
    `data.frame_transforms.resize_image` does per image (same as libero's `_resize`)."""
    from atomskill_jax.data.tf_setup import tf

    out = tf.image.resize(tf.cast(frames, tf.float32), [int(size[0]), int(size[1])],
                          antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(out), 0, 255), tf.uint8).numpy()
