"""Exit codes and status words both processes agree on (documented in README.md)."""
from __future__ import annotations

from enum import IntEnum


class WorkerExit(IntEnum):
    """Exit codes of ``python -m worker.train_gpt2``."""

    OK = 0  # finished max_steps, or stopped on request after saving (heartbeat says which)
    CRASHED = 1  # unhandled exception (Python's default)
    USAGE = 2  # bad command line (argparse's default)
    DIVERGED = 3  # non-finite loss; restarting from the same checkpoint will not help by itself
    CHECKPOINT_ERROR = 4  # requested checkpoint missing, unreadable or incompatible
    DATA_ERROR = 5  # data directory missing or holding no shards


class SupervisorExit(IntEnum):
    """Exit codes of ``gpt2sup run`` (and the other ``gpt2sup`` commands)."""

    FINISHED = 0  # training reached max steps
    INTERNAL_ERROR = 1  # a bug in gpt2sup itself
    REFUSED = 2  # refused to start: bad options, run directory locked by another supervisor
    GAVE_UP = 3  # restart budget exhausted or no progress across restarts
    STOPPED = 4  # stopped on request (SIGINT/SIGTERM/`gpt2sup stop`); resumable


# Heartbeat vocabulary (DESIGN §5).
PHASES = ("startup", "train", "eval", "hellaswag", "generate", "checkpoint")
STATUSES = ("running", "finished", "stopped", "diverged", "failed")
