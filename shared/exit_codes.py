"""Exit codes both processes agree on (documented in README.md, the worker's in docs/worker.md).

A worker exit code is a verdict the supervisor acts on, so each code means one thing:

* 4 CHECKPOINT_ERROR says "the checkpoint I was given is bad": the supervisor quarantines that
  file and falls back to the previous valid one.
* 2 USAGE, 5 DATA_ERROR, 6 RUN_MISMATCH and 8 RUN_DIR_BUSY are permanent: relaunching the same
  command cannot succeed, so the supervisor gives up at once with the worker's own reason.
* 7 FINAL_SAVE_FAILED: training reached its last step but the final state is not on disk; the
  run must not be reported as finished.
* 9 STOP_SAVE_FAILED: the worker stopped on a stop request (SIGTERM/SIGINT, or its supervisor
  gone) but that stop's checkpoint is not on disk. Kept apart from 7: when a full disk also
  swallows the heartbeat, the exit code alone must still say which ending it was.
* 10 UNSUPPORTED_FORMAT: the checkpoint to resume from has a ``format_version`` this install does
  not read (a newer gpt2sup wrote it). Not damage: the file is never quarantined, and relaunching
  the same install cannot help, so the supervisor ends at once (``gpt2sup run`` exit 6).
* 11 PRETRAINED_ERROR: the ``--pretrained_checkpoint`` source cannot be used (damaged, a bad
  Hugging Face header or config, another architecture). It is an input of the command, not one of
  the run's checkpoints: never renamed, and no relaunch can fix it (permanent).
"""
from __future__ import annotations

from enum import IntEnum


class WorkerExit(IntEnum):
    """Exit codes of ``python -m worker.train_gpt2``."""

    OK = 0  # finished max_steps, or stopped on request after saving (heartbeat says which)
    CRASHED = 1  # unhandled exception (Python's default)
    USAGE = 2  # bad command line (argparse's default)
    DIVERGED = 3  # non-finite loss; restarting from the same checkpoint will not help by itself
    CHECKPOINT_ERROR = 4  # the checkpoint to resume from is unreadable, damaged or does not restore
    DATA_ERROR = 5  # data directory missing or holding no shards
    RUN_MISMATCH = 6  # the arguments describe another run than the one in --log_dir
    FINAL_SAVE_FAILED = 7  # the last step's checkpoint could not be written
    RUN_DIR_BUSY = 8  # another trainer holds --log_dir
    STOP_SAVE_FAILED = 9  # a stop request's checkpoint could not be written
    UNSUPPORTED_FORMAT = 10  # the checkpoint's format_version is newer than this install reads
    PRETRAINED_ERROR = 11  # the --pretrained_checkpoint source cannot be used


# Worker exits that no relaunch can fix: give up at once, quoting the worker's reason.
PERMANENT_WORKER_EXITS = frozenset(
    {WorkerExit.USAGE, WorkerExit.DATA_ERROR, WorkerExit.RUN_MISMATCH, WorkerExit.RUN_DIR_BUSY,
     WorkerExit.UNSUPPORTED_FORMAT, WorkerExit.PRETRAINED_ERROR}
)


class SupervisorExit(IntEnum):
    """Exit codes of ``gpt2sup run`` (and the other ``gpt2sup`` commands)."""

    FINISHED = 0  # training reached max steps and its final checkpoint is on disk
    INTERNAL_ERROR = 1  # a bug in gpt2sup itself
    REFUSED = 2  # refused to start: bad options, run directory busy, a different run's arguments
    GAVE_UP = 3  # restart budget exhausted, no progress, or a permanent worker error
    STOPPED = 4  # stopped on request (SIGINT/SIGTERM/SIGHUP/`gpt2sup stop`); resumable
    FINISHED_WITHOUT_CHECKPOINT = 5  # reached max steps, but the final checkpoint was not written
    UNSUPPORTED_FORMAT = 6  # a checkpoint's format_version is newer than this install reads: upgrade
    FINISHED_NOT_UPLOADED = 7  # finished, final checkpoint on local disk, but NOT committed to --checkpoint-uri
