"""What annotation backends take (`SegmentInfo`) and give (`SkillAnnotation`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol

import numpy as np


@dataclasses.dataclass
class SegmentInfo:
    """One atomic skill of one episode, as an annotator sees it.

    Arrays are the segment's own steps (`end - start + 1` rows).

    Attributes:
      episode_id, task, instruction: which demonstration and what it asks.
      index, num_segments: position of this skill in the episode.
      start, end: inclusive step range in the episode.
      event: what ends the segment: 'close' | 'open' | 'end'.
      actions_abs: [L, A] absolute commands.
      proprio: [L, P] proprioception, or None.
      frames: camera name -> [L, H, W, 3] uint8 images, or None.
      ee_position: [L, 3] end-effector position (from the embodiment's
        `ee_position_channels`), or None when the robot reports only joints.
      gripper_closed: bool [L, G] debounced gripper states (all False for a
        gripper without level changes: unknown).
      previous_event: the event that ended the previous segment (None if first).
      event_grippers: grippers whose change ends this segment.
    """

    episode_id: str
    task: str
    instruction: str
    index: int
    num_segments: int
    start: int
    end: int
    event: str
    actions_abs: np.ndarray
    proprio: np.ndarray | None = None
    frames: dict[str, np.ndarray] | None = None
    ee_position: np.ndarray | None = None
    gripper_closed: np.ndarray | None = None
    previous_event: str | None = None
    event_grippers: tuple[int, ...] = ()

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    @property
    def holding(self) -> bool:
        """A gripper is closed as the segment starts (it carries something)."""
        if self.gripper_closed is not None and self.gripper_closed.size:
            return bool(self.gripper_closed[0].any())
        return self.previous_event == "close"


@dataclasses.dataclass
class SkillAnnotation:
    """The label of one segment.

    Attributes:
      label: canonical label (see `vocabulary.LABELS`).
      label_id: its index in the vocabulary.
      description: free-text description of the skill.
      source: 'rule', 'vlm', or 'vlm-fallback' (the VLM failed; rule label used).
      raw_label: the backend's free-text label before mapping ('' for rule).
      note: how the label was obtained or why a fallback happened.
    """

    label: str
    label_id: int
    description: str
    source: str
    raw_label: str = ""
    note: str = ""


class Annotator(Protocol):
    """An annotation backend: one `SkillAnnotation` per segment, in order."""

    name: str

    def annotate(self, segments: Sequence[SegmentInfo]) -> list[SkillAnnotation]:
        ...
