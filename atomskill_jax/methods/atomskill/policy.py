"""AtomSkill at inference (paper sec. 3.3), batched over B environments.

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

Batching: environments in different phases share one jitted call. A call that must
start a skill anywhere runs sampler + decoder for the whole batch and keeps the new
tokens only where a skill starts (masks); otherwise only the decoder runs. Both
functions are compiled for the batch size at `reset`, before the first episode.

The ACT-like baseline (`decoder.skill_conditioning=False`) is the same class with no
skills: the decoder alone, re-queried every `requery_every` steps (chunk execution)
or every step with ensembling.

Normalisation uses the statistics saved in the checkpoint's assets (see
`loading.load_policy`), never recomputed: observations in with `observation/*`,
chunks out with the action space's field, and the trigger's absolute target in with
`action_abs` (the keypose's field).
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from atomskill_jax.policies import chaining
from atomskill_jax.policies.base import Policy, PolicySpec, TaskInfo, batch_size


@dataclasses.dataclass(frozen=True)
class RuntimeOptions:
    """Inference knobs (all picklable; `load_policy(**options)` takes them by name)."""

    epsilon: float | None = None  # None: the workdir's calibration (see `calibration`)
    requery_every: int = 1  # k: decoder calls within a skill every k steps
    max_skill_steps: int | None = None  # None: the calibration's (1.5 x longest segment)
    min_skill_steps: int = 1
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
        if self.resample_every is not None and int(self.resample_every) < 0:
            raise ValueError(f"resample_every must be >= 0 (0: hold skills until the "
                             f"keypose trigger), got {self.resample_every}")
    num_steps: int | None = None  # DDIM steps (None: config)
    guidance: float | None = None  # classifier-free guidance (None: config)
    seed: int = 0
    dataset_index: int = 0  # which dataset's statistics (multi-dataset runs)
    embodiment: str = "auto"  # delta->absolute adapter (adapters.adapter_for)
    name: str | None = None


def resolve_ensemble_m(given, model_config) -> float | None:
    """The ensembling weight a policy runs with: the option, else the model config's
    `decoder.ensemble_m`; None when off."""
    if given == "off":
        return None
    if given is not None:
        return float(given)
    default = (model_config.get("decoder") or {}).get("ensemble_m")
    return None if default is None else float(default)


class AtomSkillPolicy(Policy):
    """See the module docstring. Built by `loading.load_policy` from a workdir."""

    def __init__(self, model, config, normalizer, adapter, options: RuntimeOptions, *,
                 epsilon: float, max_skill_steps: int):
        self.config = config
        self.options = options
        self.normalizer = normalizer
        self.adapter = adapter
        self.epsilon = float(epsilon)
        self.max_skill_steps = int(max_skill_steps)
        m = config.model
        self.skills = bool(m.decoder.skill_conditioning)
        self.resample_every = 0 if not self.skills else int(
            options.resample_every if options.resample_every is not None
            else m.sampler.get("resample_every", 0))
        self.ensemble_m = resolve_ensemble_m(options.ensemble_m, m)
        self.has_keypose = bool(m.decoder.predict_keypose)
        self.horizon, self.action_dim = int(m.horizon), int(m.action_dim)
        self.cameras = tuple(m.cameras)
        self.use_state = int(m.state_dim) > 0
        keys = (("state",) if self.use_state else ()) + ("proprio",) + tuple(
            f"image_{c}" for c in self.cameras) + ("language_embedding",)
        default_name = "atomskill" if self.skills else "act_like"
        self.spec = PolicySpec(name=options.name or default_name,
                               action_space=config.data.action_space, action_dim=self.action_dim,
                               observation_keys=keys, image_size=tuple(config.data.image_size))
        graphdef, state = nnx.split(model)
        self._state = state
        num_steps, guidance = options.num_steps, options.guidance

        def decode(state, obs, lang, tokens):
            model = nnx.merge(graphdef, state)
            return model.predict_actions(obs, lang, tokens)

        def sample_decode(state, key, counter, obs, lang, tokens, starting, skill_step):
            model = nnx.merge(graphdef, state)
            new = model.sample_skill(jax.random.fold_in(key, counter), obs, lang,
                                     num_steps=num_steps, guidance=guidance,
                                     skill_step=skill_step)
            tokens = jnp.where(starting[:, None, None], new, tokens)
            chunk, keypose = model.predict_actions(obs, lang, tokens)
            return tokens, chunk, keypose

        self._decode = jax.jit(decode)
        self._sample_decode = jax.jit(sample_decode) if self.skills else None
        self._num_tokens, self._d_model = int(m.skill_encoder.num_tokens), int(m.d_model)
        self._warm: set[int] = set()
        self._batch = 0

    # -- episodes ------------------------------------------------------------------
    def reset(self, task_info: Sequence[TaskInfo]) -> None:
        b = len(task_info)
        self.warmup(b)
        first = task_info[0]
        # Reproducible per batch of episodes, whatever this worker ran before.
        seed = zlib.crc32(f"{self.options.seed}/{first.seed}/{first.layout}/{b}".encode())
        self._key = jax.random.PRNGKey(seed)
        self._counter = 0
        self._batch = b
        self._chunks = chaining.ChunkBuffer(b, self.horizon, self.action_dim,
                                            requery_every=self.options.requery_every,
                                            ensemble_m=self.ensemble_m)
        self._trigger = chaining.SkillTrigger(b, epsilon=self.epsilon,
                                              max_skill_steps=self.max_skill_steps,
                                              min_skill_steps=self.options.min_skill_steps)
        self._tokens = jnp.zeros((b, self._num_tokens, self._d_model), jnp.float32)
        self._keypose = np.full((b, self.action_dim), np.nan, np.float32)  # normalised abs
        self.last_distance = np.full(b, np.nan)

    def warmup(self, b: int) -> None:
        """Compile the jitted calls for batch size `b` (once per size)."""
        if b in self._warm:
            return
        obs = {"proprio": np.zeros((b, int(self.config.model.proprio_dim)), np.float32)}
        if self.use_state:
            obs["state"] = np.zeros((b, int(self.config.model.state_dim)), np.float32)
        size = tuple(self.config.data.image_size)
        for cam in self.cameras:
            obs[f"image_{cam}"] = np.zeros((b, *size, 3), np.uint8)
        lang = np.zeros((b, int(self.config.model.language_dim)), np.float32)
        if self.skills:
            tokens = jnp.zeros((b, self._num_tokens, self._d_model), jnp.float32)
            out = self._sample_decode(self._state, jax.random.PRNGKey(0), 0, obs, lang, tokens,
                                      np.ones(b, bool), np.zeros(b, np.int32))
            out = self._decode(self._state, obs, lang, out[0])
        else:
            out = self._decode(self._state, obs, lang, None)
        jax.block_until_ready(out)
        self._warm.add(b)

    # -- stepping ------------------------------------------------------------------
    def _model_inputs(self, observation: Mapping[str, np.ndarray]):
        keys = ["proprio"] + (["state"] if self.use_state else []) + [
            f"image_{c}" for c in self.cameras]
        missing = [k for k in keys + ["language_embedding"] if k not in observation]
        if missing:
            raise KeyError(f"policy {self.spec.name!r}: observation lacks {missing} "
                           f"(has {sorted(observation)})")
        batch = {"observation": {k: np.asarray(observation[k]) for k in keys}}
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
        query = self._chunks.needs_query()
        if query.any():
            if starting.any():
                self._tokens, chunk, keypose = self._sample_decode(
                    self._state, self._key, self._counter, obs, lang, self._tokens,
                    jnp.asarray(starting), steps_in)
                self._counter += 1
            else:
                chunk, keypose = self._decode(self._state, obs, lang,
                                              self._tokens if self.skills else None)
            chunk = self.normalizer.unnormalize(
                {"action_chunk": np.asarray(chunk)},
                dataset_index=self.options.dataset_index)["action_chunk"]
            self._chunks.add(chunk, query)
            if keypose is not None:
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
        self.last_distance = chaining.keypose_distance(target, self._keypose)
        return self.last_distance

    def skill_counts(self) -> dict[str, np.ndarray]:
        """Per environment since reset: skills started and skills ended by the cap."""
        return {"skills": self._trigger.switches.copy(), "capped": self._trigger.capped.copy()}


def policy_from_assets(model, assets: dict, options: dict) -> AtomSkillPolicy:
    """The contract's `make_policy`: `options` are `RuntimeOptions` fields (epsilon,
    requery_every, ensemble_m, ...). ε and the step cap come from the option, else the
    checkpoint's calibration (assets), else `calibration.FALLBACK` with a warning."""
    import logging

    import ml_collections

    from atomskill_jax.data.normalization import normalizer_from_config
    from atomskill_jax.data.statistics import DatasetStatistics
    from atomskill_jax.methods.atomskill import calibration
    from atomskill_jax.policies import adapters

    unknown = sorted(set(options) - {f.name for f in dataclasses.fields(RuntimeOptions)})
    if unknown:
        raise ValueError(f"AtomSkill policy: unknown runtime options {unknown} (known: "
                         f"{[f.name for f in dataclasses.fields(RuntimeOptions)]})")
    options = RuntimeOptions(**options)
    config = ml_collections.ConfigDict(assets["config"])
    source = assets.get("source", "the checkpoint's assets")
    stats = [DatasetStatistics.from_json(s, source=source) for s in assets["statistics"]]
    normalizer = normalizer_from_config(config.data, stats)
    skills = bool(config.model.decoder.skill_conditioning)
    calib = assets.get("calibration")
    if calib is None and assets.get("workdir"):
        calib = calibration.read_legacy_calibration(assets["workdir"])
    if calib is None and skills and (options.epsilon is None or options.max_skill_steps is None):
        logging.getLogger(__name__).warning(
            "%s holds no calibration (trained before it was saved with the checkpoints); "
            "using epsilon=%s, max_skill_steps=%s", source, calibration.FALLBACK["epsilon"],
            calibration.FALLBACK["max_skill_steps"])
    calib = calib or calibration.FALLBACK
    epsilon = options.epsilon if options.epsilon is not None else calib["epsilon"]
    cap = options.max_skill_steps if options.max_skill_steps is not None else (
        calib["max_skill_steps"])
    adapter = adapters.adapter_for(options.embodiment, config.data.action_space,
                                   assets.get("datasets", ()))
    return AtomSkillPolicy(model, config, normalizer, adapter, options, epsilon=epsilon,
                           max_skill_steps=cap)
