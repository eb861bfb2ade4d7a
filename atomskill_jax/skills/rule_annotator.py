"""Offline skill labels from the gripper transition, the motion and the task text.

The transition fixes most labels (AtomSkill's keyframes are grasps and releases):
a segment ending in a close is `grasp`, one ending in an open is `place`, a close
while another gripper holds is `handover`. A segment without a transition is
labelled from the task and instruction words (turn/open/close/press/push/pull/...)
and, when no word fits, from the motion (down: press, sideways: push, else reach).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from atomskill_jax.skills.motion import summarize_motion
from atomskill_jax.skills.types import SegmentInfo, SkillAnnotation
from atomskill_jax.skills.vocabulary import label_id, normalize, skill

# First match wins: rotation verbs before open/close (faucet-open is a rotation),
# 'button' before push (coffee-button: "push the button").
_FREE_HAND_WORDS = (
    ("turn", r"\b(turn|turns|rotate|twist|dial|lock|unlock)\b"),
    ("open", r"\bopen(s|ed|ing)?\b"),
    ("close", r"\b(close|closes|closed|closing|shut)\b"),
    ("press", r"\b(press|presses|pressed|button)\b"),
    ("push", r"\b(push|pushes|slide|slides|shove)\b"),
    ("pull", r"\b(pull|pulls|drag|unplug)\b"),
    ("sweep", r"\bsweep"),
    ("wipe", r"\bwip(e|es|ing)\b"),
    ("reach", r"\breach"),
)
# For a segment that carries an object to the episode's end.
_HOLDING_WORDS = (
    ("sweep", r"\bsweep"),
    ("wipe", r"\bwip(e|es|ing)\b"),
    ("pour", r"\bpour"),
    ("insert", r"\b(insert|inserts|plug|plugs)\b|\binto the hole\b"),
    ("lift", r"\b(lift|lifts|raise|raises)\b|\bout of\b|\boff\b"),
    ("place", r"\b(place|places|put|puts|set|stack|onto)\b"),
    ("push", r"\b(push|pushes|slide|slides)\b"),
    ("pull", r"\b(pull|pulls)\b"),
)

_PHRASES = {
    "grasp": "reach for the object and grasp it",
    "place": "carry the object to the target and release it",
    "lift": "lift the held object",
    "insert": "insert the held object",
    "retreat": "move the open gripper away",
    "handover": "hand the object over to the other gripper",
}


def _first_match(text: str, table) -> str | None:
    for label, pattern in table:
        if re.search(pattern, text):
            return label
    return None


def rule_label(seg: SegmentInfo) -> str:
    text = normalize(f"{seg.task} {seg.instruction}")
    if seg.event == "close":
        return "handover" if seg.holding else "grasp"
    if seg.event == "open":
        return "place"
    if seg.holding:
        label = _first_match(text, _HOLDING_WORDS)
        if label is not None:
            return label
        return "lift" if summarize_motion(seg).dominant == "up" else "place"
    if seg.previous_event == "open":
        return "retreat"
    label = _first_match(text, _FREE_HAND_WORDS)
    if label is not None:
        return label
    dominant = summarize_motion(seg).dominant
    if dominant == "down":
        return "press"
    if dominant in ("+x", "-x", "+y", "-y"):
        return "push"
    return "reach"


def rule_description(seg: SegmentInfo, label: str) -> str:
    instruction = seg.instruction.strip()
    if seg.num_segments == 1 and instruction:
        return instruction
    phrase = _PHRASES.get(label, skill(label).description)
    if label == "place" and seg.event != "open":
        phrase = "carry the held object to the target"
    if not instruction:
        return phrase
    return f"{phrase} (skill {seg.index + 1} of {seg.num_segments} towards: {instruction})"


def rule_annotation(seg: SegmentInfo, source: str = "rule", note: str = "") -> SkillAnnotation:
    label = rule_label(seg)
    return SkillAnnotation(label=label, label_id=label_id(label),
                           description=rule_description(seg, label), source=source,
                           note=note)


class RuleAnnotator:
    """The offline default backend (no model, deterministic)."""

    name = "rule"

    def annotate(self, segments: Sequence[SegmentInfo]) -> list[SkillAnnotation]:
        return [rule_annotation(seg) for seg in segments]
