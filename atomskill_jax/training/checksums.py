"""A checksum manifest per checkpoint step: sha256 and size of every file of its items.

    W/<stage>/checkpoints/<step>/atomskill_checksums.json
      {"version": 1, "algorithm": "sha256",
       "files": {"params/ocdbt.process_0/d/ab12...": {"size": 2557, "sha256": "..."}, ...}}

Written once every process has written its files and before orbax renames the step's
temporary directory to its final name (checkpoints.py hooks orbax's commit), so a
step directory holds its manifest from the moment it exists. Only the items' files
are listed: orbax rewrites its own bookkeeping (`_CHECKPOINT_METADATA`,
`commit_success.txt`) while committing. `verify` re-reads the files; a step saved
before manifests existed is reported `unverified`, not damaged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

FILENAME = "atomskill_checksums.json"
_SKIP = frozenset({"commit_success.txt"})  # orbax writes these at commit, after us
_CHUNK = 1 << 20


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _item_files(step_dir: str, items) -> list[str]:
    """Paths relative to step_dir of the files under the item directories."""
    out = []
    for item in sorted(items):
        top = os.path.join(step_dir, item)
        for root, dirs, files in os.walk(top):
            dirs.sort()
            out.extend(os.path.relpath(os.path.join(root, name), step_dir)
                       for name in sorted(files) if name not in _SKIP)
    return out


def write_manifest(step_dir: str, items) -> str:
    """Hash the files of `items` under step_dir; write the manifest atomically."""
    files = {}
    for rel in _item_files(step_dir, items):
        path = os.path.join(step_dir, rel)
        files[rel] = {"size": os.path.getsize(path), "sha256": _sha256(path)}
    path = os.path.join(step_dir, FILENAME)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"version": 1, "algorithm": "sha256", "files": files}, f, indent=0)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


@dataclasses.dataclass(frozen=True)
class Verdict:
    status: str  # "intact", "damaged" or "unverified" (no manifest: saved before them)
    detail: str = ""  # damaged: the file and what is wrong with it

    @property
    def usable(self) -> bool:
        return self.status != "damaged"


def verify(step_dir: str, items=None) -> Verdict:
    """Check the files of `items` (all listed when None) against the step's manifest.

    Damage is named by the first file at fault: missing, wrong size, wrong sha256.
    """
    path = os.path.join(step_dir, FILENAME)
    if not os.path.exists(path):
        return Verdict("unverified")
    try:
        with open(path) as f:
            files = json.load(f)["files"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        return Verdict("damaged", f"{FILENAME} unreadable ({type(err).__name__}: {err})")
    wanted = None if items is None else tuple(items)
    for rel, expect in sorted(files.items()):
        if wanted is not None and rel.split(os.sep, 1)[0] not in wanted:
            continue
        full = os.path.join(step_dir, rel)
        if not os.path.isfile(full):
            return Verdict("damaged", f"{rel} is missing")
        size = os.path.getsize(full)
        if size != expect["size"]:
            return Verdict("damaged", f"{rel} has {size} bytes, {expect['size']} were saved")
        if _sha256(full) != expect["sha256"]:
            return Verdict("damaged", f"{rel} does not match its saved sha256 (contents changed)")
    if wanted is not None:
        listed = {rel.split(os.sep, 1)[0] for rel in files}
        for item in wanted:
            if item not in listed and os.path.isdir(os.path.join(step_dir, item)):
                return Verdict("damaged", f"{item}/ is not in {FILENAME}")
    return Verdict("intact")
