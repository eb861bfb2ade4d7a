"""One trainer per workdir: an exclusive `fcntl.flock` on W/train.lock.

    with workdir_lock.hold(workdir):   # WorkdirLockedError if another trainer has it
        ...train...

The kernel releases a flock when its holder exits, however it exits (an exception, a
signal, SIGKILL, a crash), so a lock left by a dead trainer is never in force: the
next trainer takes it and logs whose it was. The file records the holder's pid, host
and start time for the refusal message, and is emptied (never deleted: deleting a
lock file lets two processes lock two different files) on a clean release.

Multi-process training (jax.process_count() > 1) takes one lock per process index
(W/train.lock for process 0, W/train.lock.<i> for the others): every process of a
second job is refused on its own and fails fast, instead of processes 1..N-1 waiting
in a collective for a process 0 that was refused. On a shared filesystem this needs
working flock (local disks, NFSv4); object stores (gs://) are not locked.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import time

log = logging.getLogger(__name__)


class WorkdirLockedError(RuntimeError):
    """Another live trainer holds the workdir."""


def lock_path(workdir: str, process_index: int = 0) -> str:
    name = "train.lock" if process_index == 0 else f"train.lock.{process_index}"
    return os.path.join(workdir, name)


def _read_holder(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 4096)
    try:
        holder = json.loads(raw.decode())
        return holder if isinstance(holder, dict) else {}
    except ValueError:
        return {}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def _describe(holder: dict) -> str:
    if not holder:
        return "a trainer that has not yet recorded itself"
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(holder.get("start_time", 0)))
    return f"pid {holder.get('pid')} on host {holder.get('host')} (started {started})"


def acquire(workdir: str, process_index: int = 0) -> int:
    """Lock the workdir; returns the open file descriptor that holds the lock."""
    path = lock_path(workdir, process_index)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by exec'd children
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        holder = _read_holder(fd)
        os.close(fd)
        if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise
        raise WorkdirLockedError(
            f"{workdir} is being trained by {_describe(holder)}: lock {path} is held. "
            f"Wait for that run to finish or stop it, or train into another --workdir"
        ) from None
    previous = _read_holder(fd)
    if previous:  # a clean release empties the file: its holder died while training
        host, pid = previous.get("host"), previous.get("pid")
        if host == socket.gethostname() and isinstance(pid, int) and not _pid_alive(pid):
            why = "that process is no longer running"
        elif host == socket.gethostname():
            why = "the kernel released its lock, so it no longer trains"
        else:
            why = "its lock was released (the process or its host stopped)"
        log.warning("%s: taking over the stale lock %s of %s: %s", workdir, path,
                    _describe(previous), why)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "start_time": time.time(),
          "process_index": process_index}
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps(me).encode())
    os.fsync(fd)
    return fd


def release(fd: int) -> None:
    try:
        os.ftruncate(fd, 0)  # empty: the next trainer knows nobody died holding it
    finally:
        os.close(fd)  # closing releases the flock


@contextlib.contextmanager
def hold(workdir: str, process_index: int = 0):
    fd = acquire(workdir, process_index)
    try:
        yield lock_path(workdir, process_index)
    finally:
        release(fd)


def training_holder(workdir: str) -> str | None:
    """Who trains `workdir` now (a description), or None when no trainer holds its lock.
    Probes with a shared non-blocking flock on a separate descriptor, so it never
    disturbs a trainer and never takes the lock over."""
    path = lock_path(workdir)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # absent (never trained here) or unreadable: nothing to tell
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return _describe(_read_holder(fd))
            raise
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
