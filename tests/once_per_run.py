"""Build an expensive artifact (a reference training run, a corpus cache) once per test run.

Session-scoped fixtures are per *process*: under pytest-xdist every worker would train its own
copy of the same reference run. ``once_per_run`` builds it in a directory every worker of one
``pytest`` invocation sees (the parent of xdist's per-worker base temp), under a file lock, and
marks it complete last, so the second worker waits for the first and then reuses its result.
Without xdist it is an ordinary once-per-session build.

Callers must treat the artifact as read-only: copy it before damaging it.
"""
from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

DONE_MARKER = ".built"


def shared_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The base temp directory all xdist workers of this run share (pytest's own without xdist)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def once_per_run(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """``build(directory)`` the first time any worker asks for ``name``; its directory every time.

    A build that raised leaves no marker, so the next worker that asks builds again (and fails
    the same way, with its own traceback) rather than reusing half an artifact.
    """
    base = shared_base(tmp_path_factory)
    target = base / f"shared-{name}"
    with open(base / f"shared-{name}.lock", "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # released when the handle closes
        if (target / DONE_MARKER).exists():
            return target
        shutil.rmtree(target, ignore_errors=True)  # a build that failed half-way
        target.mkdir(parents=True)
        build(target)
        (target / DONE_MARKER).touch()
    return target
