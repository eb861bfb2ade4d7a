"""Embodiment adapters: a policy action as an absolute target, for the skill trigger.

The keypose is predicted in absolute action space (`action_abs`, see the data
contract), so the trigger compares it with the next action *as an absolute target*.
A policy trained on absolute targets needs nothing (`AbsoluteAdapter`); one trained
on deltas needs the embodiment's rule for turning a delta into a target.

MetaWorld (`MetaWorldDeltaAdapter`): the env moves its mocap target by
clip(delta, -1, 1) * action_scale (0.01 m) and the builder's `action_abs` is that
target plus the gripper command. The mocap target itself is not observed, so the
adapter uses the hand position (observation `proprio[:3]`) in its place:
target ≈ hand + clip(delta) * 0.01. The hand lags the mocap target by a few
millimetres while moving (less than one step's motion at rest), which is well below
the calibrated ε (see `calibration`); clipping to the mocap bounds is omitted since
keyposes lie inside them.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np


class AbsoluteAdapter:
    """Actions already are absolute targets."""

    name = "absolute"

    def to_absolute(self, action: np.ndarray, observation: Mapping[str, np.ndarray]) -> np.ndarray:
        return np.asarray(action, np.float32)


class MetaWorldDeltaAdapter:
    """MetaWorld's hand-position deltas -> absolute targets (see module docstring)."""

    name = "metaworld"

    def __init__(self, action_scale: float = 0.01):
        self.action_scale = float(action_scale)

    def to_absolute(self, action: np.ndarray, observation: Mapping[str, np.ndarray]) -> np.ndarray:
        action = np.clip(np.asarray(action, np.float64), -1.0, 1.0)
        if "proprio" not in observation:
            raise ValueError("MetaWorldDeltaAdapter needs observation['proprio'] (hand xyz in "
                             "its first three entries)")
        hand = np.asarray(observation["proprio"], np.float64)[..., :3]
        out = action.copy()
        out[..., :3] = hand + action[..., :3] * self.action_scale
        return out.astype(np.float32)


ADAPTERS = {"absolute": AbsoluteAdapter, "metaworld": MetaWorldDeltaAdapter}


def adapter_for(embodiment: str, action_space: str, datasets=()):
    """The adapter for a run. `embodiment='auto'`: absolute actions need none; delta
    actions from a MetaWorld dataset (by name or path) use the MetaWorld rule."""
    if embodiment == "auto":
        if action_space == "action_abs":
            return AbsoluteAdapter()
        if any("metaworld" in str(d).lower() for d in datasets):
            return MetaWorldDeltaAdapter()
        raise ValueError(
            f"the policy predicts deltas ({action_space!r}) on datasets {list(datasets)} and "
            f"no embodiment adapter is known for them; pass embodiment= one of "
            f"{sorted(ADAPTERS)} (or train on action_abs)")
    if embodiment not in ADAPTERS:
        raise ValueError(f"unknown embodiment {embodiment!r}; known: {sorted(ADAPTERS)}")
    return ADAPTERS[embodiment]()


# Control frequencies (Hz) of the simulators the builders record, by dataset name:
# MetaWorld steps 5 MuJoCo substeps of 2.5 ms; LIBERO (robosuite) runs at 20 Hz; ALOHA
# (gym-aloha and the real arms) at 50 Hz.
CONTROL_HZ = {"metaworld": 80.0, "libero": 20.0, "aloha": 50.0}


def control_hz_for(datasets=()) -> float | None:
    """The control frequency of the datasets a policy was trained on (None: unknown)."""
    rates = {hz for name, hz in CONTROL_HZ.items()
             if any(name in str(d).lower() for d in datasets)}
    return rates.pop() if len(rates) == 1 else None
