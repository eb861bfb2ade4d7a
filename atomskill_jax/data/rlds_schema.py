"""The RLDS episode schema every builder writes (see shared ARCHITECTURE.md).

Builders produce episodes in a columnar numpy form (`Episode`: a dict with `steps`,
a dict of per-step arrays with a leading time axis, and `episode_metadata`);
`validate_episode` checks one against an `EpisodeSpec` and names the episode and
field at fault; `features_for(spec)` gives the tensorflow-datasets features that
store it as RLDS (nested `steps` dataset), so Open X-Embodiment tooling reads it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

# Per-step fields that carry the skill annotation (ARCHITECTURE.md, data contract).
SKILL_FIELDS = (
    "skill_segment",
    "skill_label",
    "skill_label_id",
    "skill_description",
    "is_keyframe",
    "keypose",
)

Episode = dict[str, Any]


class EpisodeError(ValueError):
    """An episode that cannot be written; names the episode and the field at fault."""

    def __init__(self, episode_id: str, field: str, reason: str):
        self.episode_id = episode_id
        self.field = field
        self.reason = reason
        super().__init__(f"episode {episode_id!r}, field {field!r}: {reason}")


@dataclasses.dataclass(frozen=True)
class EpisodeSpec:
    """Dimensions of one source's episodes."""

    action_dim: int
    proprio_dim: int
    state_dim: int | None = None  # None: no `state` observation (e.g. real robots)
    language_dim: int = 384
    cameras: tuple[str, ...] = ()
    image_size: tuple[int, int] = (128, 128)  # (height, width)
    # Step-level extras beyond the contract, name -> per-step trailing shape.
    extra_float_fields: tuple[tuple[str, tuple[int, ...]], ...] = ()

    def observation_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes: dict[str, tuple[int, ...]] = {"proprio": (self.proprio_dim,)}
        if self.state_dim is not None:
            shapes["state"] = (self.state_dim,)
        for cam in self.cameras:
            shapes[f"image_{cam}"] = (*self.image_size, 3)
        return shapes

    def float_step_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes = {
            "action": (self.action_dim,),
            "action_abs": (self.action_dim,),
            "keypose": (self.action_dim,),
            "reward": (),
            "discount": (),
        }
        shapes.update(dict(self.extra_float_fields))
        return shapes


def features_for(spec: EpisodeSpec):
    """tensorflow-datasets features for RLDS episodes of this spec."""
    import tensorflow as tf  # local: the schema's numpy half must not need TensorFlow
    import tensorflow_datasets as tfds

    observation = {
        "proprio": tfds.features.Tensor(
            shape=(spec.proprio_dim,), dtype=np.float32,
            doc="Robot proprioception (e.g. end-effector position and gripper opening)."),
    }
    if spec.state_dim is not None:
        observation["state"] = tfds.features.Tensor(
            shape=(spec.state_dim,), dtype=np.float32,
            doc="Full simulator state observation.")
    for cam in spec.cameras:
        observation[f"image_{cam}"] = tfds.features.Image(
            shape=(*spec.image_size, 3), dtype=np.uint8, encoding_format="png",
            doc=f"RGB image from camera {cam!r}.")
    steps = {
        "observation": tfds.features.FeaturesDict(observation),
        "action": tfds.features.Tensor(
            shape=(spec.action_dim,), dtype=np.float32,
            doc="Command the robot or simulator takes (e.g. an end-effector delta); "
                "with action noise, the expert's clean command (DART-style label)."),
        "action_abs": tfds.features.Tensor(
            shape=(spec.action_dim,), dtype=np.float32,
            doc="The same command as an absolute target (equal to `action` for robots "
                "commanded absolutely)."),
        "reward": tfds.features.Scalar(dtype=np.float32, doc="Reward from the source."),
        "discount": tfds.features.Scalar(dtype=np.float32, doc="Discount (1.0 everywhere)."),
        "is_first": tfds.features.Scalar(dtype=np.bool_, doc="First step of the episode."),
        "is_last": tfds.features.Scalar(dtype=np.bool_, doc="Last step of the episode."),
        "is_terminal": tfds.features.Scalar(
            dtype=np.bool_, doc="Last step and the task reached a terminal (success) state."),
        "language_instruction": tfds.features.Text(doc="Task instruction."),
        "language_embedding": tfds.features.Tensor(
            shape=(spec.language_dim,), dtype=np.float32,
            doc="Sentence embedding of the instruction (all-MiniLM-L6-v2, L2-normalised)."),
        "skill_segment": tfds.features.Scalar(
            dtype=np.int32, doc="Index of the atomic skill containing this step."),
        "skill_label": tfds.features.Text(doc="Canonical skill label (vocabulary word)."),
        "skill_label_id": tfds.features.Scalar(
            dtype=np.int32, doc="Index of skill_label in the canonical vocabulary."),
        "skill_description": tfds.features.Text(doc="Free-text description of the skill."),
        "is_keyframe": tfds.features.Scalar(
            dtype=np.bool_, doc="True on the terminal step of a skill segment."),
        "keypose": tfds.features.Tensor(
            shape=(spec.action_dim,), dtype=np.float32,
            doc="`action_abs` at the terminal keyframe of this step's segment."),
    }
    for name, shape in spec.extra_float_fields:
        steps[name] = tfds.features.Tensor(shape=shape, dtype=np.float32,
                                           doc=f"Source-specific field {name!r}.")
    metadata = {
        "episode_id": tfds.features.Text(doc="Unique, stable id of the episode."),
        "task": tfds.features.Text(doc="Task name."),
        "layout": tfds.features.Scalar(
            dtype=np.int64, doc="Initial-state id (simulator layout or seed); -1 if none."),
        "layout_vec": tfds.features.Tensor(
            shape=(None,), dtype=np.float32,
            doc="The simulator's layout parameters (object/goal positions), if any."),
        "source_file": tfds.features.Text(doc="File or generator the episode came from."),
        "success": tfds.features.Scalar(dtype=np.bool_, doc="The task was solved."),
        "builder_version": tfds.features.Text(doc="Builder name and version."),
        "seed": tfds.features.Scalar(dtype=np.int64, doc="Seed the episode was made with."),
        "action_noise_std": tfds.features.Scalar(
            dtype=np.float32, doc="Std of Gaussian noise added to executed actions."),
        "num_skills": tfds.features.Scalar(dtype=np.int32, doc="Number of skill segments."),
        "annotator": tfds.features.Text(doc="Skill annotation backend used."),
    }
    del tf
    return tfds.features.FeaturesDict({
        "steps": tfds.features.Dataset(steps),
        "episode_metadata": tfds.features.FeaturesDict(metadata),
    })


METADATA_DEFAULTS: dict[str, Any] = {
    "layout": -1,
    "layout_vec": np.zeros((0,), np.float32),
    "source_file": "",
    "success": False,
    "builder_version": "",
    "seed": -1,
    "action_noise_std": 0.0,
    "num_skills": 0,
    "annotator": "",
}


def validate_episode(episode: Episode, spec: EpisodeSpec) -> None:
    """Raise `EpisodeError` naming the field if `episode` does not fit `spec`.

    Checks presence, shapes, dtypes that can be cast, finiteness of every float
    field and a non-empty time axis. Skill fields are optional here (they are added
    by annotation after validation of the raw rollout).
    """
    meta = episode.get("episode_metadata", {})
    eid = str(meta.get("episode_id", "<unknown>"))
    steps = episode.get("steps")
    if not isinstance(steps, dict):
        raise EpisodeError(eid, "steps", "missing or not a dict of per-step arrays")
    action = steps.get("action")
    if action is None:
        raise EpisodeError(eid, "action", "missing")
    action = np.asarray(action)
    if action.ndim != 2 or action.shape[0] == 0:
        raise EpisodeError(eid, "action", f"expected [T>0, {spec.action_dim}], got shape "
                           f"{action.shape} (an empty episode?)")
    num_steps = action.shape[0]

    def check(name: str, value, trailing: tuple[int, ...], is_float: bool = True):
        if value is None:
            raise EpisodeError(eid, name, "missing")
        arr = np.asarray(value)
        if arr.shape != (num_steps, *trailing):
            raise EpisodeError(eid, name, f"expected shape {(num_steps, *trailing)}, "
                               f"got {arr.shape}")
        if is_float:
            if not np.issubdtype(arr.dtype, np.number):
                raise EpisodeError(eid, name, f"expected numbers, got dtype {arr.dtype}")
            bad = ~np.isfinite(arr.astype(np.float64))
            if bad.any():
                first = int(np.argwhere(bad)[0][0])
                raise EpisodeError(eid, name, f"{int(bad.sum())} non-finite values "
                                   f"(NaN or inf), first at step {first}")

    for name, shape in spec.float_step_shapes().items():
        if name == "keypose" and "keypose" not in steps:
            continue
        check(name, steps.get(name), shape)
    obs = steps.get("observation")
    if not isinstance(obs, dict):
        raise EpisodeError(eid, "observation", "missing or not a dict")
    for name, shape in spec.observation_shapes().items():
        check(f"observation/{name}", obs.get(name), shape,
              is_float=not name.startswith("image_"))
    for flag in ("is_first", "is_last", "is_terminal"):
        check(flag, steps.get(flag), (), is_float=False)
    emb = np.asarray(steps.get("language_embedding", np.zeros((0,))))
    if emb.shape != (num_steps, spec.language_dim):
        raise EpisodeError(eid, "language_embedding",
                           f"expected shape {(num_steps, spec.language_dim)}, got {emb.shape}")
    if not np.isfinite(emb).all():
        raise EpisodeError(eid, "language_embedding", "non-finite values")
    instr = steps.get("language_instruction")
    if instr is None or len(instr) != num_steps:
        raise EpisodeError(eid, "language_instruction", "expected one string per step")
    if "task" not in meta:
        raise EpisodeError(eid, "episode_metadata/task", "missing")


def to_tfds_example(episode: Episode) -> dict[str, Any]:
    """The dict tensorflow-datasets encodes: float32 casts, metadata defaults filled."""
    steps = episode["steps"]
    out_steps: dict[str, Any] = {}
    for key, value in steps.items():
        if key == "observation":
            out_steps[key] = {
                k: (np.asarray(v, np.uint8) if k.startswith("image_") else np.asarray(v, np.float32))
                for k, v in value.items()}
        elif key in ("language_instruction", "skill_label", "skill_description"):
            out_steps[key] = [str(s) for s in value]
        elif key in ("is_first", "is_last", "is_terminal", "is_keyframe"):
            out_steps[key] = np.asarray(value, np.bool_)
        elif key in ("skill_segment", "skill_label_id"):
            out_steps[key] = np.asarray(value, np.int32)
        else:
            out_steps[key] = np.asarray(value, np.float32)
    meta = dict(METADATA_DEFAULTS)
    meta.update(episode["episode_metadata"])
    meta["layout_vec"] = np.asarray(meta["layout_vec"], np.float32).reshape(-1)
    return {"steps": out_steps, "episode_metadata": meta}
