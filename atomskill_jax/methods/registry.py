"""Method name -> spec: the only place that lists methods.

A run config names its method in `config.method`: a registered name, or
'package.module:ATTRIBUTE' naming a MethodSpec outside the library (a method of your
own, or the stand-in models of the tests), so a method plugs in without editing this
file. Specs are imported on first use, so listing methods imports no model code.
"""

from __future__ import annotations

import importlib

from atomskill_jax.methods.spec import MethodSpec

# name -> module exposing SPEC
METHODS = {
    "atomskill": "atomskill_jax.methods.atomskill",
    "mlp": "atomskill_jax.methods.mlp",
    "usr": "atomskill_jax.methods.usr",
}
# Workdirs written before config.method existed name a model class instead.
LEGACY_MODEL_FACTORIES = {
    "atomskill_jax.models.atomskill:AtomSkill": "atomskill",
    "atomskill_jax.models.mlp_policy:MLPPolicy": "mlp",
}


def names() -> list[str]:
    return list(METHODS)


def spec_by_name(name: str) -> MethodSpec:
    if ":" in name:
        module, _, attr = name.partition(":")
        spec = getattr(importlib.import_module(module), attr, None)
        if not isinstance(spec, MethodSpec):
            raise ValueError(f"config.method={name!r}: {module}.{attr} is not a MethodSpec")
        return spec
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; registered: {', '.join(METHODS)}")
    return importlib.import_module(METHODS[name]).SPEC


def method_name(config) -> str:
    """config.method, or the method a legacy config's `model_factory` names."""
    name = config.get("method")
    if name:
        return str(name)
    factory = config.get("model_factory")
    if factory in LEGACY_MODEL_FACTORIES:
        return LEGACY_MODEL_FACTORIES[factory]
    raise ValueError(f"the config names no method (config.method; registered: "
                     f"{', '.join(METHODS)})")


def get_spec(config) -> MethodSpec:
    """The spec of the method a run config names."""
    return spec_by_name(method_name(config))
