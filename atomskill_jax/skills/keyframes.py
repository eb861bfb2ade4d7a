"""Keyframe segmentation: cut an episode into atomic skills at gripper changes.

AtomSkill (sec. 3.1) cuts demonstrations where a gripper opens or closes. Each
gripper's signal (by default its command in `action`; optionally the observed
opening in `proprio`) is read as open/closed relative to the levels it takes in this
episode (`changepoint.closed_state`), so MetaWorld's 0→0.1 or 0.5→1 commands and
noisy or chattering signals give the expert's real grasp/release events. A change of
any gripper (bimanual: either arm) ends a segment; the step where the new state is
first commanded is the segment's terminal keyframe, so its `keypose` carries the
grasp/release command. Segments shorter than `min_segment_len` are merged, the last
step closes the last segment, and an episode without any change (pushing, closing a
drawer) is one skill.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from atomskill_jax.skills.changepoint import closed_state
from atomskill_jax.skills.embodiments import GripperSpec, get_embodiment

EVENTS = ("close", "open", "end")


@dataclasses.dataclass
class Segmentation:
    """Skill segments of one episode of T steps.

    Attributes:
      is_keyframe: bool[T], True on the last step of every segment.
      segment_index: int32[T], the segment each step belongs to.
      segments: (start, end) per segment, inclusive end; they cover 0..T-1 in order
        without overlap.
      events: what ends each segment: 'close' or 'open' (a gripper changed; 'close'
        if grippers closed and opened at the same step) or 'end' (episode end).
      event_grippers: for each segment, the grippers (0-based, in the spec's order)
        whose change ends it; () for 'end'.
      gripper_closed: bool[T, G], each gripper's debounced state (a gripper without
        level changes reads all False: unknown, not necessarily open).
      signal: 'action' or 'proprio', the signal the cuts come from.
    """

    is_keyframe: np.ndarray
    segment_index: np.ndarray
    segments: list[tuple[int, int]]
    events: list[str]
    event_grippers: list[tuple[int, ...]]
    gripper_closed: np.ndarray
    signal: str

    @property
    def num_segments(self) -> int:
        return len(self.segments)

    @property
    def num_steps(self) -> int:
        return int(self.segment_index.shape[0])


def _gripper_signals(action, proprio, spec: GripperSpec, signal: str):
    """[T, G] gripper signal, its polarity and minimum contrast."""
    if signal == "action" and spec.action_channels:
        arr, chans, field = action, spec.action_channels, "action"
        high, contrast = spec.action_closed_high, spec.min_contrast
    elif signal in ("action", "proprio") and spec.proprio_channels:
        arr, chans, field = proprio, spec.proprio_channels, "proprio"
        high, contrast = spec.proprio_closed_high, spec.proprio_min_contrast
    else:
        raise ValueError(f"embodiment {spec.name!r} has no {signal} gripper channels")
    if arr is None:
        raise ValueError(f"segment_episode: {field} is needed for embodiment "
                         f"{spec.name!r} with signal={signal!r}")
    arr = np.asarray(arr)
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ValueError(f"segment_episode: {field} must be [T>0, D], got {arr.shape}")
    if max(chans) >= arr.shape[1]:
        raise ValueError(f"segment_episode: {field} has {arr.shape[1]} channels but "
                         f"embodiment {spec.name!r} reads gripper channels {chans}; "
                         "is this the right embodiment?")
    sig = arr[:, list(chans)].astype(np.float64)
    if not np.isfinite(sig).all():
        bad = int(np.argwhere(~np.isfinite(sig))[0][0])
        raise ValueError(f"segment_episode: non-finite {field} gripper value at step {bad}")
    return sig, high, contrast, field


def _merge_short(segs: list[list], min_len: int) -> list[list]:
    """Merge segments shorter than `min_len`, shortest first.

    A short segment joins its successor (its ending event is dropped, since a skill
    that short is chatter or a re-grasp), except the last one, which joins its
    predecessor and keeps the later real event if it has one.
    """
    while len(segs) > 1:
        lengths = [e - s + 1 for s, e, _, _ in segs]
        i = int(np.argmin(lengths))
        if lengths[i] >= min_len:
            break
        if i == len(segs) - 1:
            prev, last = segs[-2], segs[-1]
            ev, grip = (prev[2], prev[3]) if last[2] == "end" else (last[2], last[3])
            segs[-2:] = [[prev[0], last[1], ev, grip]]
        else:
            segs[i + 1][0] = segs[i][0]
            del segs[i]
    return segs


def segment_episode(action: np.ndarray | None, proprio: np.ndarray | None,
                    embodiment: str | GripperSpec, *, signal: str = "action",
                    min_segment_len: int | None = None, min_hold: int | None = None,
                    hysteresis: float | None = None) -> Segmentation:
    """Cut one episode into atomic skills at gripper state changes.

    Args:
      action: [T, A] commands (the gripper command channels are read).
      proprio: [T, P] proprioception (read with signal='proprio', or when the
        embodiment has no action gripper channel).
      embodiment: a registered name ('metaworld_sawyer', 'aloha', ...) or a spec.
      signal: 'action' (gripper command; the default, since an observed opening
        also moves without a command change, e.g. closing on nothing at the start
        of drawer-close) or 'proprio'.
      min_segment_len, min_hold, hysteresis: override the spec's values.
    """
    spec = get_embodiment(embodiment)
    if signal not in ("action", "proprio"):
        raise ValueError(f"signal must be 'action' or 'proprio', got {signal!r}")
    sig, closed_high, contrast, used = _gripper_signals(action, proprio, spec, signal)
    num = sig.shape[0]
    hold = spec.min_hold if min_hold is None else int(min_hold)
    min_len = spec.min_segment_len if min_segment_len is None else int(min_segment_len)
    hyst = spec.hysteresis if hysteresis is None else float(hysteresis)

    closed = np.stack([
        closed_state(sig[:, g], closed_high=closed_high, min_contrast=contrast,
                     hysteresis=hyst, min_hold=hold, penalty=spec.penalty)
        for g in range(sig.shape[1])], axis=1)

    # Union of all grippers' changes, keyed by the first step of the new state.
    changes: dict[int, list[tuple[int, str]]] = {}
    for g in range(closed.shape[1]):
        for t in np.flatnonzero(closed[1:, g] != closed[:-1, g]) + 1:
            changes.setdefault(int(t), []).append((g, "close" if closed[t, g] else "open"))
    segs: list[list] = []
    start = 0
    for t in sorted(changes):
        kinds = {k for _, k in changes[t]}
        event = "close" if "close" in kinds else "open"
        segs.append([start, t, event, tuple(g for g, _ in changes[t])])
        start = t + 1
    if start <= num - 1:
        segs.append([start, num - 1, "end", ()])
    segs = _merge_short(segs, min_len)

    segment_index = np.zeros((num,), np.int32)
    is_keyframe = np.zeros((num,), bool)
    for i, (s, e, _, _) in enumerate(segs):
        segment_index[s:e + 1] = i
        is_keyframe[e] = True
    return Segmentation(
        is_keyframe=is_keyframe, segment_index=segment_index,
        segments=[(int(s), int(e)) for s, e, _, _ in segs],
        events=[ev for _, _, ev, _ in segs],
        event_grippers=[grip for _, _, _, grip in segs],
        gripper_closed=closed, signal=used)
