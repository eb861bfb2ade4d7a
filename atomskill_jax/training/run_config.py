"""W/config.json: the resolved config of a run, fixed at its first start.

A re-run on a workdir that holds a config resumes that run, so it must be the same
run: keys that only schedule, place or log the work (the `train` block, the mesh, the
stage, where the data lives) may change, and config.json is rewritten with them and
the change logged; any other change (model, data transforms, optimiser, seeds) is
refused with the keys named, since it would silently mix two runs in one workdir.
"""

from __future__ import annotations

import json
import logging
import os

from atomskill_jax.training.workdir import CONFIG as CONFIG_FILE

log = logging.getLogger(__name__)
# Changeable on resume: how long and how the run goes, not what it learns. Schedule
# lengths are here because extending a finished run is a normal request.
RESUMABLE_PREFIXES = ("train.", "mesh.", "distributed.", "wandb.", "stage", "variant",
                      "data.data_dir", "data.num_parallel_calls", "data.prefetch")


_ABSENT = object()  # a key one of the two configs does not have
# Keys added after runs were recorded, with the value that does what their absence did:
# a config.json without the key is the same run as one with this value.
ADDED_KEYS = {"data.shards": 0}


class ConfigMismatchError(ValueError):
    pass


def flatten(tree, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def differences(old: dict, new: dict) -> dict:
    """{dotted key: (old value, new value)} for keys whose values differ or exist once."""
    a, b = flatten(old), flatten(new)
    for key, value in ADDED_KEYS.items():
        for tree in (a, b):
            if key not in tree:
                tree[key] = value
    return {k: (a.get(k, _ABSENT), b.get(k, _ABSENT)) for k in sorted(set(a) | set(b))
            if a.get(k, _ABSENT) != b.get(k, _ABSENT)}


def _resumable(key: str) -> bool:
    return any(key.startswith(p) if p.endswith(".") else key == p or key.startswith(p + ".")
               for p in RESUMABLE_PREFIXES)


def _show(value) -> str:
    return "(absent)" if value is _ABSENT else json.dumps(value)


def _write(path: str, config: dict) -> None:
    tmp = path + ".tmp"  # a killed run never leaves half a config behind
    with open(tmp, "w") as f:
        json.dump(config, f, indent=1)
    os.replace(tmp, path)


def record(workdir: str, config: dict, *, write: bool = True) -> None:
    """Write W/config.json, or check a re-run against it (see the module docstring).
    Every process checks (so all refuse together); only the `write` one writes."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        if write:
            _write(path, config)
        return
    try:
        with open(path) as f:
            old = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigMismatchError(
            f"{path} cannot be read ({e}); this workdir's config is unknown: fix or delete "
            f"the file, or pass --overwrite to start afresh") from e
    changed = differences(old, config)
    if not changed:
        return
    refused = {k: v for k, v in changed.items() if not _resumable(k)}
    if refused:
        lines = "\n".join(f"  {k}: {_show(a)} -> {_show(b)}" for k, (a, b) in refused.items())
        raise ConfigMismatchError(
            f"{workdir} holds a run with another config ({path}); resuming it with this one "
            f"would mix two runs. Changed:\n{lines}\nUse another --workdir, or --overwrite "
            f"to delete this run and start afresh.")
    log.warning("resuming %s with changed %s", workdir,
                ", ".join(f"{k}: {_show(a)} -> {_show(b)}" for k, (a, b) in changed.items()))
    if write:
        _write(path, config)
