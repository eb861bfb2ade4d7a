"""A policy as a *program*: pure batched model functions plus a numpy runtime.

Every method's policy is split in two so the same runtime runs in-process, from an
exported artefact (export/) and behind the server (serving/):

- `functions`: named pure functions `fn(params, *inputs) -> outputs` over arrays, each
  input and output batched along axis 0 (one row per environment, rows independent),
  so callers may stack rows of several environments (the server batches connections)
  and export them with a symbolic batch dimension. `params` is the flat
  {name: array} of the model's variables (`Program.params`), passed as an argument,
  never baked in.
- `runtime`: "module:callable" of a factory `build(functions, settings, overrides) ->
  Policy` whose module imports only numpy, jax and the numpy-only parts of the
  library (normalisation, chaining, adapters): the stateful parts (skill chaining,
  ensembling buffers, histories) run there, around `functions[name](*inputs)`.
- `settings`: JSON-able, everything the runtime needs (statistics under
  "statistics", the method's calibration under "calibration", resolved runtime options
  under "options"; `traced_options` names the options baked into the functions).

Nothing here imports flax: the exported loader uses this module.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, Mapping

import numpy as np


@dataclasses.dataclass(frozen=True)
class ArraySpec:
    """One array input of a model function, without its batch axis."""

    shape: tuple[int, ...]
    dtype: str

    def to_json(self) -> dict:
        return {"shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_json(cls, data: Mapping) -> "ArraySpec":
        return cls(tuple(int(d) for d in data["shape"]), str(data["dtype"]))

    def zeros(self, batch: int) -> np.ndarray:
        return np.zeros((batch, *self.shape), self.dtype)


@dataclasses.dataclass(frozen=True)
class ModelFunction:
    """`fn(params, *inputs)`; `inputs`: one pytree of ArraySpec per positional input."""

    fn: Callable
    inputs: tuple


@dataclasses.dataclass
class Program:
    method: str
    functions: dict[str, ModelFunction]
    params: dict[str, np.ndarray]
    runtime: str
    settings: dict


def example_inputs(inputs, batch: int):
    """Zeros for every ArraySpec of a function's inputs (warm-up, tests)."""
    return _map_specs(lambda s: s.zeros(batch), inputs)


def _map_specs(fn, tree):
    if isinstance(tree, ArraySpec):
        return fn(tree)
    if isinstance(tree, Mapping):
        return {k: _map_specs(fn, v) for k, v in tree.items()}
    if isinstance(tree, (tuple, list)):
        return type(tree)(_map_specs(fn, v) for v in tree)
    if tree is None:
        return None
    raise TypeError(f"model function inputs: expected ArraySpec, dict, tuple or None, got "
                    f"{type(tree).__name__}")


def specs_to_json(tree) -> Any:
    """ArraySpec pytrees as JSON (dicts keep their keys; tuples become lists)."""
    if isinstance(tree, ArraySpec):
        return {"__array__": tree.to_json()}
    if isinstance(tree, Mapping):
        return {"__dict__": {k: specs_to_json(v) for k, v in tree.items()}}
    if isinstance(tree, (tuple, list)):
        return [specs_to_json(v) for v in tree]
    return None


def specs_from_json(data) -> Any:
    if data is None:
        return None
    if isinstance(data, list):
        return tuple(specs_from_json(v) for v in data)
    if "__array__" in data:
        return ArraySpec.from_json(data["__array__"])
    return {k: specs_from_json(v) for k, v in data["__dict__"].items()}


def import_runtime(path: str) -> Callable:
    module, _, attr = path.partition(":")
    try:
        factory = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"policy runtime {path!r} cannot be imported: {err}") from err
    return factory


def build_runtime(runtime: str, functions: Mapping[str, Callable], settings: dict,
                  overrides: Mapping | None = None):
    """The Policy a program's runtime factory builds around callable functions."""
    return import_runtime(runtime)(dict(functions), settings, dict(overrides or {}))


def merged_options(settings: Mapping, overrides: Mapping, *, what: str) -> dict:
    """settings["options"] updated with `overrides` (None values dropped); options baked
    into the traced functions cannot change after export/jit."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    options = dict(settings.get("options", {}))
    unknown = sorted(set(overrides) - set(options))
    if unknown:
        raise ValueError(f"{what}: unknown runtime options {unknown} (known: {sorted(options)})")
    traced = sorted(k for k in overrides if k in settings.get("traced_options", ())
                    and overrides[k] != options[k])
    if traced:
        raise ValueError(f"{what}: options {traced} are compiled into the model functions "
                         f"(fixed when the policy was exported or loaded); export again with "
                         f"them set")
    options.update(overrides)
    return options
