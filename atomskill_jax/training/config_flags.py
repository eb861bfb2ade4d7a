"""`--config=path/to/file.py:variant` and `--config.a.b=value`, without absl flags.

Like ml_collections.config_flags: the file is imported and `get_config(variant)`
called; overrides are parsed by the type of the value they replace (bool, int,
float, str, tuple/list, None) so `--config.data.batch_size=32` stays an int and
`--config.data.cameras=front,wrist` becomes a tuple. Unknown keys are errors that
list the keys that do exist at that level.
"""

from __future__ import annotations

import ast
import importlib.util
import os
from typing import Any, Iterable, Mapping

import ml_collections


def load_config(spec: str) -> ml_collections.ConfigDict:
    path, _, variant = spec.partition(":")
    if not os.path.exists(path):
        raise FileNotFoundError(f"config file {path} does not exist (from --config={spec})")
    name = "atomskill_config_" + os.path.splitext(os.path.basename(path))[0]
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {path} has no get_config(variant)")
    return module.get_config(variant) if variant else module.get_config()


def _parse(text: str, current: Any) -> Any:
    if isinstance(current, bool):
        low = text.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected a boolean, got {text!r}")
    if isinstance(current, int):
        return int(text)
    if isinstance(current, float):
        return float(text)
    if isinstance(current, str):
        return text
    if isinstance(current, (tuple, list)):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = tuple(p.strip() for p in text.split(",") if p.strip())
        if isinstance(value, (str, int, float, dict)):
            value = (value,)
        return type(current)(value)
    try:  # None or something else: a Python literal if it is one, else the string
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _set(config: ml_collections.ConfigDict, key: str, value: Any, *, parse: bool) -> None:
    parts = key.split(".")
    node = config
    for i, part in enumerate(parts[:-1]):
        if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
            raise KeyError(f"config override {key!r}: no section {'.'.join(parts[:i + 1])!r}; "
                           f"have {', '.join(sorted(node.keys()))}")
        node = node[part]
    leaf = parts[-1]
    if leaf not in node:
        raise KeyError(f"config override {key!r}: no key {leaf!r} here; have "
                       f"{', '.join(sorted(node.keys()))}")
    if parse and isinstance(value, str):
        try:
            value = _parse(value, node[leaf])
        except ValueError as err:
            raise ValueError(f"config override {key}={value!r}: {err}") from err
    if isinstance(node[leaf], tuple) and isinstance(value, list):
        value = tuple(value)
    with node.unlocked():
        node[leaf] = value


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any] | Iterable[str]):
    """Overrides as {"a.b": value} (values used as given, strings parsed) or as
    command-line strings "--config.a.b=value" / "a.b=value". Returns `config`."""
    if isinstance(overrides, Mapping):
        for key, value in overrides.items():
            _set(config, key, value, parse=isinstance(value, str))
        return config
    for item in overrides:
        text = item[2:] if item.startswith("--") else item
        text = text[len("config."):] if text.startswith("config.") else text
        key, eq, value = text.partition("=")
        if not eq:
            raise ValueError(f"config override {item!r}: expected --config.key=value")
        _set(config, key, value, parse=True)
    return config


def split_config_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """(--config.* overrides, the other arguments)."""
    overrides = [a for a in argv if a.startswith("--config.")]
    return overrides, [a for a in argv if not a.startswith("--config.")]
