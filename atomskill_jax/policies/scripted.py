"""MetaWorld's scripted experts behind the common policy interface.

An oracle for evaluation (its score on the evaluation layouts is the ceiling a
learned policy can be compared with) and a known-good policy for tests.
"""

from __future__ import annotations

import warnings
from typing import Mapping, Sequence

import numpy as np

from atomskill_jax.policies.base import Policy, PolicySpec, TaskInfo, batch_size

# MetaWorld's default `action_scale`: a delta of 1 moves the mocap target 1 cm.
_ACTION_SCALE = 0.01


class ScriptedExpertPolicy(Policy):
    """Per-environment MetaWorld experts reading the 39-d state.

    With `action_space='action_abs'` it returns absolute targets (hand position
    plus the scaled delta), which exercises the evaluator's absolute-to-delta path;
    since the env's mocap target lags the hand slightly, that variant is close to,
    not identical with, the native expert.
    """

    def __init__(self, action_space: str = "action"):
        self.spec = PolicySpec(name="scripted_expert" + ("_abs" if action_space == "action_abs"
                                                         else ""),
                               action_space=action_space, observation_keys=("state",))
        self._experts: list = []
        self._cache: dict[str, object] = {}  # task -> expert (stateless P-controllers)

    def reset(self, task_info: Sequence[TaskInfo]) -> None:
        from atomskill_jax.envs import metaworld as mw

        self._experts = []
        for info in task_info:
            if info.task not in self._cache:
                self._cache[info.task] = mw.expert_policy(info.task)
            self._experts.append(self._cache[info.task])

    def infer(self, observation: Mapping[str, np.ndarray]) -> np.ndarray:
        states = np.asarray(observation["state"], np.float64)
        if batch_size(observation) != len(self._experts):
            raise ValueError(f"ScriptedExpertPolicy got {len(states)} observations after "
                             f"reset() with {len(self._experts)} tasks; call reset first")
        with warnings.catch_warnings():
            # The experts' P-controllers ask for more than [-1, 1]; the env clips.
            warnings.filterwarnings("ignore", message=r"Constant\(s\) may be too high")
            actions = np.stack([np.clip(expert.get_action(s), -1.0, 1.0)
                                for expert, s in zip(self._experts, states)])
        if self.spec.action_space == "action_abs":
            actions[:, :3] = states[:, :3] + actions[:, :3] * _ACTION_SCALE
        return actions.astype(np.float32)
