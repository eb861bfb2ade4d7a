"""ALOHA teleoperation / ACT sim episodes (ACT HDF5 layout) as RLDS episodes with skills.

    atomskill build-data aloha_hdf5 --files=DIR --instruction="transfer the cube" --out=DIR

    from data_builders.aloha_hdf5.aloha_hdf5_dataset_builder import build_aloha_hdf5
    report = build_aloha_hdf5("sim_transfer_cube/", "out/", instruction="transfer the cube")

One episode per `episode_<i>.hdf5` (layout in `act_hdf5`): task = the directory's name,
layout = i, the instruction from the caller (the files hold none). proprio = qpos [14];
state = qvel, then effort when every readable file has it ([28], else [14]); `action` =
`action_abs` = the file's absolute joint targets; images of the chosen cameras, resized
to `image_size` (default: the files' own, 480x640 on ALOHA). ACT files record no reward
or outcome: every episode counts as successful (reward 1 at its last step), as
demonstrations are. Skills are cut where either gripper command (channels 6 and 13,
0 closed .. 1 open) changes (embodiment `aloha`). A file with a missing, mis-shaped,
non-finite or unreadable field, or that cannot be opened, is skipped with a message
naming it and the field; the others are written.
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
from data_builders.aloha_hdf5 import act_hdf5

EMBODIMENT = "aloha"
OPTIONS_FILE = "build_options.json"
FALLBACK_IMAGE_SIZE = (480, 640)  # ALOHA's cameras; used only when no file can be read


@dataclasses.dataclass(eq=False)
class AlohaHdf5Config(tfds.core.BuilderConfig):
    files: tuple[str, ...] = ()
    file_bytes: tuple[int, ...] = ()  # with the paths: a changed source is another build
    instruction: str = ""
    cameras: tuple[str, ...] = ()
    image_size: tuple[int, int] = FALLBACK_IMAGE_SIZE
    with_effort: bool = False
    annotator: str = "rule"
    annotator_options: dict = dataclasses.field(default_factory=dict)
    show_progress: bool = True

    def options(self) -> dict[str, Any]:
        return episode_builder.config_options(self)


class AlohaHdf5(episode_builder.RldsEpisodeBuilder):
    """ALOHA bimanual episodes (ACT HDF5 layout) with atomic-skill annotations."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release: qpos, qvel (+effort), images, skills."}
    BUILDER_CONFIGS: list = []  # made per build (see build_aloha_hdf5)

    def episode_spec(self) -> rlds_schema.EpisodeSpec:
        cfg = self.builder_config
        return rlds_schema.EpisodeSpec(
            action_dim=act_hdf5.JOINT_DIM, proprio_dim=act_hdf5.JOINT_DIM,
            state_dim=act_hdf5.JOINT_DIM * (2 if cfg.with_effort else 1),
            cameras=tuple(cfg.cameras), image_size=tuple(cfg.image_size))

    def generate_episodes(self):
        from tqdm import tqdm

        from atomskill_jax.models import sentence_encoder
        from atomskill_jax.skills import annotate

        cfg = self.builder_config
        embedding = np.asarray(sentence_encoder.embed_texts_cached([cfg.instruction])[0])
        annotator = annotate.make_annotator(cfg.annotator, **dict(cfg.annotator_options))
        progress = tqdm(total=len(cfg.files), desc="episodes", unit="ep",
                        disable=not cfg.show_progress)
        for path in cfg.files:
            episode_id = f"{act_hdf5.task_name(path)}/episode_{act_hdf5.episode_index(path)}"
            yield episode_id, lambda p=path, e=episode_id: self._episode(p, e, embedding,
                                                                        annotator)
            progress.update(1)
        progress.close()

    def _episode(self, path, episode_id, embedding, annotator):
        import h5py

        from atomskill_jax.skills import annotate

        cfg = self.builder_config
        try:
            handle = h5py.File(path, "r")
        except Exception as err:  # noqa: BLE001 - truncated or not HDF5 at all
            raise OSError(f"{path}: cannot be read as HDF5 ({type(err).__name__}: {err})") from None
        with handle:
            info = act_hdf5.read_file_info(handle, path)
            arrays = act_hdf5.read_episode(
                handle, info, episode_id, cameras=tuple(cfg.cameras),
                with_effort=cfg.with_effort, image_size=tuple(cfg.image_size))
        num = len(arrays["action"])
        action = arrays["action"]
        proprio = arrays["qpos"]
        images = {cam: arrays[f"image_{cam}"] for cam in cfg.cameras}
        skills = annotate.annotate_arrays(
            action, action, proprio, EMBODIMENT, annotator, episode_id=episode_id,
            task=info.task, instruction=cfg.instruction, frames=images or None)
        state = np.concatenate([arrays["qvel"]] + ([arrays["effort"]] if cfg.with_effort
                                                   else []), axis=1)
        last = np.arange(num) == num - 1
        steps = {
            "observation": {"proprio": proprio, "state": state,
                            **{f"image_{cam}": img for cam, img in images.items()}},
            "action": action,
            "action_abs": action,
            "reward": last.astype(np.float32),
            "discount": np.ones(num, np.float32),
            "is_first": np.arange(num) == 0,
            "is_last": last,
            "is_terminal": last,
            "language_instruction": [cfg.instruction] * num,
            "language_embedding": np.repeat(embedding[None], num, axis=0),
            **skills.fields,
        }
        metadata = {
            "episode_id": episode_id,
            "task": info.task,
            "layout": info.index,
            "source_file": path,
            "success": True,
            "builder_version": f"{self.name}:{self.VERSION}",
            **skills.metadata,
        }
        return {"steps": steps, "episode_metadata": metadata}


def find_files(files_or_dir) -> tuple[str, ...]:
    """episode_<i>.hdf5 files from directories (not recursive), files, a comma-separated
    string of them or a sequence; absolute paths, by directory then episode index."""
    items = ([p for p in files_or_dir.split(",") if p] if isinstance(files_or_dir, str)
             else [str(p) for p in files_or_dir])
    found = []
    for item in items:
        if os.path.isdir(item):
            hits = glob.glob(os.path.join(item, "episode_*.hdf5"))
            if not hits:
                raise FileNotFoundError(f"{item}: no episode_<i>.hdf5 files in this directory")
            found += hits
        elif os.path.isfile(item):
            act_hdf5.episode_index(item)  # a clear error for a wrongly named file
            found.append(item)
        else:
            raise FileNotFoundError(f"{item}: no such file or directory")
    if not found:
        raise FileNotFoundError("no ALOHA episode files given")
    paths = sorted({os.path.abspath(p) for p in found},
                   key=lambda p: (os.path.dirname(p), act_hdf5.episode_index(p)))
    ids: dict[tuple[str, int], str] = {}
    for path in paths:  # episode ids are <directory name>/episode_<i>
        key = (act_hdf5.task_name(path), act_hdf5.episode_index(path))
        other = ids.setdefault(key, path)
        if other != path:
            raise ValueError(f"{other} and {path} would both be episode {key[0]}/episode_"
                             f"{key[1]}; build the two directories separately")
    return tuple(paths)


@dataclasses.dataclass
class _Survey:
    """What the readable files hold (a cheap first pass: attributes and shapes)."""

    infos: list
    native_size: tuple[int, int] | None


def _survey(paths: Sequence[str], cameras: tuple[str, ...] | None) -> _Survey:
    import h5py

    infos, size = [], None
    for path in paths:
        try:
            with h5py.File(path, "r") as handle:
                info = act_hdf5.read_file_info(handle, path)
                chosen = info.cameras if cameras is None else cameras
                if size is None and chosen and chosen[0] in info.cameras:
                    size = act_hdf5.native_image_size(handle, info, chosen[0])
        except Exception:  # noqa: BLE001 - reported, naming the file, when the build reads it
            continue
        infos.append(info)
    return _Survey(infos=infos, native_size=size)


def _parse_cameras(cameras) -> tuple[str, ...] | None:
    if cameras is None or cameras == "":
        return None  # the first readable file's
    if isinstance(cameras, str):
        cameras = () if cameras == "none" else tuple(c for c in cameras.split(",") if c)
    cameras = tuple(cameras)
    for cam in cameras:
        if not re.fullmatch(r"[A-Za-z0-9_]+", cam):
            raise ValueError(f"camera name {cam!r}: letters, digits and _ only "
                             f"(ALOHA's are {', '.join(act_hdf5.KNOWN_CAMERAS)})")
    return cameras


def build_aloha_hdf5(files, out: str, *, instruction: str,
                     cameras: Sequence[str] | str | None = None,
                     image_size: Sequence[int] | None = None, overwrite: bool = False,
                     annotator: str = "rule", annotator_options: dict | None = None,
                     name: str | None = None, show_progress: bool = True) -> dict[str, Any]:
    """Build (or reuse) the RLDS dataset of ALOHA episode files under `out`; returns the
    build report (written, skipped: reason -> episode ids, notes) with `dataset_dir` and
    `reused`.

    files: a directory of episode_<i>.hdf5, files, or a comma-separated string.
    instruction: the task text (required: ACT files hold none). cameras: names, a
    comma-separated string, 'none'/() for no images, None/'' for the first readable
    file's cameras. image_size: (H, W); None: the first camera's own size. An existing
    build with the same options is reused; one with other options is an error unless
    `overwrite`.
    """
    if not isinstance(instruction, str) or not instruction.strip():
        raise ValueError("ALOHA episode files hold no task instruction: give one "
                         "(--instruction='transfer the cube to the other arm')")
    chosen = _parse_cameras(cameras)
    paths = find_files(files)
    survey = _survey(paths, chosen)
    if chosen is None:
        chosen = survey.infos[0].cameras if survey.infos else ()
    available = act_hdf5.order_cameras({c for i in survey.infos for c in i.cameras})
    unknown = [c for c in chosen if survey.infos and c not in available]
    if unknown:
        raise ValueError(f"camera(s) {', '.join(unknown)} in none of the files; they have: "
                         f"{', '.join(available) or 'no images'}")
    size = (tuple(int(s) for s in image_size) if image_size
            else survey.native_size or FALLBACK_IMAGE_SIZE)
    with_effort = bool(survey.infos) and all(i.has_effort for i in survey.infos)
    config = AlohaHdf5Config(
        name=name or _config_name(files, paths), description="ALOHA episodes",
        files=paths, file_bytes=tuple(os.path.getsize(p) for p in paths),
        instruction=instruction.strip(), cameras=tuple(chosen), image_size=size,
        with_effort=with_effort, annotator=annotator,
        annotator_options=dict(annotator_options or {}), show_progress=show_progress)
    sims = [i.sim for i in survey.infos]
    notes = {
        "state": "qvel, effort" if with_effort else
                 "qvel (effort left out: not in every file)",
        "recorded": (f"{sims.count(True)} sim, {sims.count(False)} real, "
                     f"{sims.count(None)} unknown"),
        "success": "not recorded in ACT files: every episode counted successful",
    }
    return _build_or_reuse(config, out, overwrite, notes)


def _config_name(files, paths) -> str:
    if isinstance(files, str) and os.path.isdir(files):
        base = os.path.basename(os.path.normpath(files))
    else:
        base = act_hdf5.task_name(paths[0]) if len({os.path.dirname(p) for p in paths}) == 1 \
            else "custom"
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", base).lower() or "custom"


def _build_or_reuse(config, out: str, overwrite: bool, notes: dict) -> dict[str, Any]:
    return episode_builder.build_or_reuse(AlohaHdf5, config, out, overwrite=overwrite, notes=notes,
                                          options_file=OPTIONS_FILE)
