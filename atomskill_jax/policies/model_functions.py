"""NNX models as flat parameter dicts and pure functions of them (for policies/program.py).

    params, bind = flat_params(model)     # {"decoder/layers/0/kernel": array, ...}
    fn = lambda params, obs: bind(params).predict(obs)

The names are the model's state paths joined with "/" (the same names the exported
safetensors file holds), so an artefact's parameters can be read and compared by name.
"""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np
from flax import nnx


def _name(path) -> str:
    parts = []
    for entry in path:
        if isinstance(entry, jax.tree_util.GetAttrKey):
            if entry.name == "value":  # the Variable's payload: not part of the name
                continue
            parts.append(entry.name)
        elif isinstance(entry, jax.tree_util.DictKey):
            parts.append(str(entry.key))
        elif isinstance(entry, jax.tree_util.SequenceKey):
            parts.append(str(entry.idx))
        else:
            parts.append(str(entry))
    return "/".join(parts)


def flat_params(model) -> tuple[dict[str, np.ndarray], Callable]:
    """(every variable of `model` as {name: numpy array}, bind) where `bind(params)`
    rebuilds the model from such a dict (inside jit or export: the arrays may be
    tracers)."""
    graphdef, state = nnx.split(model)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(state)
    names = [_name(path) for path, _ in leaves]
    if len(set(names)) != len(names):
        raise ValueError("model state paths collide once joined with '/'")
    params = {n: np.asarray(leaf) for n, (_, leaf) in zip(names, leaves)}

    def bind(flat):
        missing = [n for n in names if n not in flat]
        if missing:
            raise KeyError(f"parameters lack {missing[:5]}{'...' if len(missing) > 5 else ''}")
        return nnx.merge(graphdef, jax.tree.unflatten(treedef, [flat[n] for n in names]))

    return params, bind
