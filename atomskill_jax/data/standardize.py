"""Per-dataset standardisation: a foreign RLDS episode -> the project's step fields.

`prepare` checks a standardisation (standardize_spec.py) against a dataset's features,
works out the dimensions it gives and, for text-only instructions, embeds the
dataset's distinct instructions once. The prepared object's `standardize(steps)` then
runs inside the tf.data read (sources.read_episodes), as Octo's OXE transforms do, so
foreign datasets are used as they are on disk: it builds `action` / `action_abs`
(concatenated parts, gripper converted to +1 closed / -1 open), `observation/proprio`
(and `state`), `language_embedding`, and derives what Open X-Embodiment lacks:
`skill_segment`, `skill_label_id` and `keypose` from gripper changes
(derived_skills.py, the builders' own segmentation and rule labels).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import numpy as np

from atomskill_jax.data import derived_skills, gripper_conventions, instruction_embeddings
from atomskill_jax.data.standardize_spec import FieldRef, Standardization
from atomskill_jax.data.tf_setup import tf

import tensorflow_datasets as tfds  # noqa: E402  (after tf_setup on purpose)


class PrepareError(ValueError):
    """The dataset lacks what its standardisation reads; names the dataset and field."""


def _feature(steps_feature, ref: FieldRef, where: str, std: str):
    node = steps_feature
    walked = []
    for part in ref.path:
        keys = _keys(node)
        if keys is None or part not in keys:
            parent = "steps" + "".join(f"/{p}" for p in walked)
            have = ", ".join(sorted(keys)) if keys else "no sub-fields"
            raise PrepareError(f"{where}: standardisation {std!r} reads field "
                               f"'steps/{'/'.join(ref.path)}', which is missing ({parent} has: "
                               f"{have})")
        node = node[part]
        walked.append(part)
    return node


def _keys(node) -> list[str] | None:
    if isinstance(node, tfds.features.Dataset):
        node = node.feature
    if isinstance(node, tfds.features.FeaturesDict):
        return list(node.keys())
    return None


def _numeric_width(feature, ref: FieldRef, where: str, std: str) -> tuple[int, int]:
    """(width of the whole field flattened per step, width after the slice)."""
    name = f"'steps/{'/'.join(ref.path)}'"
    if isinstance(feature, (tfds.features.Text, tfds.features.Image)) or not hasattr(
            feature, "shape"):
        raise PrepareError(f"{where}: standardisation {std!r}: field {name} is not numeric "
                           f"({type(feature).__name__})")
    if any(d is None for d in feature.shape):
        raise PrepareError(f"{where}: standardisation {std!r}: field {name} has a "
                           f"variable shape {feature.shape}")
    full = int(math.prod(feature.shape))
    picked = len(range(full)[slice(ref.start, ref.stop)])
    if picked == 0:
        raise PrepareError(f"{where}: standardisation {std!r}: {ref} selects no channel of "
                           f"{name} (it has {full})")
    return full, picked


@dataclasses.dataclass(frozen=True, eq=False)
class PreparedStandardization:
    """A standardisation bound to one dataset: its widths, dims and instruction table."""

    spec: Standardization
    where: str  # the dataset, for messages
    full_widths: dict[str, int]  # ref text -> flattened width of the whole field
    action_dim: int
    proprio_dim: int
    state_dim: int | None
    language_dim: int
    gripper_channels: tuple[int, ...]
    instructions: tuple[str, ...] = ()
    embeddings: np.ndarray | None = None
    embodiment: Any = None  # skills GripperSpec of the standardised gripper channels

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def tag(self) -> str:
        return self.spec.tag

    def _values(self, steps, ref: FieldRef) -> tf.Tensor:
        x = tf.cast(instruction_embeddings.get_field(steps, ref.path), tf.float32)
        x = tf.reshape(x, [-1, self.full_widths[ref.text]])
        return x[:, ref.start:ref.stop]

    def _observation(self, steps, parts) -> tf.Tensor:
        return tf.concat([self._values(steps, p.ref) * p.scale + p.offset for p in parts], 1)

    def standardize(self, steps: dict) -> dict:
        """The foreign episode's steps (dict of [T, ...] tensors) -> the project's fields:
        action, action_abs, keypose, skill_segment, skill_label_id, language_embedding,
        observation/{proprio, state if the standardisation has one}."""
        commands, targets, grippers = [], [], []
        for part in self.spec.action:
            value = self._values(steps, part.ref)
            if part.gripper is not None:
                value = gripper_conventions.to_ours(value, part.gripper)
                target = value
                grippers.append(value)
            elif part.absolute == "same":
                target = value
            elif part.absolute == "integrate":
                target = tf.cumsum(value, axis=0)
            else:  # an observed pose plus the delta
                target = self._values(steps, part.absolute) + value
            commands.append(value)
            targets.append(target)
        action = tf.concat(commands, 1)
        action_abs = tf.concat(targets, 1)
        num_steps = tf.shape(action)[0]
        observation = {"proprio": self._observation(steps, self.spec.proprio)}
        if self.spec.state:
            observation["state"] = self._observation(steps, self.spec.state)
        if self.spec.language_embedding is not None:
            language = self._values(steps, self.spec.language_embedding)
        else:
            language = instruction_embeddings.lookup(
                instruction_embeddings.get_field(steps, self.spec.instruction.path),
                self.instructions, self.embeddings,
                message=f"{self.where}: an instruction in 'steps/{self.spec.instruction}' "
                        f"is not among those collected when the pipeline opened (another "
                        f"split? a stale atomskill_instructions_*.json beside the dataset: "
                        f"delete it to collect them again)")
        if self.spec.instruction is not None:
            text = tf.reshape(instruction_embeddings.get_field(steps, self.spec.instruction.path),
                              [-1])
            first = tf.cond(num_steps > 0, lambda: text[0], lambda: tf.constant(""))
        else:
            first = tf.constant("")
        gripper = (tf.concat(grippers, 1) if grippers
                   else tf.zeros([num_steps, 0], tf.float32))
        skills = derived_skills.skill_fields(
            gripper, action_abs, observation["proprio"], first, spec=self.embodiment,
            fixed_label=None if self.spec.skill_label == "rule" else self.spec.skill_label)
        return {"action": action, "action_abs": action_abs, "keypose": skills["keypose"],
                "skill_segment": skills["skill_segment"],
                "skill_label_id": skills["skill_label_id"],
                "language_embedding": tf.cast(language, tf.float32),
                "observation": observation}


def prepare(spec: Standardization, builder, directory: str, *, split: str = "train",
            where: str = "", embed_fn: Callable[[Sequence[str]], np.ndarray] | None = None
            ) -> PreparedStandardization:
    """Check `spec` against the builder's features, compute dims, embed instructions."""
    where = where or f"dataset {directory}"
    features = builder.info.features
    if "steps" not in features or not isinstance(features["steps"], tfds.features.Dataset):
        raise PrepareError(f"{where} is not RLDS: it has no nested 'steps' feature")
    steps = features["steps"]
    std = spec.name
    full: dict[str, int] = {}

    def width(ref: FieldRef) -> int:
        full[ref.text], picked = _numeric_width(_feature(steps, ref, where, std), ref, where, std)
        return picked

    action_dim, gripper_channels = 0, []
    for part in spec.action:
        w = width(part.ref)
        if part.gripper is not None:
            gripper_channels.extend(range(action_dim, action_dim + w))
        elif isinstance(part.absolute, FieldRef) and width(part.absolute) != w:
            raise PrepareError(f"{where}: standardisation {std!r}: the pose {part.absolute} "
                               f"has {width(part.absolute)} channels but the action part "
                               f"{part.ref} has {w}: they must match to add up")
        action_dim += w
    proprio_dim = sum(width(p.ref) for p in spec.proprio)
    if proprio_dim == 0:
        raise PrepareError(f"{where}: standardisation {std!r} gives no proprio channels")
    state_dim = sum(width(p.ref) for p in spec.state) if spec.state else None
    if spec.ee_position and max(spec.ee_position) >= proprio_dim:
        raise PrepareError(f"{where}: standardisation {std!r}: ee_position channels "
                           f"{spec.ee_position} but proprio has {proprio_dim}")
    if spec.instruction is not None:
        text = _feature(steps, spec.instruction, where, std)
        if not isinstance(text, tfds.features.Text) and getattr(text, "dtype", None) != tf.string:
            raise PrepareError(f"{where}: standardisation {std!r}: instruction field "
                               f"'steps/{spec.instruction}' is not text")
    instructions, embeddings = (), None
    if spec.language_embedding is not None:
        language_dim = width(spec.language_embedding)
    else:
        if split not in builder.info.splits:
            raise PrepareError(f"{where}: no split {split!r} "
                               f"(has {', '.join(builder.info.splits.keys())})")
        instructions = tuple(instruction_embeddings.distinct_instructions(
            builder, directory, split, spec.instruction.path))
        try:
            embeddings = instruction_embeddings.embed_instructions(instructions, embed_fn)
        except (FileNotFoundError, ImportError) as err:
            raise PrepareError(
                f"{where}: standardisation {std!r} embeds the text of "
                f"'steps/{spec.instruction}' with the project's sentence encoder, which "
                f"cannot be loaded ({err}); install it, or name a stored embedding field "
                f"of the project's dimension with 'language_embedding'") from err
        language_dim = int(embeddings.shape[1])
    embodiment = derived_skills.gripper_spec(
        spec.tag, len(gripper_channels), ee_position=spec.ee_position,
        min_hold=spec.min_hold, min_segment_len=spec.min_segment_len)
    return PreparedStandardization(
        spec=spec, where=where, full_widths=full, action_dim=action_dim,
        proprio_dim=proprio_dim, state_dim=state_dim, language_dim=language_dim,
        gripper_channels=tuple(gripper_channels), instructions=instructions,
        embeddings=embeddings, embodiment=embodiment)
