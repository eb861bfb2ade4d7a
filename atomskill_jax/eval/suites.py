"""Which simulator a task belongs to, and what evaluation needs from it: the task's
canonical name and instruction, evaluation layouts, the episode cap, the environment
(`reset(layout)`, `step(action) -> (obs, info, truncated)`, `state`, `video_frame()`)
and the stage tracker that ATP counts.

MetaWorld tasks (`pick-place`, ...) and the ALOHA sim tasks (`transfer_cube`,
`insertion`: stages are gym-aloha's reward levels 1..4, success is reaching 4) share
the rollout machinery (eval/rollout.py) through this module.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

ALOHA_SUITE = "aloha_sim"


def is_aloha(task: str) -> bool:
    from atomskill_jax.envs import aloha_sim

    return str(task).strip().lower().replace("-", "_") in aloha_sim.TASKS


def resolve_tasks(suite: str | None, tasks) -> tuple[str, ...]:
    """Tasks from a suite name (MetaWorld's, or `aloha_sim`) or a comma-separated list."""
    from atomskill_jax.envs import aloha_sim, metaworld_tasks

    if suite == ALOHA_SUITE and not tasks:
        return aloha_sim.TASKS
    if tasks and suite is None:
        names = [t for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t.strip()]
        if names and all(is_aloha(t) for t in names):
            return tuple(aloha_sim.canonical_task(t) for t in names)
        if any(is_aloha(t) for t in names):
            raise ValueError(f"tasks {names} mix ALOHA sim and MetaWorld tasks; evaluate "
                             f"them separately")
    return metaworld_tasks.resolve_tasks(suite, tasks)


def canonical_task(task: str) -> str:
    from atomskill_jax.envs import aloha_sim, metaworld_tasks

    return aloha_sim.canonical_task(task) if is_aloha(task) else \
        metaworld_tasks.canonical_task(task)


def instruction(task: str) -> str:
    from atomskill_jax.envs import aloha_sim, metaworld_tasks

    return aloha_sim.instruction(task) if is_aloha(task) else metaworld_tasks.instruction(task)


def eval_layouts(task: str, seed: int, episodes: int) -> list[int]:
    from atomskill_jax.envs import aloha_sim
    from atomskill_jax.envs.metaworld_eval import eval_layouts as metaworld_layouts

    return aloha_sim.eval_seeds(seed, episodes) if is_aloha(task) else \
        metaworld_layouts(seed, episodes)


def default_max_steps(task: str) -> int:
    from atomskill_jax.envs import aloha_sim
    from atomskill_jax.envs.metaworld_eval import default_max_steps as metaworld_steps

    return aloha_sim.DEFAULT_MAX_STEPS if is_aloha(task) else metaworld_steps(task)


def make_env(task: str, spec, *, max_steps: int, language_embedding, video_camera,
             image_source=None):
    """`image_source`: how the policy's training frames were made (data/image_source.py);
    MetaWorld renders alike (ALOHA sim renders at the policy's size, as its builder)."""
    if is_aloha(task):
        from atomskill_jax.envs.aloha_sim import AlohaSimEvalEnv

        return AlohaSimEvalEnv(task, spec, max_steps=max_steps,
                               language_embedding=language_embedding,
                               video_camera="top" if video_camera else None)
    from atomskill_jax.envs.metaworld_eval import MetaWorldEvalEnv

    return MetaWorldEvalEnv(task, spec, max_steps=max_steps,
                            language_embedding=language_embedding, video_camera=video_camera,
                            image_source=image_source)


class RewardStageTracker:
    """ALOHA sim: stage k (1..4) is reached once the task's reward has been >= k."""

    stages = tuple(range(1, 5))

    def __init__(self):
        self.best = 0.0

    def reset(self, state) -> None:
        del state
        self.best = 0.0

    def flags(self, state, info: Mapping[str, Any]) -> np.ndarray:
        del state
        self.best = max(self.best, float(info.get("max_reward", info.get("reward", 0.0))))
        return np.asarray(self.stages) <= self.best


def stage_names(task: str) -> list[str]:
    """The stages ATP counts, for the report."""
    if is_aloha(task):
        from atomskill_jax.envs import aloha_sim

        return [f"reward>={k}" for k in range(1, aloha_sim.MAX_REWARD + 1)]
    from atomskill_jax.eval.stages import stages_of

    return [s.name for s in stages_of(task)]


def stage_tracker(task: str):
    if is_aloha(task):
        return RewardStageTracker()
    from atomskill_jax.eval.stages import StageTracker

    return StageTracker(task)


def stack(observations: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    from atomskill_jax.envs.metaworld_eval import stack_observations

    return stack_observations(observations)
