"""Embodiment adapters: a policy action as an absolute target, for the skill trigger.

The keypose is predicted in absolute action space (`action_abs`, see the data
contract), so the trigger compares it with the next action *as an absolute target*.
A policy trained on absolute targets needs nothing (`AbsoluteAdapter`); one trained
on deltas needs the embodiment's rule for turning a delta into a target.

MetaWorld. The env moves a mocap target by clip(delta, -1, 1) * action_scale (0.01 m),
clipped to the task's mocap bounds, and the builder's `action_abs` (so the keypose) is
that *commanded* target plus the gripper command. The target is not observed, and the
hand does not follow it closely: measured on the 25-demo rlbench6 build, hand + delta
misses `action_abs` by 3.4 cm at the median step and 3.8 cm (p90 7.2 cm) at the last step
of a skill, where the hand presses on the object it grasps or places while the command
goes on. That is 5-50 times the calibrated ε, so a trigger on the hand could not see a
skill end (held skills ran to their step cap).
- `MetaWorldCommandedAdapter` ("metaworld", the default) tracks the command itself, as
  the env does: from the hand at the episode's first action (plus the hand-to-mocap
  offset at rest), it adds each executed delta and clips to the task's mocap bounds.
  Replayed on the same build with the recorded executed actions it reproduces
  `action_abs` to 0.05 mm (0.4 mm on box-close).
- `MetaWorldHandAdapter` ("metaworld_hand", the rule before): hand + delta, stateless;
  kept to measure the difference.
Adapters are stateful per batch of episodes: `reset(tasks)` when the policy resets,
then `to_absolute(action, observation)` exactly once per executed action, with the
observation the action was computed from.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np


class AbsoluteAdapter:
    """Actions already are absolute targets."""

    name = "absolute"

    def reset(self, tasks: Sequence[str]) -> None:
        pass

    def to_absolute(self, action: np.ndarray, observation: Mapping[str, np.ndarray]) -> np.ndarray:
        return np.asarray(action, np.float32)


def _hand(observation: Mapping[str, np.ndarray], who: str) -> np.ndarray:
    if "proprio" not in observation:
        raise ValueError(f"{who} needs observation['proprio'] (hand xyz in its first three "
                         f"entries)")
    return np.asarray(observation["proprio"], np.float64)[..., :3]


class MetaWorldHandAdapter:
    """hand + clip(delta) * 0.01: the observed hand in place of the commanded target."""

    name = "metaworld_hand"

    def __init__(self, action_scale: float = 0.01):
        self.action_scale = float(action_scale)

    def reset(self, tasks: Sequence[str]) -> None:
        pass

    def to_absolute(self, action: np.ndarray, observation: Mapping[str, np.ndarray]) -> np.ndarray:
        action = np.clip(np.asarray(action, np.float64), -1.0, 1.0)
        out = action.copy()
        out[..., :3] = _hand(observation, "MetaWorldHandAdapter") + action[..., :3] * self.action_scale
        return out.astype(np.float32)


# MetaWorld v3's mocap bounds (metaworld 3.1.1, checked against every MT50 env by
# tests/test_policy_adapters.py): the default and the tasks that differ from it.
METAWORLD_MOCAP_BOUNDS = ((-0.5, 0.4, 0.05), (0.5, 1.0, 0.5))
METAWORLD_MOCAP_LOW = {
    "bin-picking": (-0.5, 0.4, 0.07), "pick-out-of-hole": (-0.5, 0.4, -0.05),
    "stick-pull": (-0.5, 0.35, 0.05),
    **{t: (-0.5, 0.4, -0.15) for t in ("door-lock", "door-unlock", "hand-insert",
                                       "faucet-open", "faucet-close", "lever-pull")}}
# Mocap minus observed hand (tcp_center) at rest after reset, the same on every task
# to 0.5 mm: where the command starts from.
METAWORLD_MOCAP_MINUS_HAND = (-0.0046, -0.0014, 0.0049)


def metaworld_mocap_bounds(task: str) -> tuple[np.ndarray, np.ndarray]:
    name = task[:-3] if task.endswith(("-v2", "-v3")) else task
    low = METAWORLD_MOCAP_LOW.get(name, METAWORLD_MOCAP_BOUNDS[0])
    return np.asarray(low, np.float64), np.asarray(METAWORLD_MOCAP_BOUNDS[1], np.float64)


class MetaWorldCommandedAdapter:
    """The commanded mocap target, integrated as the env does (module docstring).
    Unknown task names get the default bounds."""

    name = "metaworld"

    def __init__(self, action_scale: float = 0.01):
        self.action_scale = float(action_scale)
        self.reset([])

    def reset(self, tasks: Sequence[str]) -> None:
        bounds = [metaworld_mocap_bounds(t) for t in tasks]
        self._low = np.array([b[0] for b in bounds], np.float64).reshape(-1, 3)
        self._high = np.array([b[1] for b in bounds], np.float64).reshape(-1, 3)
        self._target = np.full((len(tasks), 3), np.nan)  # set from the first observation

    def to_absolute(self, action: np.ndarray, observation: Mapping[str, np.ndarray]) -> np.ndarray:
        action = np.clip(np.asarray(action, np.float64), -1.0, 1.0)
        if action.ndim != 2 or len(action) != len(self._target):
            raise ValueError(f"MetaWorldCommandedAdapter: actions of shape {action.shape} "
                             f"after reset() with {len(self._target)} environments")
        fresh = np.isnan(self._target[:, 0])
        if fresh.any():
            hand = _hand(observation, "MetaWorldCommandedAdapter")
            self._target[fresh] = np.clip(hand[fresh] + METAWORLD_MOCAP_MINUS_HAND,
                                          self._low[fresh], self._high[fresh])
        self._target = np.clip(self._target + action[:, :3] * self.action_scale,
                               self._low, self._high)
        out = action.copy()
        out[:, :3] = self._target
        return out.astype(np.float32)


ADAPTERS = {"absolute": AbsoluteAdapter, "metaworld": MetaWorldCommandedAdapter,
            "metaworld_hand": MetaWorldHandAdapter}


def adapter_for(embodiment: str, action_space: str, datasets=()):
    """The adapter for a run. `embodiment='auto'`: absolute actions need none; delta
    actions from a MetaWorld dataset (by name or path) use the MetaWorld rule."""
    if embodiment == "auto":
        if action_space == "action_abs":
            return AbsoluteAdapter()
        if any("metaworld" in str(d).lower() for d in datasets):
            return MetaWorldCommandedAdapter()
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
