"""The stage table (atomskill_jax/eval/stages.py) against MetaWorld's scripted experts.

Every one of the 50 tasks, two episodes each on evaluation layouts (seed 0), no
rendering (about 15 s). The stages are the ATP a learned policy is scored with, so a
threshold the expert's solution never meets, or stages that hold out of order, would
misreport every evaluation of that task. What the experts and the table are known to
do differently is listed below, measured here, and must stay exactly so: a new
failure is a fault to fix, a listed one that disappears is to be struck off.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from atomskill_jax.envs import metaworld_eval, metaworld_tasks
from atomskill_jax.eval import metrics
from atomskill_jax.eval.stages import StageTracker
from atomskill_jax.policies.base import TaskInfo
from atomskill_jax.policies.scripted import ScriptedExpertPolicy

pytestmark = pytest.mark.slow  # 100 expert episodes

SEED, EPISODES = 0, 2
# (task, episode) where MetaWorld 3.1.1's expert fails on eval_layouts(0, 2).
KNOWN_EXPERT_FAILURES = {("door-open", 1), ("peg-insert-side", 0)}
# (task, episode) where the hand starts within the reach distance (see stages.py).
KNOWN_REACHED_AT_FIRST_STEP = {("door-lock", 0)}
# (task, episode) where the expert succeeds without a stage's predicate: none here
# (pick-place without a lift happens on other layouts, see stages.py).
KNOWN_SUCCESS_WITHOUT_STAGE: set = set()


@dataclasses.dataclass
class Episode:
    task: str
    episode: int
    layout: int
    stages: tuple[str, ...]
    first: list[int]  # per stage: the first step its predicate held, -1 if never
    success_step: int
    reached: int  # metrics.ProgressCounter over the predicates

    @property
    def where(self) -> str:
        return f"{self.task} episode {self.episode} (layout {self.layout})"


def _run_task(task: str) -> list[Episode]:
    policy = ScriptedExpertPolicy()
    env = metaworld_eval.MetaWorldEvalEnv(task, policy.spec)
    out = []
    try:
        for ep, layout in enumerate(metaworld_eval.eval_layouts(SEED, EPISODES)):
            policy.reset([TaskInfo(task, metaworld_tasks.instruction(task), layout, SEED, ep)])
            obs = env.reset(layout)
            tracker = StageTracker(task)
            tracker.reset(env.state)
            counter = metrics.ProgressCounter(len(tracker.stages))
            first = [-1] * len(tracker.stages)
            success_step = -1
            for t in range(env.max_steps):  # as eval/rollout.py: stop at success
                action = policy.infer(metaworld_eval.stack_observations([obs]))[0]
                obs, info, truncated = env.step(action, render=False)
                flags = tracker.flags(env.state, info)
                counter.update(flags)
                for k in np.flatnonzero(flags):
                    if first[k] < 0:
                        first[k] = t
                if info.get("success", 0.0):
                    success_step = t
                    break
                if truncated:
                    break
            out.append(Episode(task, ep, layout, tuple(s.name for s in tracker.stages),
                               first, success_step, counter.completed))
    finally:
        env.close()
    return out


@pytest.fixture(scope="module")
def episodes() -> list[Episode]:
    return [e for task in metaworld_tasks.ALL_TASKS for e in _run_task(task)]


def test_every_task_was_run(episodes):
    assert sorted({e.task for e in episodes}) == sorted(metaworld_tasks.ALL_TASKS)
    assert len(episodes) == EPISODES * 50


def test_expert_fails_only_where_measured(episodes):
    failed = {(e.task, e.episode) for e in episodes if e.success_step < 0}
    assert failed == KNOWN_EXPERT_FAILURES, (
        f"the expert now fails on {sorted(failed - KNOWN_EXPERT_FAILURES)} and succeeds on "
        f"{sorted(KNOWN_EXPERT_FAILURES - failed)}: a new failure is a fault in the env "
        "adapter or the policy wrapper; a fixed one is to be removed from "
        "KNOWN_EXPERT_FAILURES")


def test_stages_are_reached_in_order(episodes):
    for e in episodes:
        steps = [t for t in e.first if t >= 0]
        # Strictly: two stages first holding at the same step are one skill, not two
        # (measured: every expert episode takes steps between its stages).
        assert all(a < b for a, b in zip(steps, steps[1:])), (
            f"{e.where}: stages first held at {dict(zip(e.stages, e.first))}, not one "
            "after the other; a later stage's predicate is too loose (or an earlier one "
            "too strict) in atomskill_jax/eval/stages.py")
        # Nothing after a stage that never held (success excepted: authoritative).
        missing = [k for k, t in enumerate(e.first) if t < 0]
        if missing and (e.task, e.episode) not in KNOWN_SUCCESS_WITHOUT_STAGE:
            assert all(t < 0 for t in e.first[missing[0]:]), (
                f"{e.where}: stage {e.stages[missing[0]]!r} never held but later ones did "
                f"({dict(zip(e.stages, e.first))}); fix its threshold in "
                "atomskill_jax/eval/stages.py")


def test_a_successful_episode_reaches_every_stage(episodes):
    for e in episodes:
        if e.success_step < 0 or (e.task, e.episode) in KNOWN_SUCCESS_WITHOUT_STAGE:
            continue
        assert e.reached == len(e.stages) and e.first[-1] == e.success_step, (
            f"{e.where}: the expert succeeded at step {e.success_step} but the stage "
            f"predicates completed {e.reached} of {len(e.stages)} "
            f"({dict(zip(e.stages, e.first))}); the threshold of the first missing stage "
            "in atomskill_jax/eval/stages.py is tighter than the expert's solution")


def test_no_stage_holds_at_the_first_step_except_where_measured(episodes):
    # A stage that holds before the policy has done anything is not progress.
    early = {(e.task, e.episode) for e in episodes if 0 in e.first}
    assert early == KNOWN_REACHED_AT_FIRST_STEP, (
        f"stages hold at the first step in {sorted(early - KNOWN_REACHED_AT_FIRST_STEP)} "
        f"(listed but not seen: {sorted(KNOWN_REACHED_AT_FIRST_STEP - early)}): a "
        "threshold in atomskill_jax/eval/stages.py is so loose that the start layout meets it")


def test_sr_at_most_atp_per_task_and_overall(episodes):
    # ATP from the predicates alone (the evaluator also credits a success with every
    # stage, which would make SR <= ATP hold whatever the table says).
    results = [metrics.EpisodeResult(
        task=e.task, seed=SEED, episode=e.episode, layout=e.layout,
        success=e.success_step >= 0, stages_completed=e.reached, num_stages=len(e.stages),
        steps=e.success_step + 1) for e in episodes]
    summary = metrics.summarize(results, metaworld_tasks.ALL_TASKS)
    for task, row in summary["tasks"].items():
        assert row["sr"].mean <= row["atp"].mean, (
            f"{task}: SR {row['sr'].mean:.2f} > ATP {row['atp'].mean:.2f} from the stage "
            "predicates: a success missed a stage (atomskill_jax/eval/stages.py)")
    overall = summary["groups"]["average"]
    assert overall["sr"].mean <= overall["atp"].mean
    # The expert solves 98 of 100 episodes; its failures still made progress.
    assert overall["sr"].mean == pytest.approx(1 - len(KNOWN_EXPERT_FAILURES) / 100)
    assert overall["atp"].mean > overall["sr"].mean
