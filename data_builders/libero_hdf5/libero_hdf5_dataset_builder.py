"""LIBERO demonstration files (robomimic HDF5) as RLDS episodes with atomic skills.

    atomskill build-data libero_hdf5 --files=DIR_OR_FILES --out=DIR

    from data_builders.libero_hdf5.libero_hdf5_dataset_builder import build_libero
    report = build_libero("libero_spatial/", "out/", cameras=("agentview",))

One episode per `data/demo_<i>` of each file: task = the file name without `_demo.hdf5`,
layout = the demo index i, success from `dones` / `rewards` (LIBERO keeps successful
demos only, so a file without them counts as successful). Observations, `action` and
`action_abs` follow `atomskill_jax.envs.libero` (images flipped vertically from the
OpenGL convention unless the file says 'opencv'; proprio = ee xyz, ee axis-angle,
2 finger positions; state = 7 joints, 2 fingers, ee pose; action_abs = the OSC target
pose of the delta). Skills are cut where the gripper command (action[6]: -1 open,
+1 close) changes (embodiment `libero_panda`). A demo with a missing, mis-shaped or
non-finite field is skipped with a message naming the file, demo and field; a file
that cannot be opened loses its demos only.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
from typing import Any, Sequence

import numpy as np
import tensorflow_datasets as tfds

from atomskill_jax.data import episode_builder, rlds_schema
from atomskill_jax.envs import libero
from atomskill_jax.skills.embodiments import get_embodiment
from data_builders.libero_hdf5 import hdf5_demos

EMBODIMENT = "libero_panda"
DEFAULT_CAMERAS = libero.CAMERAS
OPTIONS_FILE = "build_options.json"
# The registered spec cuts at action[6]; ee_position_channels lets motion
# descriptions (rule annotator) use the ee xyz at proprio[0:3].
_GRIPPER = dataclasses.replace(get_embodiment(EMBODIMENT), ee_position_channels=(0, 1, 2))


@dataclasses.dataclass(eq=False)
class LiberoHdf5Config(tfds.core.BuilderConfig):
    files: tuple[str, ...] = ()
    file_bytes: tuple[int, ...] = ()  # with the paths: a changed source is another build
    cameras: tuple[str, ...] = DEFAULT_CAMERAS
    image_size: tuple[int, int] = (128, 128)
    annotator: str = "rule"
    annotator_options: dict = dataclasses.field(default_factory=dict)
    show_progress: bool = True

    def options(self) -> dict[str, Any]:
        return episode_builder.config_options(self)


class LiberoHdf5(episode_builder.RldsEpisodeBuilder):
    """LIBERO human demonstrations with atomic-skill annotations."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release: proprio, robot state, images, skills."}
    BUILDER_CONFIGS: list = []  # made per build (see build_libero)

    def episode_spec(self) -> rlds_schema.EpisodeSpec:
        cfg = self.builder_config
        return rlds_schema.EpisodeSpec(
            action_dim=libero.ACTION_DIM, proprio_dim=libero.PROPRIO_DIM,
            state_dim=libero.STATE_DIM, cameras=tuple(cfg.cameras),
            image_size=tuple(cfg.image_size))

    def generate_episodes(self):
        import h5py
        from tqdm import tqdm

        from atomskill_jax.models import sentence_encoder
        from atomskill_jax.skills import annotate

        cfg = self.builder_config
        infos, broken = {}, {}
        for path in cfg.files:  # a first, cheap pass: instructions to embed at once
            try:
                with h5py.File(path, "r") as handle:
                    infos[path] = hdf5_demos.read_file_info(handle, path)
            except ValueError as err:  # read_file_info's, naming the file and attribute
                broken[path] = err
            except Exception as err:  # noqa: BLE001 - one unreadable file loses only its demos
                broken[path] = OSError(f"{path}: cannot be read as HDF5 "
                                       f"({type(err).__name__}: {err})")
        texts = sorted({i.instruction for i in infos.values()})
        embeddings = dict(zip(texts, sentence_encoder.embed_texts_cached(texts))) if texts else {}
        annotator = annotate.make_annotator(cfg.annotator, **dict(cfg.annotator_options))
        progress = tqdm(total=sum(len(i.demos) for i in infos.values()), desc="demos",
                        unit="ep", disable=not cfg.show_progress)
        for path in cfg.files:
            task = hdf5_demos.task_name(path)
            if path in broken:
                yield f"{task}/*", _raiser(broken[path])  # the base logs and counts it
                continue
            info = infos[path]
            with h5py.File(path, "r") as handle:
                for index, key in info.demos:
                    episode_id = f"{task}/{key}"
                    yield episode_id, lambda h=handle, f=info, k=key, i=index, e=episode_id: (
                        self._episode(h, f, k, i, e, embeddings[f.instruction], annotator))
                    progress.update(1)
        progress.close()

    def _episode(self, handle, info, key, index, episode_id, embedding, annotator):
        from atomskill_jax.skills import annotate

        cfg = self.builder_config
        demo = hdf5_demos.read_demo(handle, info, key, episode_id, tuple(cfg.cameras))
        num = len(demo["actions"])
        action = demo["actions"].astype(np.float32)
        ee = demo["ee_states"]
        images = {cam: self._image(demo[f"image_{cam}"], info, key, cam, episode_id)
                  for cam in cfg.cameras}
        proprio = libero.proprio_from(ee, demo["gripper_states"])
        action_abs = libero.absolute_actions(ee, action)
        success = _success(demo)
        skills = annotate.annotate_arrays(
            action, action_abs, proprio, _GRIPPER, annotator, episode_id=episode_id,
            task=info.task, instruction=info.instruction, frames=images or None)
        reward = (demo["rewards"].astype(np.float32) if "rewards" in demo
                  else (np.arange(num) == num - 1).astype(np.float32) * success)
        last = np.arange(num) == num - 1
        observation = {"proprio": proprio,
                       "state": libero.state_from(demo["joint_states"], demo["gripper_states"], ee),
                       **{f"image_{cam}": img for cam, img in images.items()}}
        steps = {
            "observation": observation,
            "action": action,
            "action_abs": action_abs,
            "reward": reward,
            "discount": np.ones(num, np.float32),
            "is_first": np.arange(num) == 0,
            "is_last": last,
            "is_terminal": last & success,
            "language_instruction": [info.instruction] * num,
            "language_embedding": np.repeat(np.asarray(embedding)[None], num, axis=0),
            **skills.fields,
        }
        metadata = {
            "episode_id": episode_id,
            "task": info.task,
            "layout": index,
            "source_file": info.path,
            "success": success,
            "builder_version": f"{self.name}:{self.VERSION}",
            **skills.metadata,
        }
        return {"steps": steps, "episode_metadata": metadata}

    def _image(self, frames, info, key, cam, episode_id):
        """Flipped to the normal orientation, resized to the dataset's size."""
        if info.flip_images:
            frames = libero.flip_image(frames)
        size = tuple(self.builder_config.image_size)
        if frames.shape[1:3] != size:
            frames = _resize(frames, size)
        return frames


def _resize(frames: np.ndarray, size) -> np.ndarray:
    """uint8 [T, h, w, 3] -> [T, H, W, 3], bilinear antialiased (as
    data.frame_transforms.resize_image, batched over time)."""
    from atomskill_jax.data.tf_setup import tf

    out = tf.image.resize(tf.cast(frames, tf.float32), list(size), antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(out), 0, 255), tf.uint8).numpy()


def _success(demo) -> bool:
    if "dones" in demo:
        return bool(demo["dones"][-1])
    if "rewards" in demo:
        return bool(demo["rewards"][-1] > 0)
    return True


def _raiser(err: Exception):
    def raise_it():
        raise err
    return raise_it


def find_files(files_or_dir) -> tuple[str, ...]:
    """HDF5 files from a directory (searched recursively), a file, a comma-separated
    string of them, or a sequence; sorted absolute paths."""
    items = ([p for p in files_or_dir.split(",") if p] if isinstance(files_or_dir, str)
             else [str(p) for p in files_or_dir])
    found = []
    for item in items:
        if os.path.isdir(item):
            hits = sorted(glob.glob(os.path.join(item, "**", "*.hdf5"), recursive=True))
            if not hits:
                raise FileNotFoundError(f"{item}: no *.hdf5 files in this directory")
            found += hits
        elif os.path.isfile(item):
            found.append(item)
        else:
            raise FileNotFoundError(f"{item}: no such file or directory")
    if not found:
        raise FileNotFoundError("no LIBERO files given")
    paths = sorted({os.path.abspath(p) for p in found})
    tasks: dict[str, str] = {}
    for path in paths:  # episode ids are task/demo_i: one file per task
        other = tasks.setdefault(hdf5_demos.task_name(path), path)
        if other != path:
            raise ValueError(f"{other} and {path} hold the same task "
                             f"{hdf5_demos.task_name(path)!r}; build them separately")
    return tuple(paths)


def _native_image_size(paths: Sequence[str]) -> tuple[int, int]:
    import h5py

    for path in paths:
        try:
            with h5py.File(path, "r") as handle:
                size = hdf5_demos.read_file_info(handle, path).image_size
        except Exception:  # noqa: BLE001 - reported when the build reads it
            continue
        if size is not None:
            return size
    return (128, 128)


def _config_name(files_or_dir, paths) -> str:
    if isinstance(files_or_dir, str) and os.path.isdir(files_or_dir):
        base = os.path.basename(os.path.normpath(files_or_dir))
    elif len(paths) == 1:
        base = hdf5_demos.task_name(paths[0])
    else:
        base = "custom"
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", base).lower() or "custom"


def build_libero(files_or_dir, out: str, *, cameras: Sequence[str] | str = DEFAULT_CAMERAS,
                 image_size: Sequence[int] | None = None, overwrite: bool = False,
                 annotator: str = "rule", annotator_options: dict | None = None,
                 name: str | None = None, show_progress: bool = True) -> dict[str, Any]:
    """Build (or reuse) the RLDS dataset of LIBERO files under `out`; returns the build
    report (written, skipped: reason -> episode ids, notes) with `dataset_dir`.

    cameras: subset of ('agentview', 'eye_in_hand'), a comma-separated string, or ()
    / 'none' for no images. image_size: (H, W) to resize to; None: the size of the
    first file's images (LIBERO's 128x128; other sizes are resized to it). An
    existing build with the same options is reused; one with other options is an
    error unless `overwrite`. The report says `reused` and where (`dataset_dir`).
    """
    if isinstance(cameras, str):
        cameras = () if cameras in ("", "none") else tuple(c for c in cameras.split(",") if c)
    for cam in cameras:
        if cam not in libero.CAMERAS:
            raise ValueError(f"unknown LIBERO camera {cam!r}; cameras: {libero.CAMERAS}")
    paths = find_files(files_or_dir)
    size = tuple(int(s) for s in image_size) if image_size else _native_image_size(paths)
    config = LiberoHdf5Config(
        name=name or _config_name(files_or_dir, paths), description="LIBERO demonstrations",
        files=paths, file_bytes=tuple(os.path.getsize(p) for p in paths),
        cameras=tuple(cameras), image_size=size, annotator=annotator,
        annotator_options=dict(annotator_options or {}), show_progress=show_progress)
    images = ("flipped vertically from the OpenGL convention (files marked 'opencv' kept)"
              if cameras else "none")
    return episode_builder.build_or_reuse(LiberoHdf5, config, out, overwrite=overwrite,
                                          notes={"images": images}, options_file=OPTIONS_FILE,
                                          overwrite_hint="overwrite=True")
