"""Finished evaluation episodes on disk, so an interrupted `eval` loses nothing.

    check_output_dir(out)                      # before the first rollout
    store = EpisodeStore(out, identity)        # out/episodes-<digest(identity)>.jsonl
    done = store.lookup(job)                   # a job's results, or None: run it
    store.add(job, results, policy_spec)       # one fsynced line per episode

`identity` is what decides the policy's actions besides the episode itself: the
workdir, checkpoint step, EMA or raw parameters, and the runtime options (epsilon,
ensemble_m, resample_every, ...). Each identity has its own append-only JSONL file, so
results of another configuration are never read into a report; such files in the same
directory are named in the output. Line 1 is a header with the identity; every further
line is one finished episode, keyed by its task, seed, episode index, layout, episode
cap and the batch it ran in (a job's episodes run in lockstep on one random stream, see
`rollout`, so a batch is reproduced only whole), or the policy's spec. Each line is
flushed and fsynced as it is written: a kill loses at most the line being written, and
that torn last line is dropped on the next start, its episode run again.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import tempfile
from typing import Any, Callable, Sequence

from atomskill_jax.eval.metrics import EpisodeResult

FORMAT = 1
PREFIX = "episodes-"


class OutputDirError(OSError):
    """The report directory cannot be used (named in the message, with what to do)."""


def check_output_dir(path: str, flag: str = "--out") -> str:
    """Makes sure `path` is (or can become) a writable directory, by creating and removing
    a file in it; returns its absolute path. Raises OutputDirError otherwise."""
    path = os.path.abspath(path)
    advice = f"give another {flag}, or fix that path"
    if os.path.exists(path) and not os.path.isdir(path):
        raise OutputDirError(f"{flag}={path} exists and is not a directory; {advice}")
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-check-", dir=path)
        os.close(fd)
        os.remove(probe)
    except OSError as err:
        raise OutputDirError(f"{flag}={path} is not a writable directory "
                             f"({err.strerror or err}); {advice}") from err
    return path


def digest(value: Any) -> str:
    """A short stable hash of a JSON-able value (dict keys sorted)."""
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def episode_key(job, i: int) -> dict:
    """Everything that decides episode `i` of `job` (a rollout.Job), given the identity."""
    return {"task": job.task, "seed": job.seed, "episode": job.episodes[i],
            "layout": job.layouts[i], "max_steps": job.max_steps,
            "batch": list(job.episodes), "batch_size": job.batch_size}


def _text(key: dict) -> str:
    return json.dumps(key, sort_keys=True)


def _episode_part(key: dict) -> str:
    return _text({k: v for k, v in key.items() if k not in ("batch", "batch_size")})


class EpisodeStore:
    """The finished episodes of one evaluation identity in a report directory."""

    def __init__(self, out_dir: str, identity: dict, *, log: Callable[[str], None] = print):
        self.identity = json.loads(json.dumps(identity, sort_keys=True, default=str))
        self.path = os.path.join(out_dir, f"{PREFIX}{digest(self.identity)}.jsonl")
        self.log = log
        self.records: dict[str, tuple[dict, EpisodeResult]] = {}
        self.policy_spec: dict = {}
        self._others(out_dir)
        if os.path.exists(self.path):
            self._load()
        else:
            self._write_lines([{"format": FORMAT, "identity": self.identity}])

    # -- reading ------------------------------------------------------------------
    def _load(self) -> None:
        with open(self.path, "rb") as f:
            data = f.read()
        good, offset, lines = 0, 0, data.split(b"\n")
        for n, line in enumerate(lines, 1):
            end = offset + len(line) + 1
            last = n == len(lines) or (n == len(lines) - 1 and lines[-1] == b"")
            if not line.strip():
                offset = end
                continue
            try:
                if end > len(data):  # no newline: the write never finished
                    raise ValueError("no line end")
                record = json.loads(line)
            except ValueError as err:
                if last:  # killed mid-write: drop it; its episode runs again
                    self.log(f"{self.path}: dropped a torn last line (written when the "
                             f"evaluation was killed); that episode is run again")
                    break
                raise ValueError(
                    f"{self.path}, line {n}: not a JSON record ({err}); the file is damaged: "
                    f"delete that line (its episode is run again) or the file (all are)")
            self._take(record, n)
            good = offset = end
        if good < len(data):
            with open(self.path, "r+b") as f:
                f.truncate(good)
                os.fsync(f.fileno())
        if good == 0:  # killed while writing the header
            self._write_lines([{"format": FORMAT, "identity": self.identity}])

    def _take(self, record: dict, n: int) -> None:
        where = f"{self.path}, line {n}"
        if n == 1:
            if record.get("identity") != self.identity:
                raise ValueError(f"{where}: the header's configuration does not match the "
                                 f"file's name; the file was edited or copied: remove it")
            return
        if "policy" in record:
            self.policy_spec = record["policy"]
            return
        try:
            result = EpisodeResult(**record["result"])
            key = record["episode"]
        except (KeyError, TypeError) as err:
            raise ValueError(f"{where}: not an episode record ({err!r}); delete that line "
                             f"(its episode is run again)") from err
        self.records[_text(key)] = (key, result)

    def _others(self, out_dir: str) -> None:
        """Names the files of other configurations in `out_dir` (never read into reports)."""
        for path in sorted(glob.glob(os.path.join(out_dir, f"{PREFIX}*.jsonl"))):
            if os.path.abspath(path) == os.path.abspath(self.path):
                continue
            try:
                with open(path) as f:
                    identity = json.loads(f.readline()).get("identity", {})
                    count = sum(1 for line in f if '"episode"' in line)
            except (OSError, ValueError):
                identity, count = {}, "?"
            changed = sorted(k for k in set(identity) | set(self.identity)
                             if identity.get(k) != self.identity.get(k))
            self.log(f"ignoring {count} episodes in {path}: another configuration "
                     f"(differs in {', '.join(changed) or 'its header'}); they are kept apart")

    # -- lookups --------------------------------------------------------------------
    @property
    def batch_sizes(self) -> set[int]:
        return {key["batch_size"] for key, _ in self.records.values()}

    def lookup(self, job) -> list[EpisodeResult] | None:
        """The job's recorded results (each with its video when the job records one),
        or None when any is missing."""
        out = []
        for i in range(len(job.episodes)):
            found = self.records.get(_text(episode_key(job, i)))
            if found is None:
                return None
            result = found[1]
            if job.video[i] and not (result.video and os.path.exists(result.video)):
                return None
            out.append(result)
        return out

    def rebatched(self, jobs: Sequence) -> int:
        """Recorded episodes wanted by `jobs` but run in another batch (so run again)."""
        wanted = {_episode_part(episode_key(j, i)): _text(episode_key(j, i))
                  for j in jobs for i in range(len(j.episodes))}
        return sum(1 for text, (key, _) in self.records.items()
                   if wanted.get(_episode_part(key)) not in (None, text))

    # -- writing --------------------------------------------------------------------
    def add(self, job, results: Sequence[EpisodeResult], policy_spec: dict) -> None:
        lines = []
        policy_spec = json.loads(json.dumps(policy_spec))  # as read back (lists, not tuples)
        if policy_spec and policy_spec != self.policy_spec:
            self.policy_spec = policy_spec
            lines.append({"policy": self.policy_spec})
        for result in results:
            i = job.episodes.index(result.episode)
            key = episode_key(job, i)
            self.records[_text(key)] = (key, result)
            lines.append({"episode": key, "result": dataclasses.asdict(result)})
        self._write_lines(lines)

    def _write_lines(self, records: Sequence[dict]) -> None:
        with open(self.path, "a") as f:
            for record in records:  # one line each, durable before the next
                f.write(json.dumps(record) + "\n")
                f.flush()
                os.fsync(f.fileno())
