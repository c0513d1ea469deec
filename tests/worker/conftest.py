"""Fixtures of the worker's end-to-end tests; the machinery they use lives in ``helpers``."""
from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.once_per_run import once_per_run
from tests.worker.helpers import RESUME_ARGS, WorkerLauncher, run_ok


@pytest.fixture
def mount_tmpfs(tmp_path, launcher: WorkerLauncher) -> Iterator[Callable[[int], Path]]:
    """Mount tmpfs file systems of a given size (MiB); skip where mounting is not permitted."""
    mounted: list[Path] = []

    def mount(size_mb: int) -> Path:
        target = tmp_path / f"tmpfs{len(mounted)}"
        target.mkdir()
        try:
            done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(target)],
                                  check=False, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            pytest.skip(f"cannot mount a tmpfs here: {exc}")
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or f'mount exited {done.returncode}'}")
        mounted.append(target)
        return target

    yield mount
    launcher.cleanup()  # nothing may hold files on the mount when it goes
    for target in reversed(mounted):
        if subprocess.run(["umount", str(target)], check=False, capture_output=True, timeout=30).returncode != 0:
            subprocess.run(["umount", "-l", str(target)], check=False, capture_output=True, timeout=30)


@pytest.fixture(scope="session")
def worker_cache(tmp_path_factory) -> Path:
    """A private cache with the built-in corpus already tokenized (built once per test run)."""

    def build(cache: Path) -> None:
        previous = os.environ.get("GPT2SUP_CACHE_DIR")
        os.environ["GPT2SUP_CACHE_DIR"] = str(cache)
        try:
            from worker.data.shards import ensure_default_corpus

            ensure_default_corpus()
        finally:
            if previous is None:
                os.environ.pop("GPT2SUP_CACHE_DIR", None)
            else:
                os.environ["GPT2SUP_CACHE_DIR"] = previous

    return once_per_run(tmp_path_factory, "worker-cache", build)


@pytest.fixture(scope="session")
def default_data_dir(worker_cache) -> Path:
    from worker.data.shards import DEFAULT_CORPUS_NAME

    return worker_cache / DEFAULT_CORPUS_NAME


@pytest.fixture(scope="session")
def launcher(worker_cache) -> Iterator[WorkerLauncher]:
    spawner = WorkerLauncher(cache_dir=worker_cache)
    yield spawner
    spawner.cleanup()


@pytest.fixture(autouse=True)
def _reap_stragglers(request) -> Iterator[None]:
    """No worker outlives the test that started it, whatever the test's outcome."""
    yield
    if "launcher" in request.fixturenames:
        request.getfixturevalue("launcher").cleanup()


@pytest.fixture(scope="session")
def ref_bare(launcher, tmp_path_factory) -> Path:
    """An uninterrupted one-process run of RESUME_ARGS (dropout 0.1); read-only."""
    return once_per_run(tmp_path_factory, "worker-ref-bare", lambda out: run_ok(launcher, out / "run", RESUME_ARGS)) / "run"


@pytest.fixture(scope="session")
def ref_ddp(launcher, tmp_path_factory) -> Path:
    """An uninterrupted two-process torchrun run of RESUME_ARGS (dropout 0.1); read-only."""
    return once_per_run(tmp_path_factory, "worker-ref-ddp",
                        lambda out: run_ok(launcher, out / "run", RESUME_ARGS, nproc=2)) / "run"
