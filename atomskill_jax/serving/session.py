"""One connection's episode: its own policy runtime (batch of one environment) over the
shared batched functions, request validation, and the reply. Runs in a worker thread.

Requests are checked against the policy's input spec before anything runs; what is
wrong is raised as `RequestError(code, field, message)` and becomes an error reply,
leaving the connection and the policy state as they were.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Mapping

import numpy as np

from atomskill_jax.policies.base import TaskInfo
from atomskill_jax.policies.program import ArraySpec

ID_TYPES = (int, str)
TASK_FIELDS = {"task": str, "instruction": str, "layout": int, "seed": int, "episode": int}


class RequestError(Exception):
    def __init__(self, code: str, field: str | None, message: str):
        super().__init__(message)
        self.code, self.field, self.message = code, field, message


def request_id(request) -> object:
    rid = request.get("id") if isinstance(request, dict) else None
    if rid is not None and (not isinstance(rid, ID_TYPES) or isinstance(rid, bool)
                            or (isinstance(rid, str) and len(rid) > 128)):
        return None
    return rid


def check_observation(observation, spec: Mapping[str, ArraySpec], optional=()) -> dict:
    """{key: array [1, ...]}: exactly the spec's keys (those in `optional` may be left
    out), each with its dtype and shape, floats finite."""
    if not isinstance(observation, dict):
        raise RequestError("bad_request", "observation",
                           f"must be a map of arrays, got {type(observation).__name__}")
    unknown = sorted(set(observation) - set(spec))
    if unknown:
        raise RequestError("bad_request", f"observation.{unknown[0]}",
                           f"unknown key (the policy reads {sorted(spec)})")
    out = {}
    for key, want in spec.items():
        field = f"observation.{key}"
        if key not in observation:
            if key in optional:
                continue
            raise RequestError("bad_request", field, "missing")
        value = observation[key]
        if not isinstance(value, np.ndarray):
            raise RequestError("bad_request", field,
                               f"must be an array, got {type(value).__name__}")
        if value.dtype != np.dtype(want.dtype):
            raise RequestError("bad_request", field,
                               f"dtype {value.dtype.name}, expected {want.dtype}")
        if tuple(value.shape) != tuple(want.shape):
            raise RequestError("bad_request", field,
                               f"shape {list(value.shape)}, expected {list(want.shape)}")
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise RequestError("bad_request", field, "holds NaN or infinite values")
        out[key] = value[None]
    return out


def check_task(task) -> TaskInfo:
    if task is None:
        task = {}
    if not isinstance(task, dict):
        raise RequestError("bad_request", "task", f"must be a map, got {type(task).__name__}")
    unknown = sorted(set(task) - set(TASK_FIELDS))
    if unknown:
        raise RequestError("bad_request", f"task.{unknown[0]}",
                           f"unknown field (known: {sorted(TASK_FIELDS)})")
    values = {}
    for name, kind in TASK_FIELDS.items():
        value = task.get(name, "" if kind is str else 0)
        if kind is int and (not isinstance(value, int) or isinstance(value, bool)
                            or not -2**62 < value < 2**62):
            raise RequestError("bad_request", f"task.{name}", "must be an integer")
        if kind is str and (not isinstance(value, str) or len(value) > 4096):
            raise RequestError("bad_request", f"task.{name}", "must be a string (<= 4096 chars)")
        values[name] = value
    return TaskInfo(task=values["task"], instruction=values["instruction"],
                    layout=values["layout"], seed=values["seed"], episode=values["episode"])


class Session:
    """`make_policy()` builds this connection's runtime; `embed(text) -> [E]` gives the
    instruction embedding when the client sends none (None: the client must)."""

    def __init__(self, make_policy: Callable, spec: Mapping[str, ArraySpec], timing,
                 embed: Callable | None = None):
        self.policy = make_policy()
        self.spec = dict(spec)
        self.timing = timing
        self.embed = embed
        self.language = None  # the episode's instruction embedding [1, E] (server-side)
        self.episode = False

    def handle(self, request: dict) -> dict:
        kind = request.get("type")
        if kind == "reset":
            return self.reset(request)
        if kind == "infer":
            return self.infer(request)
        raise RequestError("bad_request", "type",
                           f"unknown request type {kind!r} (reset, infer)")

    def reset(self, request: dict) -> dict:
        info = check_task(request.get("task"))
        language = None
        if "language_embedding" in self.spec and self.embed is not None:
            language = np.asarray(self.embed(info.instruction), np.float32)[None]
        self.timing.reset()
        self.policy.reset([info])
        self.language, self.episode = language, True
        return {"type": "reset", "id": request_id(request)}

    def infer(self, request: dict) -> dict:
        received = time.perf_counter()
        if not self.episode:
            raise RequestError("no_episode", None, "send a reset before the first infer")
        timestamp = request.get("timestamp")
        if timestamp is not None and (not isinstance(timestamp, (int, float))
                                      or isinstance(timestamp, bool)
                                      or not math.isfinite(timestamp)):
            raise RequestError("bad_request", "timestamp", "must be a finite number (seconds)")
        optional = ("language_embedding",) if self.language is not None else ()
        obs = check_observation(request.get("observation"), self.spec, optional)
        if "language_embedding" in self.spec and "language_embedding" not in obs:
            obs["language_embedding"] = self.language
        self.timing.reset()
        action = np.asarray(self.policy.infer(obs))[0]
        actions = action[None] if action.ndim == 1 else action
        reply = {"type": "action", "id": request_id(request), "timestamp": timestamp,
                 "actions": actions.astype(np.float32)}
        planned = getattr(self.policy, "planned_actions", None)
        if planned is not None:
            reply["chunk"] = np.asarray(planned()[0], np.float32)
        skill = getattr(self.policy, "skill_state", None)
        if skill is not None and getattr(self.policy, "skills", False):
            state = skill()
            reply["skill"] = {"steps": int(state["steps"][0]),
                              "starting": bool(state["starting"][0])}
            if np.isfinite(state["keypose"][0]).all():
                reply["keypose"] = state["keypose"][0].astype(np.float32)
        total = time.perf_counter() - received
        reply["timing"] = {"queue_ms": 1e3 * self.timing.queue, "infer_ms": 1e3 * self.timing.infer,
                           "total_ms": 1e3 * total}
        return reply
