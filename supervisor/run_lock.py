"""One supervisor per run directory: an OS lock on ``supervisor.lock`` held for our lifetime.
Also the supervisor's side of the worker's lock (``worker.lock``): is a trainer holding it?

``flock`` is released by the kernel when the holder dies (even by SIGKILL), so a stale lock file
never blocks a restart, and no pid-file guessing is needed. The file's content (the holder's pid)
is only there so a refused second supervisor can name who holds it.
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Self


class RunLockHeld(Exception):
    """Another live process holds the lock; ``pid`` is its pid when known."""

    def __init__(self, path: Path, pid: int | None) -> None:
        self.path = path
        self.pid = pid
        who = f"pid {pid}" if pid is not None else "another process"
        super().__init__(f"another supervisor ({who}) is already running on {path.parent}")


class RunLock:
    """Exclusive, non-blocking lock; use as a context manager or acquire()/release()."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # O_CLOEXEC (Python's default) keeps torchrun from inheriting the lock: orphaned workers
        # of a killed supervisor must not block the next one.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise RunLockHeld(self.path, holder) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass  # a full disk: the flock is the lock; the pid is only there to name us to others
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
        except OSError:
            pass
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def worker_lock_holder(path: Path) -> int | None:
    """The pid holding the worker's lock (``RunDir.worker_lock``), 0 if held by an unnamed
    holder, ``None`` if nobody holds it. Never creates the file, and holds the lock only for the
    instant of the test."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None  # absent (no trainer ever ran here) or unreadable: nobody provably holds it
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_pid(fd) or 0
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 64, 0).decode(errors="replace").strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None
