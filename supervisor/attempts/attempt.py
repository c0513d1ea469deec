"""One launch attempt as the cycle sees it: ``Attempts.run(n) -> AttemptResult``.

The cycle (``run_loop``) only needs "run attempt n and tell me how it ended"; the real
implementation launches torchrun and watches it (``supervisor.attempts.torchrun_attempts``), tests pass a fake that
returns scripted endings. This is the seam torch elastic draws with ``_start_workers`` /
``_monitor_workers``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from supervisor.policy import Outcome


@dataclass
class AttemptResult:
    outcome: Outcome
    reason: str  # one human line: who, how, after which step, and the worker's own cause
    duration_s: float
    step: int | None = None  # last completed step seen
    message: str | None = None  # the failing rank's full heartbeat message (may be several lines)
    cause: str | None = None  # its one-line cause (heartbeat message, argparse error, exception)
    bad_checkpoint: str | None = None  # with a BAD_CHECKPOINT outcome: the file the worker rejected
    last_checkpoint: str | None = None  # the newest checkpoint the worker reported (saved or loaded)
    rendezvous_closed: bool = False  # torchrun exited at once: its rendezvous id is closed in a live c10d store
    attempt_id: str | None = None  # the id this attempt's ranks carry in their beats (None: unknown)


class Attempts(Protocol):
    def run(self, number: int) -> AttemptResult:
        """Launch attempt ``number`` and watch it until it ends, however it ends."""
        ...

    def time_recovery(self, *, validation_s: float | None = None, backoff_s: float | None = None) -> None:
        """The cycle's share of the restart in progress (checkpoint validation, backoff), for its
        ``restart_breakdown`` event; an implementation that times no restarts ignores it."""
        ...
