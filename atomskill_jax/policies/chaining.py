"""Skill chaining bookkeeping for B environments at once, in plain numpy.

The model-free half of AtomSkill inference (paper sec. 3.3), split out so it can be
tested on synthetic predictions:

- `ChunkBuffer`: the action chunks each environment has been given, with their ages;
  says which environments need the decoder again (every `requery_every` steps, when
  the chunk runs out, or when a new skill starts) and which action to execute: the
  newest chunk's action for the current step, or, with temporal ensembling, a
  weighted mean over every buffered chunk's prediction for this step (ACT's
  w_i = exp(-m * i), i = 0 the oldest prediction, i.e. weight ∝ exp(m * age)).
- `SkillTrigger`: per environment, steps spent in the current skill; a new skill is
  due after the step whose executed action came within ε of the predicted keypose
  (distance measured by the caller in normalised absolute action space), or when
  the skill has run `max_skill_steps` steps (a skill whose keypose is never reached
  must not hold the robot forever).

Everything is per-environment with masks, so environments in different skills share
one batched model call.
"""

from __future__ import annotations

import numpy as np


class ChunkBuffer:
    """The last `horizon` chunks of each of B environments (slot 0 the newest).

    `ages[b, j]`: steps since chunk j of env b was predicted (its action for the
    current step is `chunks[b, j, ages[b, j]]`); -1 marks an empty slot.
    """

    def __init__(self, batch: int, horizon: int, action_dim: int, *, requery_every: int = 1,
                 ensemble_m: float | None = None):
        if requery_every < 1:
            raise ValueError(f"requery_every must be >= 1, got {requery_every}")
        self.horizon = int(horizon)
        # A chunk has nothing left after `horizon` steps: re-query by then at the latest.
        self.requery_every = min(int(requery_every), self.horizon)
        self.ensemble_m = ensemble_m
        # Only ensembling reads older chunks; without it one slot is enough.
        slots = self.horizon if ensemble_m is not None else 1
        self.chunks = np.zeros((batch, slots, horizon, action_dim), np.float32)
        self.ages = np.full((batch, slots), -1, np.int64)

    def clear(self, mask) -> None:
        """Forget the chunks of masked environments (new episode or new skill: chunks of
        the previous skill must not be blended into the next one)."""
        self.ages[np.asarray(mask, bool)] = -1

    def needs_query(self) -> np.ndarray:
        """bool[B]: environments whose newest chunk is missing, used up, or due for the
        periodic re-query."""
        newest = self.ages[:, 0]
        return (newest < 0) | (newest >= self.requery_every)

    def add(self, chunks, mask) -> None:
        """Insert new chunks [B, H, A] (age 0) for masked environments; older ones shift."""
        mask = np.asarray(mask, bool)
        if not mask.any():
            return
        self.chunks[mask] = np.roll(self.chunks[mask], 1, axis=1)
        self.ages[mask] = np.roll(self.ages[mask], 1, axis=1)
        self.chunks[mask, 0] = np.asarray(chunks, np.float32)[mask]
        self.ages[mask, 0] = 0

    def action(self) -> np.ndarray:
        """[B, A]: the action for the current step (call after `add`)."""
        if (self.ages[:, 0] < 0).any():
            raise RuntimeError("ChunkBuffer.action: an environment has no chunk; add one first")
        valid = (self.ages >= 0) & (self.ages < self.horizon)  # [B, S]
        idx = np.clip(self.ages, 0, self.horizon - 1)
        per_slot = np.take_along_axis(self.chunks, idx[:, :, None, None], axis=2)[:, :, 0]
        if self.ensemble_m is None:
            return per_slot[:, 0]
        # weight ∝ exp(m * age): older predictions count more (ACT); shifted by the
        # newest age for numerical range, then masked to valid slots.
        logits = self.ensemble_m * (self.ages - self.ages[:, :1]).astype(np.float64)
        weights = np.where(valid, np.exp(logits), 0.0)
        weights /= weights.sum(axis=1, keepdims=True)
        return np.einsum("bs,bsa->ba", weights, per_slot).astype(np.float32)

    def planned(self) -> list[np.ndarray]:
        """Per environment, the newest chunk's actions from the current step on ([h, A],
        empty when none is left): what a client may play while its next request is late."""
        out = []
        for b in range(len(self.ages)):
            age = int(self.ages[b, 0])
            out.append(self.chunks[b, 0, age:].copy() if age >= 0
                       else np.zeros((0, self.chunks.shape[-1]), np.float32))
        return out

    def advance(self) -> None:
        """One step executed: every chunk ages; chunks past their horizon are dropped."""
        live = self.ages >= 0
        self.ages[live] += 1
        self.ages[self.ages >= self.horizon] = -1
        # The newest slot emptied only when no chunk remains (requery catches it first).


def keypose_distance(next_abs_normalised, keypose_normalised) -> np.ndarray:
    """[B]: Euclidean distance in normalised absolute action space."""
    diff = np.asarray(next_abs_normalised, np.float64) - np.asarray(keypose_normalised, np.float64)
    return np.sqrt(np.sum(diff * diff, axis=-1))


class SkillTrigger:
    """When each of B environments is due for its next skill."""

    def __init__(self, batch: int, *, epsilon: float, max_skill_steps: int,
                 min_skill_steps: int = 1, stall_steps: int = 0,
                 stall_tolerance: float = 0.0):
        if max_skill_steps < 1 or min_skill_steps < 1:
            raise ValueError("max_skill_steps and min_skill_steps must be >= 1")
        if stall_steps < 0 or not stall_tolerance >= 0:
            raise ValueError(f"stall_steps ({stall_steps}) and stall_tolerance "
                             f"({stall_tolerance}) must be >= 0")
        self.epsilon = float(epsilon)
        self.max_skill_steps = int(max_skill_steps)
        self.min_skill_steps = int(min_skill_steps)
        # A skill whose distance to its keypose has not dropped below its best by more
        # than `stall_tolerance` for `stall_steps` steps has stopped converging (e.g.
        # hovering beside a slightly mispredicted keypose):
        # it ends like a capped one, without waiting for the cap. 0: off (the paper).
        self.stall_steps = int(stall_steps)
        self.stall_tolerance = float(stall_tolerance)
        self.best = np.full(batch, np.inf)  # smallest distance in the current skill
        self.since_best = np.zeros(batch, np.int64)  # steps since it last improved
        self.stalled = np.zeros(batch, np.int64)  # skills ended by a stall (diagnostics)
        self.steps = np.zeros(batch, np.int64)  # steps executed in the current skill
        self.need_skill = np.ones(batch, bool)  # a new skill before the next action
        self.switches = np.zeros(batch, np.int64)  # skills started so far (diagnostics)
        self.capped = np.zeros(batch, np.int64)  # skills ended by the cap (diagnostics)

    def reset(self, mask=None) -> None:
        mask = np.ones_like(self.need_skill) if mask is None else np.asarray(mask, bool)
        self.steps[mask] = 0
        self.need_skill[mask] = True
        self.switches[mask] = 0
        self.capped[mask] = 0
        self.stalled[mask] = 0
        self.best[mask] = np.inf
        self.since_best[mask] = 0

    def start_skills(self) -> np.ndarray:
        """bool[B]: environments starting a new skill now (call before the model); their
        counters restart."""
        starting = self.need_skill.copy()
        self.steps[starting] = 0
        self.best[starting] = np.inf
        self.since_best[starting] = 0
        self.switches[starting] += 1
        self.need_skill[:] = False
        return starting

    def step(self, distance) -> np.ndarray:
        """Record one executed action per environment; `distance` [B] between that action
        (as an absolute target, normalised) and the skill's predicted keypose, NaN when
        no keypose is predicted. Returns need_skill [B]: a new skill before the next
        action (distance strictly below ε after at least `min_skill_steps` steps, the
        cap reached, or, with `stall_steps`, no progress for that many steps)."""
        distance = np.asarray(distance, np.float64)
        self.steps += 1
        reached = (distance < self.epsilon) & (self.steps >= self.min_skill_steps)
        capped = (self.steps >= self.max_skill_steps) & ~reached
        improved = distance < self.best - self.stall_tolerance  # False for NaN
        self.best = np.where(improved, distance, self.best)
        self.since_best = np.where(improved, 0, self.since_best + 1)
        stalled = np.zeros_like(reached)
        if self.stall_steps > 0:
            stalled = (self.since_best >= self.stall_steps) & np.isfinite(distance)
            stalled &= ~reached & ~capped
        self.capped += capped
        self.stalled += stalled
        self.need_skill = reached | capped | stalled
        return self.need_skill.copy()
