"""One long-running writer per project: an advisory lock on PROJECT/.lock held by `run` and `train PROJECT`.

Two loops (or two trainings) on one project would train into the same checkpoint folder at once. The lock is
an OS file lock (``flock``): the kernel drops it when its process dies, even by SIGKILL, so a crash never leaves
a stale lock behind. Re-entrant within a process (the loop calls `train`). Label imports and `status` do not take
it: the database already serialises their writes. Where ``fcntl`` does not exist (Windows) locking is skipped.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import ActiveposeError

LOCK_NAME = ".lock"
_HELD: dict[str, int] = {}


class ProjectBusy(ActiveposeError, RuntimeError):
    """Another process holds the project's lock."""


@contextmanager
def project_lock(folder: str | Path, what: str) -> Iterator[None]:
    """Hold the project's lock while the block runs; raise ProjectBusy naming the holder when it is taken."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    path = Path(folder).absolute() / LOCK_NAME
    key = str(path)
    if _HELD.get(key):
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 500, 0).decode(errors="replace").strip() or "an unknown process"
            raise ProjectBusy(
                f"{folder}: busy: {holder} is working on this project; wait for it to finish or stop it"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(
            fd,
            f"`activepose {what}` (pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')})".encode(),
            0,
        )
        _HELD[key] = 1
        try:
            yield
        finally:
            _HELD.pop(key, None)
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
