"""AtomSkill at inference (paper sec. 3.3), batched over B environments: the numpy
runtime around the model functions of `policy.make_program` (policies/program.py).

Per environment: when a skill starts, the diffusion sampler draws skill tokens
(snapped onto the codebook by `AtomSkill.sample_skill`); the decoder gives an action
chunk and the skill's keypose; actions are executed; after each executed action,
that action as an absolute target (the embodiment adapter turns a delta into one,
`adapters`) is compared with the predicted keypose in normalised absolute action
space, and once closer than ε (or after `max_skill_steps`) the next skill is sampled
before the next action. The decoder is re-queried every `requery_every` steps within
a skill (default 1: every step, our reading of the paper, whose trigger is evaluated
on each step's predicted next action), optionally with ACT's temporal ensembling of
overlapping chunks (`ensemble_m`). The bookkeeping lives in `chaining` (numpy).

Re-sampling within a skill (`resample_every` = r > 0; not in the paper): every r steps
of a skill its tokens are drawn again, the sampler told how many steps into the skill
it is (`sampler.condition_on_skill_step`). The skill keeps its step count and trigger;
only its tokens follow the current observation. Held skills (r = 0, the paper) leave a
wrong draw in charge until the keypose is reached, and a missed grasp is retried with
the same wrong tokens (measured, cpu config, rlbench6 eval layouts, 10 episodes per
task: 55% success held, 83% with r = 8).

Randomness: each environment draws from its own key, `key(seed_b)` folded with the
number of draws it has made since `reset`, where seed_b = crc32 of
"<options.seed>/<task>/<seed>/<layout>/<episode>" of its TaskInfo. An environment's
skills therefore depend on its own episode only, not on which environments share its
batch (so the policy server, which batches connections, reproduces in-process runs).

Batching: environments in different phases share one call. A call that must start a
skill anywhere runs `sample_decode` (sampler + decoder) for the whole batch and keeps
the new tokens only where a skill starts (masks); otherwise `decode` (the decoder)
runs. Both are compiled for the batch size at `reset`, before the first episode.

The ACT-like baseline (`decoder.skill_conditioning=False`) is the same class with no
skills: the decoder alone, re-queried every `requery_every` steps (chunk execution)
or every step with ensembling.

Normalisation uses the statistics saved in the checkpoint's assets, never
recomputed: observations in with `observation/*`, chunks out with the action space's
field, and the trigger's absolute target in with `action_abs` (the keypose's field).
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from typing import Callable, Mapping, Sequence

import numpy as np

from atomskill_jax.policies import adapters, chaining, runtime_settings
from atomskill_jax.policies.base import Policy, TaskInfo, batch_size
from atomskill_jax.policies.program import merged_options


@dataclasses.dataclass(frozen=True)
class RuntimeOptions:
    """Inference knobs (all picklable; `load_policy(**options)` takes them by name)."""

    epsilon: float | None = None  # None: the workdir's calibration (see `calibration`)
    requery_every: int = 1  # k: decoder calls within a skill every k steps
    max_skill_steps: int | None = None  # None: the calibration's (1.5 x longest segment)
    min_skill_steps: int = 1
    # End a skill whose keypose distance has not improved on its best by more than
    # `stall_tolerance` (normalised units) for `stall_steps` steps (not in the paper;
    # `chaining.SkillTrigger`). None: off; the tolerance None: a quarter of ε.
    stall_steps: int | None = None
    stall_tolerance: float | None = None
    # Temporal ensembling weight m (ACT: 0.01); "off"; None: the model config's
    # `decoder.ensemble_m` (absent or None there: off).
    ensemble_m: float | str | None = None
    # r > 0: the current skill is sampled again every r steps, ρ told how far into the
    # skill it is (sampler.condition_on_skill_step); 0: held until the trigger (the
    # paper); None: the model config's `sampler.resample_every`.
    resample_every: int | None = None

    def __post_init__(self):
        m = self.ensemble_m
        if m is not None and m != "off" and (isinstance(m, (str, bool))
                                               or not math.isfinite(float(m))):
            raise ValueError(f"ensemble_m must be a finite number, 'off' or None "
                             f"(the config's), got {m!r}")
        if self.stall_steps is not None and int(self.stall_steps) < 0:
            raise ValueError(f"stall_steps must be >= 0 (0: off), got {self.stall_steps}")
        if self.stall_tolerance is not None and not float(self.stall_tolerance) >= 0:
            raise ValueError(f"stall_tolerance must be >= 0, got {self.stall_tolerance}")
        if self.resample_every is not None and int(self.resample_every) < 0:
            raise ValueError(f"resample_every must be >= 0 (0: hold skills until the "
                             f"keypose trigger), got {self.resample_every}")
    # Which action dimensions the keypose trigger compares (e.g. (0, 1, 2): MetaWorld's
    # hand position, not its gripper command); None: the calibration's, else all.
    # Segments are cut where the gripper command flips, so within a skill the command is
    # constant and only the keyframe step carries the new one: a trigger on the whole
    # action fires only if the decoder emits that one step under the current skill.
    trigger_dims: tuple[int, ...] | None = None
    num_steps: int | None = None  # DDIM steps (None: config)
    guidance: float | None = None  # classifier-free guidance (None: config)
    seed: int = 0
    dataset_index: int = 0  # which dataset's statistics (multi-dataset runs)
    embodiment: str = "auto"  # delta->absolute adapter (adapters.adapter_for)
    name: str | None = None


# Options compiled into the sampler's function (they shape its graph).
TRACED_OPTIONS = ("num_steps", "guidance")


def resolve_ensemble_m(given, model_config) -> float | None:
    """The ensembling weight a policy runs with: the option, else the model config's
    `decoder.ensemble_m`; None when off."""
    if given == "off":
        return None
    if given is not None:
        return float(given)
    default = (model_config.get("decoder") or {}).get("ensemble_m")
    return None if default is None else float(default)


def episode_seed(seed: int, info: TaskInfo) -> int:
    """An environment's sampling seed (module docstring)."""
    return zlib.crc32(f"{seed}/{info.task}/{info.seed}/{info.layout}/{info.episode}".encode())


class AtomSkillPolicy(Policy):
    """See the module docstring. `functions`: `decode(obs, lang[, tokens]) -> (chunk,
    keypose)` and, with skills, `sample_decode(obs, lang, tokens, starting, skill_step,
    seeds, draws) -> (tokens, chunk, keypose)`; chunks normalised, keyposes in
    normalised absolute action space."""

    def __init__(self, functions: Mapping[str, Callable], settings: dict,
                 options: RuntimeOptions, adapter):
        self.functions, self.settings, self.options = dict(functions), settings, options
        self.normalizer = runtime_settings.normalizer(settings)
        self.adapter = adapter
        self.epsilon = float(options.epsilon)
        self.trigger_dims = (None if options.trigger_dims is None
                             else np.asarray(options.trigger_dims, np.int64))
        self.max_skill_steps = int(options.max_skill_steps)
        self.skills = bool(settings["skills"])
        self.resample_every = int(options.resample_every) if self.skills else 0
        self.ensemble_m = options.ensemble_m
        self.has_keypose = bool(settings["has_keypose"])
        # "relative": the model predicts the keypose minus the query step's own target
        # (config decoder.keypose_frame); it is anchored on the executed action's target.
        self.relative_keypose = settings.get("keypose_frame", "absolute") == "relative"
        self.spec = runtime_settings.policy_spec(settings, options.name)
        self.horizon, self.action_dim = int(settings["horizon"]), int(self.spec.action_dim)
        self.input_spec = runtime_settings.input_spec(settings)
        self._obs_keys = [k for k in self.input_spec if k != "language_embedding"]
        self._num_tokens, self._d_model = int(settings["num_tokens"]), int(settings["d_model"])
        self._warm: set[int] = set()
        self._batch = 0

    # -- episodes ------------------------------------------------------------------
    def reset(self, task_info: Sequence[TaskInfo]) -> None:
        b = len(task_info)
        self.warmup(b)
        self._seeds = np.array([episode_seed(self.options.seed, t) for t in task_info],
                               np.uint32)
        self._draws = np.zeros(b, np.int32)  # sampler draws per environment since reset
        self.adapter.reset([t.task for t in task_info])  # its commanded target starts anew
        self._batch = b
        self._chunks = chaining.ChunkBuffer(b, self.horizon, self.action_dim,
                                            requery_every=self.options.requery_every,
                                            ensemble_m=self.ensemble_m)
        self._trigger = chaining.SkillTrigger(b, epsilon=self.epsilon,
                                              max_skill_steps=self.max_skill_steps,
                                              min_skill_steps=self.options.min_skill_steps,
                                              stall_steps=int(self.options.stall_steps),
                                              stall_tolerance=float(self.options.stall_tolerance))
        self._tokens = np.zeros((b, self._num_tokens, self._d_model), np.float32)
        self._keypose = np.full((b, self.action_dim), np.nan, np.float32)  # normalised abs
        self._offset = np.zeros((b, self.action_dim), np.float32)  # relative: to anchor
        self._anchor = np.zeros(b, bool)  # relative: a new offset waits for its anchor
        self._forced = np.zeros(b, bool)  # see force_skill
        self._forced_tokens = np.zeros_like(self._tokens)
        self.last_distance = np.full(b, np.nan)

    def warmup(self, b: int) -> None:
        """Compile the model functions for batch size `b` (once per size)."""
        if b in self._warm:
            return
        zeros = {k: s.zeros(b) for k, s in self.input_spec.items()}
        lang = zeros.pop("language_embedding")
        if self.skills:
            tokens = np.zeros((b, self._num_tokens, self._d_model), np.float32)
            out = self.functions["sample_decode"](zeros, lang, tokens, np.ones(b, bool),
                                                  np.zeros(b, np.int32), np.zeros(b, np.uint32),
                                                  np.zeros(b, np.int32))
            self.functions["decode"](zeros, lang, out[0])
        else:
            self.functions["decode"](zeros, lang)
        self._warm.add(b)

    # -- stepping ------------------------------------------------------------------
    def _model_inputs(self, observation: Mapping[str, np.ndarray]):
        missing = [k for k in self._obs_keys + ["language_embedding"] if k not in observation]
        if missing:
            raise KeyError(f"policy {self.spec.name!r}: observation lacks {missing} "
                           f"(has {sorted(observation)})")
        batch = {"observation": {k: np.asarray(observation[k]) for k in self._obs_keys}}
        obs = self.normalizer.normalize(batch, dataset_index=self.options.dataset_index)
        lang = np.asarray(observation["language_embedding"], np.float32)
        return obs["observation"], lang

    def infer(self, observation: Mapping[str, np.ndarray]) -> np.ndarray:
        b = batch_size(observation)
        if b != self._batch:
            raise ValueError(f"policy {self.spec.name!r}: {b} observations after reset() with "
                             f"{self._batch} environments; call reset first")
        obs, lang = self._model_inputs(observation)
        starting = self._trigger.start_skills() if self.skills else np.zeros(b, bool)
        steps_in = self._trigger.steps.astype(np.int32) if self.skills else np.zeros(b, np.int32)
        r = self.resample_every
        if r > 0:
            starting = starting | ((steps_in > 0) & (steps_in % r == 0))
        self._chunks.clear(starting)
        forced = starting & self._forced
        if forced.any():
            self._tokens[forced] = self._forced_tokens[forced]
            self._forced &= ~forced
        sampling = starting & ~forced
        query = self._chunks.needs_query()
        if query.any():
            if sampling.any():
                tokens, chunk, keypose = self.functions["sample_decode"](
                    obs, lang, self._tokens, sampling, steps_in, self._seeds, self._draws)
                self._tokens = np.array(tokens, np.float32)  # writable (force_skill)
                self._draws = self._draws + sampling.astype(np.int32)
            elif self.skills:
                chunk, keypose = self.functions["decode"](obs, lang, self._tokens)
            else:
                chunk, keypose = self.functions["decode"](obs, lang)
            chunk = self.normalizer.unnormalize(
                {"action_chunk": np.asarray(chunk)},
                dataset_index=self.options.dataset_index)["action_chunk"]
            self._chunks.add(chunk, query)
            if keypose is not None and self.relative_keypose:
                self._offset[query] = np.asarray(keypose)[query]
                self._anchor |= query
            elif keypose is not None:
                self._keypose[query] = np.asarray(keypose)[query]
        action = self._chunks.action()
        self._chunks.advance()
        if self.skills:
            self._trigger.step(self._distance(action, observation))
        return action

    def _distance(self, action: np.ndarray, observation) -> np.ndarray:
        """[B] distance of the executed action (as an absolute target) to the keypose,
        in normalised absolute action space; NaN without keypose prediction."""
        if not self.has_keypose:
            self.last_distance = np.full(len(action), np.nan)
            return self.last_distance
        target = self.adapter.to_absolute(action, observation)
        # The normaliser's "keypose" key is normalised with the action_abs statistics.
        target = self.normalizer.normalize({"keypose": target},
                                           dataset_index=self.options.dataset_index)["keypose"]
        if self.relative_keypose and self._anchor.any():
            # The offset was predicted from this step's target: k = target + offset, so at
            # a query step the distance is the predicted offset's own norm.
            a = self._anchor
            self._keypose[a] = target[a] + self._offset[a]
            self._anchor[:] = False
        keypose = self._keypose
        if self.trigger_dims is not None:
            target, keypose = target[:, self.trigger_dims], keypose[:, self.trigger_dims]
        self.last_distance = chaining.keypose_distance(target, keypose)
        return self.last_distance

    def force_skill(self, tokens: np.ndarray, which: np.ndarray) -> None:
        """Teacher forcing, for diagnosis (bench/held_skills.py): each environment in
        `which` [B] takes `tokens` [B, n, d] (e.g. the skill encoder's tokens of the true
        future segment) for the next skill it starts, instead of a sampler draw. Its draw
        count is unchanged, so its later draws are those of an unforced run."""
        which = np.asarray(which, bool)
        self._forced_tokens[which] = np.asarray(tokens, np.float32)[which]
        self._forced |= which

    def skill_counts(self) -> dict[str, np.ndarray]:
        """Per environment since reset: skills started, and skills ended by the cap and by
        a stall."""
        return {"skills": self._trigger.switches.copy(), "capped": self._trigger.capped.copy(),
                "stalled": self._trigger.stalled.copy()}

    def skill_state(self) -> dict[str, np.ndarray]:
        """Per environment: steps into the current skill, whether the next step starts
        one, the predicted keypose (un-normalised absolute target; NaN: none) and the
        current skill tokens [n, d]."""
        keypose = self.normalizer.unnormalize(
            {"keypose": self._keypose}, dataset_index=self.options.dataset_index)["keypose"]
        return {"steps": self._trigger.steps.copy(), "starting": self._trigger.need_skill.copy(),
                "keypose": keypose, "tokens": self._tokens.copy()}

    def planned_actions(self) -> list[np.ndarray]:
        """Per environment, the newest chunk's actions from the next step on."""
        return self._chunks.planned()


def build(functions: Mapping[str, Callable], settings: dict, overrides: Mapping):
    """The program runtime factory (policies/program.py)."""
    options = merged_options(settings, overrides, what="AtomSkill policy")
    if overrides.get("ensemble_m") is not None:
        options["ensemble_m"] = resolve_ensemble_m(overrides["ensemble_m"], {})
    opts = RuntimeOptions(**options)
    runtime_settings.check_dataset_index(settings, opts.dataset_index, "AtomSkill policy")
    adapter = (adapters.ADAPTERS[settings["adapter"]]() if opts.embodiment == "auto"
               else adapters.adapter_for(opts.embodiment, settings["spec"]["action_space"]))
    return AtomSkillPolicy(functions, settings, opts, adapter)
