"""RLBench stored demonstrations as RLDS episodes with atomic skills.

    atomskill build-data rlbench --files=RLBENCH_ROOT --tasks=open_drawer,stack_blocks --out=DIR

    from data_builders.rlbench.rlbench_dataset_builder import build_rlbench
    report = build_rlbench("rlbench_data/train", "out/", tasks=("open_drawer",))

RLBench's dataset generator writes, per demo,
<root>/<task>/variation<k>/episodes/episode<i>/ (or <task>/all_variations/episodes/...,
with the variation in variation_number.pkl) holding low_dim_obs.pkl (the pickled
rlbench Demo, images cleared), variation_descriptions.pkl (a list of phrasings; older
RLBench kept it beside `episodes/`) and <camera>_rgb/<n>.png. One episode per demo:
task = the task folder, layout = i, instruction = the first variation description;
fields as in `observations` (proprio = gripper pose + open, state = task_low_dim_state,
action = action_abs = the next step's gripper pose + open). The generator keeps only
successful demos, so every episode is successful. Skills are cut where the commanded
gripper_open changes (embodiment `rlbench_panda`).

low_dim_obs.pkl unpickles only with `rlbench` importable (it holds rlbench.demo.Demo and
Observation objects), and importing rlbench needs CoppeliaSim; neither installs here, so
the import happens when a pickle asks for it, and fails with `RLBenchUnavailable` saying
what to install. Pickles run code when loaded: read only demos you trust.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import re
from typing import Any, Sequence

import numpy as np
import tensorflow_datasets as tfds

from atomskill_jax.data import episode_builder, rlds_schema
from atomskill_jax.skills.embodiments import get_embodiment
from data_builders.rlbench import observations as rlobs

EMBODIMENT = "rlbench_panda"
OPTIONS_FILE = "build_options.json"
LOW_DIM_FILE = "low_dim_obs.pkl"
DESCRIPTIONS_FILE = "variation_descriptions.pkl"
VARIATION_NUMBER_FILE = "variation_number.pkl"
DEFAULT_IMAGE_SIZE = (128, 128)  # RLBench's default camera resolution
# The registered spec cuts at action[7]; the ee xyz at proprio[0:3] lets the rule
# annotator describe motion.
_GRIPPER = dataclasses.replace(get_embodiment(EMBODIMENT), ee_position_channels=(0, 1, 2))
_VARIATION_DIR = re.compile(r"^variation(\d+)$")
_EPISODE_DIR = re.compile(r"^episode(\d+)$")


class RLBenchUnavailable(RuntimeError):
    """The demos need the rlbench package (and CoppeliaSim) to be unpickled."""


@dataclasses.dataclass(frozen=True)
class StoredDemo:
    task: str
    variation: int  # -1: unknown (all_variations without variation_number.pkl)
    index: int
    path: str  # the episode directory

    @property
    def episode_id(self) -> str:
        return f"{self.task}/variation{self.variation}/episode{self.index}"


def _episode_dirs(episodes_dir: str) -> list[tuple[int, str]]:
    if not os.path.isdir(episodes_dir):
        return []
    return sorted((int(m.group(1)), os.path.join(episodes_dir, name))
                  for name in os.listdir(episodes_dir) if (m := _EPISODE_DIR.match(name)))


def _variation_number(episode_dir: str) -> int:
    path = os.path.join(episode_dir, VARIATION_NUMBER_FILE)
    try:
        with open(path, "rb") as f:
            return int(pickle.load(f))
    except Exception:  # noqa: BLE001 - absent or unreadable: the variation is unknown
        return -1


def task_dirs(root: str) -> list[str]:
    """Task folders under an RLBench dataset root (those with variation folders)."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{root}: no such directory (an RLBench dataset root holds "
                                "one folder per task)")
    return sorted(name for name in os.listdir(root) if os.path.isdir(os.path.join(root, name))
                  and any(_VARIATION_DIR.match(v) or v == "all_variations"
                          for v in os.listdir(os.path.join(root, name))))


def find_demos(root: str, tasks: Sequence[str] | None = None) -> list[StoredDemo]:
    """The stored demos of `tasks` (all tasks under `root` if None), in a fixed order."""
    available = task_dirs(root)
    chosen = list(tasks) if tasks else available
    unknown = [t for t in chosen if t not in available]
    if unknown:
        raise FileNotFoundError(f"{root}: no stored demos of task(s) {', '.join(unknown)} "
                                f"(tasks here: {', '.join(available) or 'none'})")
    demos = []
    for task in chosen:
        task_dir = os.path.join(root, task)
        for name in sorted(os.listdir(task_dir)):
            if (m := _VARIATION_DIR.match(name)):
                demos += [StoredDemo(task, int(m.group(1)), i, path) for i, path in
                          _episode_dirs(os.path.join(task_dir, name, "episodes"))]
            elif name == "all_variations":
                demos += [StoredDemo(task, _variation_number(path), i, path) for i, path in
                          _episode_dirs(os.path.join(task_dir, name, "episodes"))]
    if not demos:
        raise FileNotFoundError(f"{root}: no <task>/variation<k>/episodes/episode<i> folders "
                                f"for {', '.join(chosen)}")
    return sorted(demos, key=lambda d: (d.task, d.variation, d.index))


def _needs_rlbench(err: Exception) -> bool:
    """Unpickling failed for want of rlbench, PyRep or CoppeliaSim (not bad data)."""
    if isinstance(err, ModuleNotFoundError):
        return (err.name or "").split(".")[0] in ("rlbench", "pyrep")
    if type(err).__module__.split(".")[0] == "pyrep":  # e.g. PyRepError: COPPELIASIM_ROOT
        return True
    return isinstance(err, (ImportError, OSError)) and any(
        k in str(err).lower() for k in ("coppelia", "pyrep"))


def _rlbench_error(err: Exception) -> RLBenchUnavailable:
    return RLBenchUnavailable(
        "reading RLBench demos needs the rlbench package and CoppeliaSim: low_dim_obs.pkl "
        "holds rlbench.demo.Demo objects, which unpickle only when rlbench imports, and "
        "rlbench imports only with PyRep and CoppeliaSim installed (COPPELIASIM_ROOT set; see "
        f"RLBench's README). Install them, or build on a machine that has them ({err})")


def load_observations(demo: StoredDemo) -> list:
    """The observations pickled in the demo's low_dim_obs.pkl."""
    path = os.path.join(demo.path, LOW_DIM_FILE)
    try:
        with open(path, "rb") as f:
            stored = pickle.load(f)
    except FileNotFoundError:
        raise rlds_schema.EpisodeError(demo.episode_id, LOW_DIM_FILE,
                                       f"missing ({path})") from None
    except Exception as err:  # noqa: BLE001 - truncated, not a pickle, or no rlbench
        if _needs_rlbench(err):
            raise _rlbench_error(err) from err
        raise rlds_schema.EpisodeError(demo.episode_id, LOW_DIM_FILE, f"unreadable ({path}: "
                                       f"{type(err).__name__}: {err})") from None
    observations = getattr(stored, "_observations", stored)  # rlbench.demo.Demo or a list
    if not isinstance(observations, Sequence):
        raise rlds_schema.EpisodeError(demo.episode_id, LOW_DIM_FILE, f"holds a "
                                       f"{type(stored).__name__}, not a demo ({path})")
    return list(observations)


def load_descriptions(demo: StoredDemo) -> list:
    """variation_descriptions.pkl of the demo (its folder, else its variation's)."""
    for folder in (demo.path, os.path.dirname(os.path.dirname(demo.path))):
        path = os.path.join(folder, DESCRIPTIONS_FILE)
        if os.path.exists(path):
            try:
                with open(path, "rb") as f:
                    return pickle.load(f)
            except Exception as err:  # noqa: BLE001 - any unpickling failure
                raise rlds_schema.EpisodeError(
                    demo.episode_id, "variation_descriptions",
                    f"unreadable ({path}: {type(err).__name__}: {err})") from None
    raise rlds_schema.EpisodeError(demo.episode_id, "variation_descriptions",
                                   f"{DESCRIPTIONS_FILE} missing in {demo.path} and its "
                                   "variation folder (it holds the instruction)")


def read_png_frames(demo: StoredDemo, camera: str, num: int) -> np.ndarray | None:
    """uint8 [num, H, W, 3] from <episode>/<camera>_rgb/0.png ..; None if the folder is
    absent."""
    from atomskill_jax.data.tf_setup import tf

    folder = os.path.join(demo.path, f"{camera}_rgb")
    if not os.path.isdir(folder):
        return None
    frames = []
    for n in range(num):
        path = os.path.join(folder, f"{n}.png")

        def fail(reason, n=n, path=path):
            return rlds_schema.EpisodeError(demo.episode_id, f"{camera}_rgb",
                                            f"step {n}: {reason} ({path})")

        if not os.path.exists(path):
            raise fail(f"image missing ({len(os.listdir(folder))} PNGs for {num} steps)")
        try:
            with open(path, "rb") as f:
                frame = tf.io.decode_png(f.read(), channels=3).numpy()
        except Exception as err:  # noqa: BLE001 - TensorFlow's InvalidArgumentError
            raise fail(f"not a PNG image ({type(err).__name__})") from None
        if frames and frame.shape != frames[0].shape:
            raise fail(f"{frame.shape[1]}x{frame.shape[0]}, step 0 is "
                       f"{frames[0].shape[1]}x{frames[0].shape[0]}")
        frames.append(frame)
    return np.stack(frames) if frames else np.zeros((0, 1, 1, 3), np.uint8)


def resize_frames(frames: np.ndarray, size) -> np.ndarray:
    from atomskill_jax.data.frame_transforms import resize_image
    from atomskill_jax.data.tf_setup import tf

    if frames.shape[1:3] == tuple(size):
        return frames
    return np.stack([resize_image(tf.constant(f), size).numpy() for f in frames])


@dataclasses.dataclass(eq=False)
class RlbenchConfig(tfds.core.BuilderConfig):
    root: str = ""
    episodes: tuple[str, ...] = ()  # episode ids: other demos on disk are another build
    cameras: tuple[str, ...] = ()
    image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE
    state_dim: int | None = None  # None: task_low_dim_state was not recorded
    annotator: str = "rule"
    annotator_options: dict = dataclasses.field(default_factory=dict)
    show_progress: bool = True

    def options(self) -> dict[str, Any]:
        return episode_builder.config_options(self)


class Rlbench(episode_builder.RldsEpisodeBuilder):
    """RLBench stored demonstrations with atomic-skill annotations."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release: gripper pose proprio, task state, images, skills."}
    BUILDER_CONFIGS: list = []  # made per build (see build_rlbench)

    def episode_spec(self) -> rlds_schema.EpisodeSpec:
        cfg = self.builder_config
        return rlds_schema.EpisodeSpec(
            action_dim=rlobs.ACTION_DIM, proprio_dim=rlobs.PROPRIO_DIM,
            state_dim=cfg.state_dim, cameras=tuple(cfg.cameras),
            image_size=tuple(cfg.image_size))

    def generate_episodes(self):
        from tqdm import tqdm

        from atomskill_jax.models import sentence_encoder
        from atomskill_jax.skills import annotate

        cfg = self.builder_config
        wanted = set(cfg.episodes)
        demos = [d for d in find_demos(cfg.root, sorted({e.split("/")[0] for e in wanted}))
                 if d.episode_id in wanted]
        texts = {}
        for demo in demos:  # a first, cheap pass: instructions to embed at once
            try:
                texts[demo] = rlobs.instruction_of(load_descriptions(demo), demo.episode_id)
            except rlds_schema.EpisodeError as err:
                texts[demo] = err
        unique = sorted({t for t in texts.values() if isinstance(t, str)})
        embeddings = dict(zip(unique, sentence_encoder.embed_texts_cached(unique))) if unique \
            else {}
        annotator = annotate.make_annotator(cfg.annotator, **dict(cfg.annotator_options))
        progress = tqdm(total=len(demos), desc="demos", unit="ep", disable=not cfg.show_progress)
        for demo in demos:
            yield demo.episode_id, lambda d=demo: self._episode(d, texts[d], embeddings,
                                                                annotator)
            progress.update(1)
        progress.close()

    def _episode(self, demo, instruction, embeddings, annotator):
        from atomskill_jax.skills import annotate

        if isinstance(instruction, Exception):
            raise instruction
        cfg = self.builder_config
        observations = load_observations(demo)
        images = {}
        for cam in cfg.cameras:
            frames = rlobs.camera_frames(observations, cam, demo.episode_id)
            if frames is None:
                frames = read_png_frames(demo, cam, len(observations))
            if frames is not None:
                images[cam] = resize_frames(frames, tuple(cfg.image_size))
        arrays = rlobs.demo_arrays(observations, episode_id=demo.episode_id,
                                   cameras=tuple(cfg.cameras), images=images,
                                   state_dim=cfg.state_dim)
        num = len(arrays["action"])
        action, proprio = arrays["action"], arrays["proprio"]
        frames = {cam: arrays[f"image_{cam}"] for cam in cfg.cameras}
        skills = annotate.annotate_arrays(
            action, action, proprio, _GRIPPER, annotator, episode_id=demo.episode_id,
            task=demo.task, instruction=instruction, frames=frames or None)
        observation = {"proprio": proprio, **{f"image_{c}": f for c, f in frames.items()}}
        if cfg.state_dim is not None:
            observation["state"] = arrays["state"]
        last = np.arange(num) == num - 1
        steps = {
            "observation": observation,
            "action": action,
            "action_abs": action,
            "reward": last.astype(np.float32),
            "discount": np.ones(num, np.float32),
            "is_first": np.arange(num) == 0,
            "is_last": last,
            "is_terminal": last,
            "language_instruction": [instruction] * num,
            "language_embedding": np.repeat(np.asarray(embeddings[instruction])[None], num, 0),
            **skills.fields,
        }
        metadata = {
            "episode_id": demo.episode_id,
            "task": demo.task,
            "layout": demo.index,
            "source_file": demo.path,
            "success": True,
            "builder_version": f"{self.name}:{self.VERSION}",
            **skills.metadata,
        }
        return {"steps": steps, "episode_metadata": metadata}


def _parse_names(value) -> tuple[str, ...] | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return () if value == "none" else tuple(v for v in value.split(",") if v)
    return tuple(value)


def _survey(demos: list[StoredDemo], cameras: tuple[str, ...] | None):
    """State sizes (first demo of each task and variation), the default cameras and
    the native image size. Raises RLBenchUnavailable at once: nothing would build."""
    sizes: dict[str, set] = {}
    probed = {}
    for demo in demos:
        key = (demo.task, demo.variation)
        if key in probed:
            continue
        try:
            observations = load_observations(demo)
        except RLBenchUnavailable:
            raise
        except Exception:  # noqa: BLE001 - reported, naming the demo, when the build reads it
            continue
        if not observations:
            continue
        probed[key] = (demo, observations)
        sizes.setdefault(demo.task, set()).add(rlobs.low_dim_state_size(observations))
    if cameras is None:  # those the first readable demo has, as PNGs or attributes
        demo, observations = next(iter(probed.values()), (demos[0], [None]))
        cameras = tuple(c for c in rlobs.CAMERAS
                        if os.path.isdir(os.path.join(demo.path, f"{c}_rgb"))
                        or getattr(observations[0], f"{c}_rgb", None) is not None)
    native = None
    for demo, observations in probed.values():
        if not cameras or native is not None:
            break
        frame = getattr(observations[0], f"{cameras[0]}_rgb", None)
        if frame is None:
            try:
                frames = read_png_frames(demo, cameras[0], 1)
            except rlds_schema.EpisodeError:
                continue
            frame = None if frames is None else frames[0]
        if frame is not None:
            native = (int(np.shape(frame)[0]), int(np.shape(frame)[1]))
    all_sizes = set().union(*sizes.values()) if sizes else {None}
    state_dim = None if None in all_sizes else max(all_sizes)
    return cameras, native, state_dim, {t: sorted(s, key=str) for t, s in sizes.items()}


def build_rlbench(root: str, out: str, *, tasks: Sequence[str] | str | None = None,
                  cameras: Sequence[str] | str | None = None,
                  image_size: Sequence[int] | None = None, overwrite: bool = False,
                  annotator: str = "rule", annotator_options: dict | None = None,
                  name: str | None = None, show_progress: bool = True) -> dict[str, Any]:
    """Build (or reuse) the RLDS dataset of RLBench stored demos under `out`; returns the
    build report (written, skipped: reason -> episode ids, notes) with `dataset_dir` and
    `reused`.

    tasks: task folder names (or a comma-separated string); None: every task under
    root. cameras: of observations.CAMERAS, 'none'/() for no images, None for those the
    first demo has. image_size: (H, W); None: the first camera's own (128x128 by
    RLBench's default). An existing build with the same options is reused; one with
    other options is an error unless `overwrite`.
    """
    chosen = _parse_names(cameras)
    for cam in chosen or ():
        if cam not in rlobs.CAMERAS:
            raise ValueError(f"unknown RLBench camera {cam!r}; cameras: {rlobs.CAMERAS}")
    root = os.path.abspath(root)
    demos = find_demos(root, _parse_names(tasks))
    chosen, native, state_dim, sizes = _survey(demos, chosen)
    size = tuple(int(s) for s in image_size) if image_size else native or DEFAULT_IMAGE_SIZE
    task_names = sorted({d.task for d in demos})
    config = RlbenchConfig(
        name=name or re.sub(r"[^A-Za-z0-9_.-]+", "_", "_".join(task_names)
                            if len(task_names) <= 3 else "custom").lower(),
        description="RLBench demonstrations", root=root,
        episodes=tuple(d.episode_id for d in demos), cameras=tuple(chosen), image_size=size,
        state_dim=state_dim, annotator=annotator,
        annotator_options=dict(annotator_options or {}), show_progress=show_progress)
    if state_dim is None:
        state_note = "none (task_low_dim_state not recorded in every task)"
    elif any(s != [state_dim] for s in sizes.values()):
        state_note = f"task_low_dim_state zero-padded to {state_dim} (sizes by task: {sizes})"
    else:
        state_note = f"task_low_dim_state ({state_dim})"
    notes = {"state": state_note,
             "action": "next step's gripper pose (xyz, quaternion xyzw, w >= 0) + gripper_open"}
    return _build_or_reuse(config, out, overwrite, notes)


def _build_or_reuse(config, out: str, overwrite: bool, notes: dict) -> dict[str, Any]:
    return episode_builder.build_or_reuse(Rlbench, config, out, overwrite=overwrite, notes=notes,
                                          options_file=OPTIONS_FILE)
