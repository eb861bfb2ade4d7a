"""Write a self-contained policy directory (`atomskill export`).

    P/manifest.json            format, versions, date, method, input/output spec, sha256s
    P/params.safetensors       the model's variables (the functions' first argument)
    P/functions/<name>.jaxexport  jax.export serialisations, for every platform asked for
                               (default cpu and cuda), batch dimension symbolic ("b")
    P/runtime.json             the numpy runtime to build and its settings
    P/statistics.json          normalisation statistics (per dataset)
    P/calibration.json         the method's calibration (AtomSkill: ε, step cap), if any
    P/config.json              the resolved run config

The policy is the method's program (policies/program.py): the same runtime runs on
the exported functions as in-process on the jitted ones (export/loader.py).
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import tempfile

import jax
import jaxlib
import numpy as np

from atomskill_jax.export import manifest as manifest_lib
from atomskill_jax.export import safetensors_io
from atomskill_jax.policies.program import ArraySpec, Program, specs_to_json

DEFAULT_PLATFORMS = ("cpu", "cuda")


def _symbolic(inputs, batch):
    def one(spec):
        if isinstance(spec, ArraySpec):
            return jax.ShapeDtypeStruct((batch, *spec.shape), np.dtype(spec.dtype))
        if isinstance(spec, dict):
            return {k: one(v) for k, v in spec.items()}
        if isinstance(spec, (tuple, list)):
            return type(spec)(one(v) for v in spec)
        return None
    return one(inputs)


def _aval_json(aval) -> dict:
    return {"shape": [d if isinstance(d, int) else str(d) for d in aval.shape],
            "dtype": np.dtype(aval.dtype).str}


def export_functions(program: Program, platforms=DEFAULT_PLATFORMS) -> dict:
    """{name: jax.export.Exported} of every model function of `program`."""
    params = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in program.params.items()}
    out = {}
    for name, function in program.functions.items():
        (batch,) = jax.export.symbolic_shape("b")
        args = _symbolic(function.inputs, batch)
        try:
            out[name] = jax.export.export(jax.jit(function.fn), platforms=tuple(platforms))(
                params, *args)
        except Exception as err:  # name the function: jax's errors do not
            raise RuntimeError(f"exporting the {program.method} policy's function {name!r} "
                               f"for {list(platforms)} failed: {err}") from err
    return out


def write_program(program: Program, out: str, *, platforms=DEFAULT_PLATFORMS,
                  config: dict | None = None, source: dict | None = None,
                  overwrite: bool = False) -> dict:
    """Write `program` to the directory `out` (created; a non-empty one only with
    `overwrite`). Returns the manifest. Written to a temporary sibling and renamed, so a
    failed export leaves no half-written policy behind."""
    out = os.path.abspath(out)
    if os.path.exists(out) and os.listdir(out) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty (pass --overwrite to replace it)")
    exported = export_functions(program, platforms)
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".export-", dir=parent)
    try:
        os.makedirs(os.path.join(tmp, "functions"))
        functions = {}
        for name, exp in exported.items():
            rel = f"functions/{name}.jaxexport"
            with open(os.path.join(tmp, rel), "wb") as f:
                f.write(exp.serialize())
            functions[name] = {
                "file": rel, "inputs": specs_to_json(program.functions[name].inputs),
                "outputs": [_aval_json(a) for a in exp.out_avals],
                "calling_convention_version": int(exp.calling_convention_version),
                "platforms": list(exp.platforms)}
        safetensors_io.save(os.path.join(tmp, "params.safetensors"), program.params,
                            metadata={"method": program.method})
        settings = dict(program.settings)
        statistics = settings.pop("statistics")
        calibration = settings.pop("calibration", None)
        _write_json(tmp, "statistics.json", statistics)
        if calibration is not None:
            _write_json(tmp, "calibration.json", calibration)
        if config is not None:
            _write_json(tmp, "config.json", config)
        _write_json(tmp, "runtime.json", {"runtime": program.runtime, "settings": settings})
        spec = settings["spec"]
        manifest = {
            "format": manifest_lib.FORMAT, "format_version": manifest_lib.FORMAT_VERSION,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "jax_version": jax.__version__, "jaxlib_version": jaxlib.__version__,
            "method": program.method, "policy": spec["name"], "runtime": program.runtime,
            "platforms": list(platforms), "source": source or {},
            "observation": settings["input_spec"],
            "action": {"dim": int(spec["action_dim"]), "space": spec["action_space"],
                       "chunk_length": int(settings["horizon"])},
            "control_hz": settings.get("control_hz"),
            "functions": functions,
            "params": {"count": int(sum(int(np.size(v)) for v in program.params.values())),
                       "arrays": len(program.params)},
            "files": manifest_lib.file_hashes(tmp)}
        _write_json(tmp, manifest_lib.MANIFEST, manifest)
        if os.path.exists(out):
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _write_json(directory: str, name: str, data) -> None:
    with open(os.path.join(directory, name), "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)


def export_workdir(workdir: str, out: str, *, step: int | None = None, options: dict | None = None,
                   platforms=DEFAULT_PLATFORMS, overwrite: bool = False) -> dict:
    """Export the policy a workdir's checkpoint holds (the method's last stage; the
    same model and assets `atomskill eval` loads)."""
    from atomskill_jax.methods import registry
    from atomskill_jax.policies.loading import load_model

    model, config, assets, step = load_model(workdir, step=step)
    spec = registry.get_spec(config)
    if spec.make_program is None:
        raise ValueError(f"method {spec.name!r} has no make_program: it cannot be exported")
    assets = dict(assets, workdir=os.path.abspath(workdir),
                  source=f"{workdir} checkpoint {step} assets")
    options = {k: v for k, v in (options or {}).items() if v is not None}
    program = spec.make_program(model, assets, options)
    return write_program(program, out, platforms=platforms, config=assets["config"],
                         overwrite=overwrite,
                         source={"workdir": os.path.abspath(workdir), "step": int(step),
                                 "options": options})
