"""What the server serves: a program's functions, its runtime and settings, from an
exported directory (jax + numpy only) or from a training workdir (the in-process jitted
functions), and the identity the metadata frame reports (hashes of the statistics and
parameters)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Callable

import numpy as np

from atomskill_jax.policies.program import specs_from_json


@dataclasses.dataclass
class ServedPolicy:
    method: str
    runtime: str
    settings: dict
    functions: dict[str, Callable]
    inputs: dict[str, tuple]  # per function: its ArraySpec inputs
    params_sha256: str
    statistics_sha256: str
    source: str


def statistics_sha256(statistics) -> str:
    return hashlib.sha256(json.dumps(statistics, sort_keys=True).encode()).hexdigest()


def params_sha256(params: dict) -> str:
    digest = hashlib.sha256()
    for name in sorted(params):
        array = np.asarray(params[name])
        digest.update(name.encode())
        digest.update(array.dtype.str.encode())
        digest.update(str(array.shape).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def from_exported(directory: str) -> ServedPolicy:
    from atomskill_jax.export import loader

    functions, runtime, settings, manifest = loader.load_parts(directory)
    inputs = {name: specs_from_json(entry["inputs"])
              for name, entry in manifest["functions"].items()}
    return ServedPolicy(method=manifest["method"], runtime=runtime, settings=settings,
                        functions=functions, inputs=inputs,
                        params_sha256=manifest["files"]["params.safetensors"],
                        statistics_sha256=statistics_sha256(settings["statistics"]),
                        source=directory)


def from_workdir(workdir: str, step: int | None = None, options: dict | None = None) -> ServedPolicy:
    from atomskill_jax.methods import registry
    from atomskill_jax.policies.in_process import jitted_functions
    from atomskill_jax.policies.loading import load_model

    model, config, assets, step = load_model(workdir, step=step)
    spec = registry.get_spec(config)
    if spec.make_program is None:
        raise ValueError(f"method {spec.name!r} has no make_program: it cannot be served")
    assets = dict(assets, workdir=workdir, source=f"{workdir} checkpoint {step} assets")
    program = spec.make_program(model, assets, {k: v for k, v in (options or {}).items()
                                                if v is not None})
    return ServedPolicy(method=program.method, runtime=program.runtime,
                        settings=program.settings, functions=jitted_functions(program),
                        inputs={n: f.inputs for n, f in program.functions.items()},
                        params_sha256=params_sha256(program.params),
                        statistics_sha256=statistics_sha256(program.settings["statistics"]),
                        source=f"{workdir} (checkpoint step {step})")
