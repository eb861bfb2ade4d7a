"""Success rate (SR) and average task progress (ATP), with confidence over seeds.

ATP follows the AtomSkill paper: a task is a sequence of stages; an episode's
progress is the number of consecutive stages completed from the first, divided by
the number of stages; failing a stage stops progress. ATP is the mean progress
over episodes, SR the fraction of successful episodes. Both are computed per
(task, seed); the spread reported is over seeds (each seed is a fresh set of
evaluation layouts), with a t-distribution 95% confidence interval.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterable, Sequence

import numpy as np


def ordered_progress(flags: np.ndarray) -> int:
    """Consecutive stages completed, from per-step stage predicates bool[T, K].

    A stage, once reached, stays reached; stage k counts only if it holds at some
    step at or after the step where stage k-1 was first counted. So a later stage
    reached before an earlier one (or without it) does not count.
    """
    flags = np.asarray(flags, bool)
    if flags.ndim != 2:
        raise ValueError(f"stage flags must be [steps, stages], got shape {flags.shape}")
    t = 0
    for k in range(flags.shape[1]):
        hits = np.flatnonzero(flags[t:, k])
        if hits.size == 0:
            return k
        t += int(hits[0])
    return flags.shape[1]


class ProgressCounter:
    """`ordered_progress` computed online, one step at a time (no history kept)."""

    def __init__(self, num_stages: int):
        self.num_stages = num_stages
        self.completed = 0

    def update(self, step_flags: np.ndarray) -> int:
        # Several stages may complete in the same step, in order.
        while self.completed < self.num_stages and step_flags[self.completed]:
            self.completed += 1
        return self.completed


@dataclasses.dataclass
class EpisodeResult:
    task: str
    seed: int
    episode: int
    layout: int
    success: bool
    stages_completed: int
    num_stages: int
    steps: int
    success_step: int = -1
    # The ordered count from the stage predicates alone; `stages_completed` is all
    # stages when the env reports success (success is authoritative: SR <= ATP).
    # They differ only where a predicate missed a stage a success went through.
    stages_reached: int = -1
    video: str = ""

    @property
    def progress(self) -> float:
        return self.stages_completed / self.num_stages


# Two-sided 95% quantiles of Student's t (0.975), df = 1..30.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
         2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
         2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_quantile_975(df: int) -> float:
    if df < 1:
        raise ValueError(f"t quantile needs df >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964  # Cornish-Fisher expansion: accurate to 1e-3 beyond df = 30
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


@dataclasses.dataclass(frozen=True)
class Estimate:
    """Mean over seeds and the half-width of its 95% CI (NaN with one seed)."""

    mean: float
    ci95: float
    n: int
    values: tuple[float, ...] = ()

    @classmethod
    def of(cls, values: Sequence[float]) -> "Estimate":
        values = tuple(float(v) for v in values)
        n = len(values)
        if n == 0:
            return cls(math.nan, math.nan, 0, ())
        mean = float(np.mean(values))
        if n == 1:
            return cls(mean, math.nan, 1, values)
        std = float(np.std(values, ddof=1))
        return cls(mean, t_quantile_975(n - 1) * std / math.sqrt(n), n, values)

    def to_dict(self) -> dict:
        return {"mean": self.mean, "ci95": None if math.isnan(self.ci95) else self.ci95,
                "n": self.n, "values": list(self.values)}


def per_seed(results: Iterable[EpisodeResult], tasks: Sequence[str]) -> dict:
    """{task: {seed: (sr, atp, episodes)}} from episode results."""
    table: dict[str, dict[int, list[EpisodeResult]]] = {t: {} for t in tasks}
    for r in results:
        table.setdefault(r.task, {}).setdefault(r.seed, []).append(r)
    return {task: {seed: (float(np.mean([r.success for r in eps])),
                          float(np.mean([r.progress for r in eps])), len(eps))
                   for seed, eps in sorted(by_seed.items())}
            for task, by_seed in table.items()}


def summarize(results: Sequence[EpisodeResult], tasks: Sequence[str],
              groups: dict[str, Sequence[str]] | None = None) -> dict:
    """SR and ATP per task, on average over tasks and per task group.

    Averages are taken over tasks within each seed first, then the estimate is
    over seeds, so the interval reflects seed-to-seed variation of the average.
    """
    table = per_seed(results, tasks)
    seeds = sorted({s for by_seed in table.values() for s in by_seed})
    out: dict = {"tasks": {}, "groups": {}, "seeds": seeds}
    for task in tasks:
        by_seed = table.get(task, {})
        out["tasks"][task] = {
            "sr": Estimate.of([v[0] for v in by_seed.values()]),
            "atp": Estimate.of([v[1] for v in by_seed.values()]),
            "episodes": sum(v[2] for v in by_seed.values())}
    named = {"average": list(tasks), **{k: list(v) for k, v in (groups or {}).items()}}
    for name, members in named.items():
        members = [t for t in members if t in table]
        if not members:
            continue
        covered = [s for s in seeds if all(s in table[t] for t in members)]
        out["groups"][name] = {
            "tasks": members,
            "sr": Estimate.of([np.mean([table[t][s][0] for t in members]) for s in covered]),
            "atp": Estimate.of([np.mean([table[t][s][1] for t in members]) for s in covered])}
    return out
