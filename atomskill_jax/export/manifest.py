"""The manifest of an exported policy directory and its checks (jax and numpy only).

manifest.json names the format and its version, the jax/jaxlib versions and the date of
the export, the method and its runtime, the input and output spec, and the sha256 of
every other file. jax.export guarantees about six months of backward compatibility
(its calling-convention versions), so the loader refuses artefacts whose functions use a
calling convention the installed jax no longer reads, and warns when an artefact is
older than that window.
"""

from __future__ import annotations

import hashlib
import json
import os

FORMAT = "atomskill-policy"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
COMPATIBILITY_DAYS = 180


class ExportError(RuntimeError):
    """A policy directory that cannot be loaded: names the file at fault."""


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_hashes(directory: str) -> dict[str, str]:
    """{relative path: sha256} of every file under `directory` but the manifest."""
    out = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, directory).replace(os.sep, "/")
            if rel != MANIFEST:
                out[rel] = sha256(path)
    return dict(sorted(out.items()))


def read(directory: str) -> dict:
    path = os.path.join(directory, MANIFEST)
    if not os.path.isdir(directory):
        raise ExportError(f"{directory}: no such policy directory (write one with "
                          f"`atomskill export --workdir=W --out={directory}`)")
    if not os.path.exists(path):
        raise ExportError(f"{path}: missing; {directory} is not an exported policy")
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise ExportError(f"{path}: unreadable ({err})") from err
    if manifest.get("format") != FORMAT:
        raise ExportError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ExportError(f"{path}: format version {version}, this atomskill_jax reads "
                          f"version {FORMAT_VERSION}; export the policy again")
    return manifest


def verify(directory: str, manifest: dict) -> None:
    """Every file the manifest lists exists and has its sha256."""
    for rel, want in manifest["files"].items():
        path = os.path.join(directory, rel)
        if not os.path.exists(path):
            raise ExportError(f"{path}: missing from the exported policy (the manifest lists it)")
        got = sha256(path)
        if got != want:
            raise ExportError(f"{path}: checksum mismatch (sha256 {got[:12]}..., the manifest "
                              f"says {want[:12]}...): the file changed or is damaged; export "
                              f"the policy again")
