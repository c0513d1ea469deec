"""Fixtures for the supervisor tests: the uninterrupted reference run, once per session.

Every recovery test compares its final weights with it bit for bit.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.once_per_run import once_per_run
from tests.supervisor.helpers import (
    FINAL_CHECKPOINT,
    NPROC,
    REPO_ROOT,
    WORKER_ARGS,
    child_env,
)


@pytest.fixture(scope="session")
def reference_checkpoint(tmp_path_factory) -> Path:
    """Final checkpoint of an uninterrupted worker run (plain torchrun, no supervisor); read-only."""

    def train(out: Path) -> None:
        argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(NPROC),
                "-m", "worker.train_gpt2", "--log_dir", str(out), *WORKER_ARGS]
        done = subprocess.run(argv, check=False, cwd=REPO_ROOT, env=child_env(), capture_output=True, text=True,
                              timeout=400)
        assert done.returncode == 0 and (out / FINAL_CHECKPOINT).exists(), done.stdout[-2000:] + done.stderr[-2000:]

    return once_per_run(tmp_path_factory, "supervisor-reference", train) / FINAL_CHECKPOINT
