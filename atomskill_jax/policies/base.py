"""One interface for every policy: evaluation, the server and the exporter use it.

A policy sees a batch of B environments at once (so a jitted model infers for all
of them in one call) and gets observations under the same keys the RLDS builders
wrote (`state`, `proprio`, `image_<camera>`, `language_instruction`,
`language_embedding`), each with a leading batch axis. It returns actions in the
space it was trained in: `action` (the simulator's native command, e.g. a delta)
or `action_abs` (absolute targets, converted back by the embodiment's adapter).

JAX policies cannot be pickled, so evaluation workers build their own copy from a
picklable factory (`Callable[[], Policy]`, e.g. a `functools.partial` of a loader).
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

ACTION_SPACES = ("action", "action_abs")
# Observation keys a policy may ask for; `image_<camera>` for any camera.
OBSERVATION_KEYS = ("state", "proprio", "language_instruction", "language_embedding")


@dataclasses.dataclass(frozen=True)
class PolicySpec:
    """What a policy consumes and produces (picklable, JSON-friendly)."""

    name: str = "policy"
    action_space: str = "action"
    action_dim: int = 4
    observation_keys: tuple[str, ...] = ("state",)
    image_size: tuple[int, int] = (128, 128)
    # A policy returning chunks [B, H, A]: how many of the H actions the runner
    # executes before asking again (None: all of them).
    execute_steps: int | None = None

    def __post_init__(self):
        if self.action_space not in ACTION_SPACES:
            raise ValueError(f"PolicySpec.action_space={self.action_space!r}; "
                             f"use one of {ACTION_SPACES}")
        for key in self.observation_keys:
            if key not in OBSERVATION_KEYS and not key.startswith("image_"):
                raise ValueError(f"PolicySpec.observation_keys: unknown key {key!r}; known: "
                                 f"{OBSERVATION_KEYS} or image_<camera>")

    @property
    def cameras(self) -> tuple[str, ...]:
        return tuple(k[len("image_"):] for k in self.observation_keys if k.startswith("image_"))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class TaskInfo:
    """What a policy is told about one environment's episode when it starts."""

    task: str
    instruction: str
    layout: int
    seed: int = 0
    episode: int = 0


class Policy(abc.ABC):
    """Base class: `reset` at the start of a batch of episodes, then `infer` per step."""

    spec: PolicySpec
    # How the training frames were made (data/image_source.py: the dataset's native image
    # size and render settings): evaluation renders camera images the same way, then
    # resizes them to `spec.image_size` as the training pipeline did. None: the
    # simulator's default settings, rendered at `spec.image_size`.
    image_source: Mapping[str, Any] | None = None

    def reset(self, task_info: Sequence[TaskInfo]) -> None:
        """Start new episodes in all B environments (one `TaskInfo` each)."""

    @abc.abstractmethod
    def infer(self, observation: Mapping[str, np.ndarray]) -> np.ndarray:
        """Actions [B, A] (or a chunk [B, H, A]) for a batch of observations."""

    def close(self) -> None:
        """Release resources (threads, devices); called once by the evaluator."""


def batch_size(observation: Mapping[str, Any]) -> int:
    """The leading dimension shared by all observation entries."""
    sizes = {len(v) for v in observation.values()}
    if len(sizes) != 1:
        raise ValueError(f"observation entries disagree on the batch size: "
                         f"{ {k: len(v) for k, v in observation.items()} }")
    return sizes.pop()


class RandomPolicy(Policy):
    """Uniform actions in [-1, 1]: the floor every learned policy must beat."""

    def __init__(self, seed: int = 0, action_dim: int = 4):
        self.spec = PolicySpec(name="random", action_dim=action_dim, observation_keys=("state",))
        self._seed = seed
        self._rng = np.random.default_rng(seed)

    def reset(self, task_info: Sequence[TaskInfo]) -> None:
        # Reproducible per batch of episodes, whatever ran before in this worker.
        first = task_info[0]
        self._rng = np.random.default_rng([self._seed, first.seed, first.layout])

    def infer(self, observation: Mapping[str, np.ndarray]) -> np.ndarray:
        return self._rng.uniform(-1.0, 1.0, size=(batch_size(observation), self.spec.action_dim))
