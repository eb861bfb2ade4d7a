"""Plain-language summary of a segment's motion and gripper events.

The rule annotator chooses no-grasp verbs from it (press when the hand mostly goes
down, push when it travels sideways), and the VLM backend sends it as text when no
camera frames exist. Directions use the robot base frame with z up; x/y are named
by axis, not left/right, since their meaning differs between robots.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from atomskill_jax.skills.types import SegmentInfo

STILL_M = 0.02  # end-effector travel below this counts as staying in place


@dataclasses.dataclass
class Motion:
    displacement: np.ndarray | None  # [3] net end-effector travel (m), None if unknown
    path_length: float  # end-effector path (m) or joint-space path (rad)
    dominant: str  # 'up' | 'down' | '+x' | '-x' | '+y' | '-y' | 'still' | 'unknown'
    text: str


def summarize_motion(seg: SegmentInfo) -> Motion:
    if seg.ee_position is not None and len(seg.ee_position) >= 1:
        pos = np.asarray(seg.ee_position, np.float64)
        disp = pos[-1] - pos[0]
        path = float(np.linalg.norm(np.diff(pos, axis=0), axis=1).sum())
        if np.abs(disp).max() < STILL_M:
            dominant = "still"
        else:
            axis = int(np.argmax(np.abs(disp)))
            sign = disp[axis] > 0
            dominant = ("up" if sign else "down") if axis == 2 else (
                ("+" if sign else "-") + "xy"[axis])
        move = (f"the end effector travels {path:.2f} m; net dx={disp[0]:+.2f} "
                f"dy={disp[1]:+.2f} dz={disp[2]:+.2f} m"
                + ("" if dominant == "still" else f", mostly {dominant}"))
    else:
        disp = None
        joints = np.asarray(seg.proprio if seg.proprio is not None else seg.actions_abs,
                            np.float64)
        path = float(np.abs(np.diff(joints, axis=0)).sum()) if len(joints) > 1 else 0.0
        dominant = "unknown"
        move = f"the arm moves through {path:.2f} (summed joint-space change)"
    return Motion(disp, path, dominant, f"{move}; {gripper_text(seg)}")


def gripper_text(seg: SegmentInfo) -> str:
    bimanual = seg.gripper_closed is not None and seg.gripper_closed.shape[1] > 1
    who = ("gripper " + " and ".join(str(g) for g in seg.event_grippers)
           if bimanual and seg.event_grippers else "gripper")
    start = "holding an object" if seg.holding else "not holding anything"
    if seg.event == "close":
        return f"it starts {start}; the {who} closes at the end"
    if seg.event == "open":
        return f"it starts {start}; the {who} opens at the end"
    return f"it starts {start}; no gripper changes before the episode ends"
