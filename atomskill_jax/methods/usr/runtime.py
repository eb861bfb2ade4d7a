"""The USR policy runtime (numpy, around the program's `predict` function; see
policy.py): per environment an observation history of L normalised frames (reset at
`reset`; the first step fills it with the first observation, as the training examples
pad the episode start), the prior's argmax code and the Gaussian policy's mean chunk,
executed through policies/chaining.ChunkBuffer (re-query every `requery_every` steps;
optional temporal ensembling, ACT's m). The history advances every step, also between
queries.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Mapping, Sequence

import numpy as np

from atomskill_jax.policies import chaining, runtime_settings
from atomskill_jax.policies.base import Policy, TaskInfo, batch_size
from atomskill_jax.policies.program import merged_options


@dataclasses.dataclass(frozen=True)
class USROptions:
    requery_every: int = 1  # a new chunk every k steps
    ensemble_m: float | str | None = None  # ACT's m; "off"; None: model.ensemble_m
    dataset_index: int = 0  # which dataset's statistics (multi-dataset runs)
    name: str | None = None
    seed: int = 0  # unused (the runtime is deterministic), accepted as every policy does

    def __post_init__(self):
        if int(self.requery_every) < 1:
            raise ValueError(f"USR policy option requery_every must be >= 1, got "
                             f"{self.requery_every}")
        m = self.ensemble_m
        if m is not None and m != "off" and (isinstance(m, (str, bool))
                                               or not math.isfinite(float(m))):
            raise ValueError(f"USR policy option ensemble_m must be a finite number, 'off' or "
                             f"None (the config's), got {m!r}")


def parse_options(options: Mapping) -> USROptions:
    known = [f.name for f in dataclasses.fields(USROptions)]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"USR policy: unknown runtime options {unknown} (known: {known})")
    return USROptions(**dict(options))


def resolve_ensemble_m(given, default) -> float | None:
    if given == "off":
        return None
    if given is not None:
        return float(given)
    return None if default is None else float(default)


class USRPolicy(Policy):
    """`functions["predict"](history {key: [B, L, ...]}, language [B, E]) -> (chunk
    [B, H, A] normalised, code [B])`."""

    def __init__(self, functions: Mapping[str, Callable], settings: dict, options: USROptions):
        self.functions, self.settings, self.options = dict(functions), settings, options
        self.normalizer = runtime_settings.normalizer(settings)
        self.spec = runtime_settings.policy_spec(settings, options.name)
        self.horizon, self.history_len = int(settings["horizon"]), int(settings["history"])
        self.ensemble_m = options.ensemble_m
        self.input_spec = runtime_settings.input_spec(settings)
        self._frame_keys = [k for k in self.input_spec if k != "language_embedding"]
        self._warm: set[int] = set()
        self._batch = 0
        self._history = None
        self.last_codes = None  # the prior's code per env at its last query (-1: none)

    def reset(self, task_info: Sequence[TaskInfo]) -> None:
        self._batch = len(task_info)
        self.warmup(self._batch)
        self._history = None  # filled with the first observation at the first infer
        self._chunks = chaining.ChunkBuffer(self._batch, self.horizon, self.spec.action_dim,
                                            requery_every=self.options.requery_every,
                                            ensemble_m=self.ensemble_m)
        self.last_codes = np.full(self._batch, -1, np.int64)

    def warmup(self, b: int) -> None:
        if b in self._warm:
            return
        history = {k: np.zeros((b, self.history_len, *s.shape), s.dtype)
                   for k, s in self.input_spec.items() if k != "language_embedding"}
        self.functions["predict"](history, self.input_spec["language_embedding"].zeros(b))
        self._warm.add(b)

    def _frame(self, observation) -> dict:
        missing = [k for k in self._frame_keys + ["language_embedding"] if k not in observation]
        if missing:
            raise KeyError(f"policy {self.spec.name!r}: observation lacks {missing} "
                           f"(has {sorted(observation)})")
        batch = {"observation": {k: np.asarray(observation[k]) for k in self._frame_keys}}
        return self.normalizer.normalize(batch, dataset_index=self.options.dataset_index)[
            "observation"]

    def _push(self, frame: dict) -> None:
        if self._history is None:
            self._history = {k: np.repeat(np.asarray(v)[:, None], self.history_len, axis=1)
                             for k, v in frame.items()}
            return
        for k, v in frame.items():
            h = self._history[k]
            h[:, :-1] = h[:, 1:]
            h[:, -1] = v

    @property
    def history(self) -> dict | None:
        """The current history {key: [B, L, ...]} (normalised), the newest frame last."""
        return self._history

    def infer(self, observation: Mapping[str, np.ndarray]) -> np.ndarray:
        b = batch_size(observation)
        if b != self._batch:
            raise ValueError(f"policy {self.spec.name!r}: {b} observations after reset() with "
                             f"{self._batch} environments; call reset first")
        self._push(self._frame(observation))
        query = self._chunks.needs_query()
        if query.any():
            language = np.asarray(observation["language_embedding"], np.float32)
            chunk, codes = self.functions["predict"](self._history, language)
            chunk = self.normalizer.unnormalize(
                {"action_chunk": np.asarray(chunk)},
                dataset_index=self.options.dataset_index)["action_chunk"]
            self._chunks.add(chunk, query)
            self.last_codes = np.where(query, np.asarray(codes), self.last_codes)
        action = self._chunks.action()
        self._chunks.advance()
        return action

    def planned_actions(self) -> list[np.ndarray]:
        return self._chunks.planned()


def build(functions: Mapping[str, Callable], settings: dict, overrides: Mapping) -> USRPolicy:
    """The program runtime factory (policies/program.py)."""
    options = merged_options(settings, overrides, what="USR policy")
    if overrides.get("ensemble_m") is not None:
        options["ensemble_m"] = resolve_ensemble_m(overrides["ensemble_m"], None)
    opts = USROptions(**options)
    runtime_settings.check_dataset_index(settings, opts.dataset_index, "USR policy")
    return USRPolicy(functions, settings, opts)
