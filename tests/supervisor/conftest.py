"""Fixtures for the supervisor tests: the uninterrupted reference run, once per session.

Every recovery test compares its final weights with it bit for bit.
"""
from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.once_per_run import once_per_run
from tests.supervisor.helpers import (
    FINAL_CHECKPOINT,
    NPROC,
    REPO_ROOT,
    WORKER_ARGS,
    child_env,
    one_process_worker_args,
)


def _reference_run(nproc: int, worker_args: list[str]) -> Callable[[Path], None]:
    def train(out: Path) -> None:
        argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
                "-m", "worker.train_gpt2", "--log_dir", str(out), *worker_args]
        done = subprocess.run(argv, check=False, cwd=REPO_ROOT, env=child_env(), capture_output=True, text=True,
                              timeout=400)
        assert done.returncode == 0 and (out / FINAL_CHECKPOINT).exists(), done.stdout[-2000:] + done.stderr[-2000:]

    return train


@pytest.fixture(scope="session")
def reference_checkpoint(tmp_path_factory) -> Path:
    """Final checkpoint of an uninterrupted two-process worker run (plain torchrun, no
    supervisor); read-only."""
    return once_per_run(tmp_path_factory, "supervisor-reference", _reference_run(NPROC, WORKER_ARGS)) / FINAL_CHECKPOINT


@pytest.fixture(scope="session")
def reference_checkpoint_one_process(tmp_path_factory) -> Path:
    """The same run on one process (``helpers.ONE_PROCESS``); read-only."""
    train = _reference_run(1, one_process_worker_args())
    return once_per_run(tmp_path_factory, "supervisor-reference-one-process", train) / FINAL_CHECKPOINT
