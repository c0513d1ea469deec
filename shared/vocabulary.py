"""The words both processes write into shared files, as typed vocabularies.

Each is a ``StrEnum``: members compare equal to (and serialise as) their plain string, so JSON
files keep the same text while code gets one spelling checked by the type checker and by ``in``.
"""
from __future__ import annotations

import sys
from enum import Enum

if sys.version_info >= (3, 11):
    from enum import StrEnum
else:  # pragma: no cover - Python 3.10

    class StrEnum(str, Enum):
        def __str__(self) -> str:
            return str(self.value)


# Set by `gpt2sup run --node-rank R` in its workers' environment: the worker on node 0's local rank 0
# writes the run's files, whichever global rank torchrun's rendezvous gave it.
NODE_RANK_ENV = "GPT2SUP_NODE_RANK"
# Set by `gpt2sup run` in each attempt's launch environment: the attempt's id, which every rank
# writes into its heartbeat (``attempt_id``). The supervisor ties a beat to its attempt by this id,
# never by comparing the beat's wall-clock time with its own (node clocks differ, clocks step).
ATTEMPT_ID_ENV = "GPT2SUP_ATTEMPT_ID"
# Set by `gpt2sup run` for every rank: ``<pid>:<create_time>`` of the supervisor. Workers (and a
# script using ``shared.client``) stop when it is gone; a later supervisor proves orphans by it.
SUPERVISOR_ENV = "GPT2SUP_SUPERVISOR"
# Set by `gpt2sup run` for every rank: the run directory (``--log-dir``), where a script using
# ``shared.client`` writes its heartbeats.
RUN_DIR_ENV = "GPT2SUP_RUN_DIR"


class Phase(StrEnum):
    """What a worker rank is doing (heartbeat ``phase``); each phase has its own hang timeout."""

    STARTUP = "startup"
    TRAIN = "train"
    EVAL = "eval"
    HELLASWAG = "hellaswag"
    GENERATE = "generate"
    CHECKPOINT = "checkpoint"


EVAL_LIKE_PHASES = frozenset({Phase.EVAL, Phase.HELLASWAG, Phase.GENERATE})


class RankStatus(StrEnum):
    """A worker rank's own account of itself (heartbeat ``status``)."""

    RUNNING = "running"
    FINISHED = "finished"
    FINISHED_WITHOUT_CHECKPOINT = "finished_without_checkpoint"
    STOPPED = "stopped"
    DIVERGED = "diverged"
    FAILED = "failed"


class SupervisorStateName(StrEnum):
    """``supervisor.json["state"]``."""

    STARTING = "starting"  # lock taken, cleaning up, validating
    RUNNING = "running"  # an attempt is live
    RESTARTING = "restarting"  # between attempts (validation, backoff)
    STOPPING = "stopping"  # stop requested, waiting for the worker to save and exit
    FINISHED = "finished"  # terminal: training reached max steps, final checkpoint on disk
    FINISHED_WITHOUT_CHECKPOINT = "finished_without_checkpoint"  # terminal: last save failed
    STOPPED = "stopped"  # terminal: stopped on request
    GAVE_UP = "gave_up"  # terminal: restart budget, no progress, or a permanent error
    REFUSED = "refused"  # terminal: would not run (e.g. another run's arguments)
    ERROR = "error"  # terminal: internal error


TERMINAL_STATES = frozenset(
    {
        SupervisorStateName.FINISHED,
        SupervisorStateName.FINISHED_WITHOUT_CHECKPOINT,
        SupervisorStateName.STOPPED,
        SupervisorStateName.GAVE_UP,
        SupervisorStateName.REFUSED,
        SupervisorStateName.ERROR,
    }
)


class OutcomeKind(StrEnum):
    """How one launch attempt ended, as the supervisor classifies it."""

    FINISHED = "finished"
    FINISHED_WITHOUT_CHECKPOINT = "finished_without_checkpoint"
    STOPPED = "stopped"
    CRASHED = "crashed"
    OOM = "oom"
    DIVERGED = "diverged"
    HUNG = "hung"
    STARTUP_TIMEOUT = "startup_timeout"
    BAD_CHECKPOINT = "bad_checkpoint"  # worker exit 4: quarantine the file it was given, fall back
    PERMANENT = "permanent"  # usage, data, run mismatch, run dir busy, missing module: give up


class EventKind(StrEnum):
    """``events.jsonl`` record kinds (each record: {"time", "event", "attempt", ...details})."""

    SUPERVISOR_STARTED = "supervisor_started"
    ORPHANS_KILLED = "orphans_killed"
    LAUNCHED = "launched"
    CRASHED = "crashed"
    HUNG = "hung"
    EVIDENCE_CAPTURED = "evidence_captured"
    CHECKPOINT_VALID = "checkpoint_valid"
    QUARANTINED = "quarantined"
    DISK_WARNING = "disk_warning"
    PRUNED = "pruned"
    BACKOFF = "backoff"
    RESTARTED = "restarted"
    STOP_REQUESTED = "stop_requested"
    STOPPED = "stopped"
    GAVE_UP = "gave_up"
    REFUSED = "refused"
    FINISHED = "finished"
    FINISHED_WITHOUT_CHECKPOINT = "finished_without_checkpoint"
    REPLAY_CHECK = "replay_check"  # written by the worker after a resume (see docs/checkpoints.md)
    CONFIG_CHANGE = "config_change"  # an allowed change of the run's arguments, noted
    JOURNAL_ERROR = "journal_error"  # the supervisor could not write its files for a while
    STRAGGLER = "straggler"  # a rank computes consistently slower than its peers (detection only)
    RESTART_BREAKDOWN = "restart_breakdown"  # where one restart's time went (supervisor.attempts.restart_timing)
    UPLOADED = "uploaded"  # a checkpoint committed in the --checkpoint-uri store (supervisor.checkpoints.remote_sync)
    UPLOAD_SKIPPED = "upload_skipped"  # older checkpoints not uploaded: a newer one went first
    DOWNLOADED = "downloaded"  # a remote checkpoint newer than every valid local one, fetched before a launch
    WARNING = "warning"
    INTERNAL_ERROR = "internal_error"


class DiskLevel(StrEnum):
    OK = "ok"
    LOW = "low"  # below the threshold: warn
    CRITICAL = "critical"  # cannot fit even one more checkpoint


class Verdict(StrEnum):
    """A checkpoint validation's answer."""

    VALID = "valid"
    INVALID = "invalid"  # positive evidence the file is bad: quarantine
    INCONCLUSIVE = "inconclusive"  # could not judge (timeout, probe could not start): never quarantine
    # A format_version newer than this install reads: a property of the install, not damage.
    # Never quarantined; the run cannot go on with this install (gpt2sup run exit 6).
    UNSUPPORTED = "unsupported"
    NO_CHECKPOINT = "no_checkpoint"  # verify: a directory with no model_*.pt yet (nothing to judge)
