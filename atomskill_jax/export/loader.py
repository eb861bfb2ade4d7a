"""Load an exported policy directory (export/writer.py) with jax and numpy only: no flax,
TensorFlow, orbax, optax or torch (a test runs it with those imports failing).

    policy = load_policy("exported/atomskill", epsilon=0.3)   # a policies.base.Policy
    policy.reset([TaskInfo(...)]); actions = policy.infer(observation)

Every file is checked against the manifest's sha256 before use; a missing file, a
checksum mismatch, a format this version does not read, or functions in a calling
convention the installed jax no longer supports are errors naming the file. The
runtime (skill chaining, ensembling, histories) is the same numpy code that runs
in-process, around the deserialised functions.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from typing import Callable

import jax
import numpy as np

from atomskill_jax.export import manifest as manifest_lib
from atomskill_jax.export import safetensors_io
from atomskill_jax.export.manifest import ExportError
from atomskill_jax.policies.program import build_runtime

log = logging.getLogger(__name__)

__all__ = ["ExportError", "load_functions", "load_parts", "load_policy", "read_manifest"]


def read_manifest(directory: str) -> dict:
    manifest = manifest_lib.read(directory)
    manifest_lib.verify(directory, manifest)
    return manifest


def _check_age(directory: str, manifest: dict) -> None:
    try:
        created = datetime.datetime.fromisoformat(manifest["created"])
    except (KeyError, ValueError):
        return
    age = (datetime.datetime.now(datetime.timezone.utc) - created).days
    if age > manifest_lib.COMPATIBILITY_DAYS:
        log.warning("%s was exported %d days ago with jax %s; jax.export promises about %d "
                    "days of compatibility: export it again if loading fails", directory, age,
                    manifest.get("jax_version"), manifest_lib.COMPATIBILITY_DAYS)


def _deserialize(path: str, entry: dict, manifest: dict):
    version = int(entry["calling_convention_version"])
    low = jax.export.minimum_supported_calling_convention_version
    high = jax.export.maximum_supported_calling_convention_version
    if not low <= version <= high:
        raise ExportError(
            f"{path}: exported with jax {manifest.get('jax_version')} in calling convention "
            f"{version}; the installed jax {jax.__version__} reads {low}..{high}. Export the "
            f"policy again with this jax (atomskill export)")
    with open(path, "rb") as f:
        blob = f.read()
    try:
        return jax.export.deserialize(bytearray(blob))
    except Exception as err:
        raise ExportError(f"{path}: cannot be deserialised by jax {jax.__version__} ({err}); "
                          f"export the policy again with this jax") from err


def load_functions(directory: str, manifest: dict | None = None) -> dict[str, Callable]:
    """{name: callable(*inputs) -> numpy outputs} with the parameters bound."""
    manifest = manifest or read_manifest(directory)
    platform = jax.default_backend()
    params_path = os.path.join(directory, "params.safetensors")
    try:
        params, _ = safetensors_io.load(params_path)
    except safetensors_io.SafetensorsError as err:
        raise ExportError(str(err)) from err
    device = jax.local_devices()[0]
    params = jax.device_put(params, device)
    out = {}
    for name, entry in manifest["functions"].items():
        path = os.path.join(directory, entry["file"])
        exp = _deserialize(path, entry, manifest)
        if platform not in exp.platforms:
            raise ExportError(f"{path}: exported for {list(exp.platforms)}, not for this "
                              f"machine's {platform!r}; export again with "
                              f"--platforms={platform}")
        call = jax.jit(exp.call)

        def run(*inputs, _call=call):
            return jax.tree.map(np.asarray, _call(params, *inputs))

        out[name] = run
    return out


def _json(directory: str, name: str, default=None):
    path = os.path.join(directory, name)
    if not os.path.exists(path):
        if default is not None:
            return default
        raise ExportError(f"{path}: missing from the exported policy")
    with open(path) as f:
        return json.load(f)


def load_parts(directory: str) -> tuple[dict[str, Callable], str, dict, dict]:
    """(functions, runtime path, runtime settings, manifest) of an exported policy: what
    `load_policy` builds a policy from (the server builds one per connection)."""
    manifest = read_manifest(directory)
    _check_age(directory, manifest)
    functions = load_functions(directory, manifest)
    runtime = _json(directory, "runtime.json")
    settings = dict(runtime["settings"])
    settings["statistics"] = _json(directory, "statistics.json")
    calibration = _json(directory, "calibration.json", default={})
    if calibration:
        settings["calibration"] = calibration
    return functions, runtime["runtime"], settings, manifest


def load_policy(directory: str, **overrides):
    """The exported policy with runtime options `overrides` (the method's runtime options;
    those compiled into the functions cannot change)."""
    functions, runtime, settings, manifest = load_parts(directory)
    policy = build_runtime(runtime, functions, settings, overrides)
    policy.manifest = manifest
    policy.checkpoint_step = manifest.get("source", {}).get("step")
    return policy
