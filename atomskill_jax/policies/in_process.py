"""A program's policy in this process: each model function jitted once, the parameters
on one device and passed as an argument (so one compiled function serves every batch of
the same size), outputs handed to the runtime as numpy."""

from __future__ import annotations

from typing import Callable, Mapping

import jax
import numpy as np

from atomskill_jax.policies.program import Program, build_runtime


def jitted_functions(program: Program) -> dict[str, Callable]:
    device = jax.local_devices(backend="cpu")[0]
    params = jax.device_put(program.params, device)
    out = {}
    for name, function in program.functions.items():
        jitted = jax.jit(function.fn)

        def call(*inputs, _jitted=jitted):
            return jax.tree.map(np.asarray, _jitted(params, *inputs))

        out[name] = call
    return out


def policy_from_program(program: Program, overrides: Mapping | None = None):
    policy = build_runtime(program.runtime, jitted_functions(program), program.settings,
                           overrides)
    policy.program = program
    return policy
