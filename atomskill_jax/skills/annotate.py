"""Segment + annotate one episode and produce the per-step skill fields.

    seg = segment_episode(action, proprio, "metaworld_sawyer")
    infos = segment_infos(seg, action_abs=..., proprio=..., episode_id=..., task=...,
                          instruction=..., embodiment="metaworld_sawyer")
    anns = make_annotator("rule").annotate(infos)
    fields = skill_step_fields(action_abs, seg, anns)   # the ARCHITECTURE skill fields

or all at once: `annotate_episode(action=..., action_abs=..., proprio=..., embodiment=...,
annotator=..., episode_id=..., task=..., instruction=..., frames=...)` -> fields.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from atomskill_jax.skills.embodiments import GripperSpec, get_embodiment
from atomskill_jax.skills.keyframes import Segmentation, segment_episode
from atomskill_jax.skills.rule_annotator import RuleAnnotator
from atomskill_jax.skills.types import Annotator, SegmentInfo, SkillAnnotation
from atomskill_jax.skills.vocabulary import LABELS

ANNOTATORS = ("rule", "vlm")


def make_annotator(name: str, **options: Any) -> Annotator:
    """'rule' (offline default) or 'vlm' (OpenAI-compatible endpoint; options are
    `VLMAnnotator`'s: base_url, model, api_key_env, timeout, ...)."""
    if name == "rule":
        if options:
            raise TypeError(f"the rule annotator takes no options, got {sorted(options)}")
        return RuleAnnotator()
    if name == "vlm":
        from atomskill_jax.skills.vlm_annotator import VLMAnnotator
        return VLMAnnotator(**options)
    raise ValueError(f"unknown annotator {name!r}; choose one of {ANNOTATORS}")


def segment_infos(segmentation: Segmentation, *, action_abs: np.ndarray,
                  proprio: np.ndarray | None, episode_id: str, task: str,
                  instruction: str, embodiment: str | GripperSpec,
                  frames: Mapping[str, np.ndarray] | None = None) -> list[SegmentInfo]:
    """One `SegmentInfo` per segment, with that segment's slices of the arrays."""
    spec = get_embodiment(embodiment)
    action_abs = np.asarray(action_abs)
    ee = None
    if proprio is not None and spec.ee_position_channels:
        ee = np.asarray(proprio)[:, list(spec.ee_position_channels)]
    infos = []
    for i, ((s, e), event) in enumerate(zip(segmentation.segments, segmentation.events)):
        sl = slice(s, e + 1)
        infos.append(SegmentInfo(
            episode_id=episode_id, task=task, instruction=instruction, index=i,
            num_segments=segmentation.num_segments, start=s, end=e, event=event,
            actions_abs=action_abs[sl],
            proprio=None if proprio is None else np.asarray(proprio)[sl],
            frames=None if not frames else {cam: np.asarray(v)[sl] for cam, v in frames.items()},
            ee_position=None if ee is None else ee[sl],
            gripper_closed=segmentation.gripper_closed[sl],
            previous_event=segmentation.events[i - 1] if i else None,
            event_grippers=segmentation.event_grippers[i]))
    return infos


def skill_step_fields(action_abs: np.ndarray, segmentation: Segmentation,
                      annotations: list[SkillAnnotation]) -> dict[str, Any]:
    """Per-step skill fields of the data contract (ARCHITECTURE.md).

    skill_segment int32[T], skill_label list[str], skill_label_id int32[T],
    skill_description list[str], is_keyframe bool[T], keypose float32[T, A]
    (`action_abs` at the terminal keyframe of the step's segment).
    """
    action_abs = np.asarray(action_abs, np.float32)
    num = segmentation.num_steps
    if action_abs.ndim != 2 or action_abs.shape[0] != num:
        raise ValueError(f"action_abs has shape {action_abs.shape}, expected [{num}, A] "
                         "(one row per step of the segmented episode)")
    if len(annotations) != segmentation.num_segments:
        raise ValueError(f"{len(annotations)} annotations for "
                         f"{segmentation.num_segments} segments")
    for i, ann in enumerate(annotations):
        if ann.label not in LABELS or LABELS.index(ann.label) != ann.label_id:
            raise ValueError(f"segment {i}: label {ann.label!r} / id {ann.label_id} is not "
                             "a canonical vocabulary entry")
    seg_idx = segmentation.segment_index
    ends = np.array([e for _, e in segmentation.segments])
    return {
        "skill_segment": seg_idx.astype(np.int32),
        "skill_label": [annotations[i].label for i in seg_idx],
        "skill_label_id": np.array([annotations[i].label_id for i in seg_idx], np.int32),
        "skill_description": [annotations[i].description for i in seg_idx],
        "is_keyframe": segmentation.is_keyframe.astype(bool),
        "keypose": action_abs[ends[seg_idx]],
    }


@dataclasses.dataclass
class EpisodeAnnotation:
    fields: dict[str, Any]  # per-step skill fields, to merge into episode["steps"]
    segmentation: Segmentation
    annotations: list[SkillAnnotation]
    metadata: dict[str, Any]  # num_skills, annotator: to merge into episode_metadata


def annotate_arrays(action: np.ndarray, action_abs: np.ndarray, proprio: np.ndarray | None,
                    embodiment: str | GripperSpec, annotator: Annotator | str = "rule", *,
                    episode_id: str = "", task: str = "", instruction: str | bytes = "",
                    frames: Mapping[str, np.ndarray] | None = None, signal: str = "action",
                    min_segment_len: int | None = None) -> EpisodeAnnotation:
    """Segment, annotate and produce the step fields for one episode's arrays,
    keeping the segmentation and per-segment annotations (source, notes)."""
    if isinstance(annotator, str):
        annotator = make_annotator(annotator)
    if isinstance(instruction, bytes):  # as tfds.as_numpy returns text
        instruction = instruction.decode("utf-8")
    seg = segment_episode(action, proprio, embodiment, signal=signal,
                          min_segment_len=min_segment_len)
    infos = segment_infos(seg, action_abs=action_abs, proprio=proprio,
                          episode_id=str(episode_id), task=str(task),
                          instruction=str(instruction), embodiment=embodiment, frames=frames)
    anns = annotator.annotate(infos)
    sources = sorted({a.source for a in anns})
    return EpisodeAnnotation(
        fields=skill_step_fields(action_abs, seg, anns), segmentation=seg,
        annotations=anns,
        metadata={"num_skills": seg.num_segments,
                  "annotator": annotator.name + ("" if sources == [annotator.name]
                                                 else f" ({'+'.join(sources)})")})


def annotate_episode(*, action: np.ndarray, action_abs: np.ndarray,
                     proprio: np.ndarray | None, embodiment: str | GripperSpec,
                     annotator: Annotator | str = "rule", episode_id: str = "",
                     task: str = "", instruction: str | bytes = "",
                     frames: Mapping[str, np.ndarray] | None = None, signal: str = "action",
                     min_segment_len: int | None = None) -> dict[str, Any]:
    """The per-step skill fields of one episode (what builders merge into steps).

    `annotate_arrays` with the same arguments also returns the segmentation and
    each segment's annotation (e.g. which ones fell back from the VLM).
    """
    return annotate_arrays(action, action_abs, proprio, embodiment, annotator,
                           episode_id=episode_id, task=task, instruction=instruction,
                           frames=frames, signal=signal,
                           min_segment_len=min_segment_len).fields
