"""Cheaper XLA:CPU compilation for the tests' child processes that compile many programs
once each (the demo's and `reproduce`'s training and evaluation children).

XLA's newer fusion emitters cost these tiny models about twice the compile time of the
legacy elemental emitters (measured on the tiny AtomSkill train steps: 5.9 + 5.1 s ->
2.4 + 2.6 s, the same losses to the printed digits). The programs and their float32
arithmetic are the same; only how XLA generates each fusion's loop changes. Only a
flag this XLA knows is given: an unknown one in XLA_FLAGS aborts the child.
"""

from __future__ import annotations

import functools

FLAG = "xla_cpu_use_fusion_emitters"


@functools.cache
def child_xla_flags() -> str:
    """Extra XLA_FLAGS for a child process ('' when this XLA has no such option)."""
    import jax
    import jax.numpy as jnp

    try:  # an unknown option is an error here, not an abort as in XLA_FLAGS
        jax.jit(lambda x: x + 1).lower(jnp.zeros(())).compile({FLAG: False})
    except Exception:  # noqa: BLE001 - any refusal: leave the child's flags alone
        return ""
    return f" --{FLAG}=false"
