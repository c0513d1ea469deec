"""Restarts: backoff between attempts, no-progress detection, and the decision to restart or
give up after a failed attempt.
"""
from __future__ import annotations

from dataclasses import dataclass

from shared.exit_codes import SupervisorExit, WorkerExit
from shared.vocabulary import (
    OutcomeKind,
    SupervisorStateName,
)
from supervisor.policy.exits import Outcome

# --------------------------------------------------------------------------------------------
# Backoff
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackoffConfig:
    initial_s: float = 5.0
    max_s: float = 300.0
    reset_after_s: float = 600.0  # an attempt that stayed healthy this long resets the backoff


def backoff_delay(consecutive_failures: int, config: BackoffConfig) -> float:
    """Exponential: initial, 2x, 4x ... capped. ``consecutive_failures`` counts from 1."""
    if consecutive_failures <= 0 or config.initial_s <= 0:
        return 0.0
    exponent = min(consecutive_failures - 1, 60)  # avoid float overflow on absurd counts
    return min(config.max_s, config.initial_s * (2.0**exponent))


def remaining_backoff(delay_s: float, already_waited_s: float) -> float:
    """What is left of a backoff after ``already_waited_s`` spent between the attempts anyway
    (validating the checkpoint): that work overlaps the wait instead of adding to it."""
    return max(0.0, delay_s - max(0.0, already_waited_s))


def next_consecutive_failures(previous: int, attempt_duration_s: float, config: BackoffConfig) -> int:
    """Failures in a row after one more failure; a long healthy attempt starts the count over."""
    if attempt_duration_s >= config.reset_after_s:
        return 1
    return previous + 1


# --------------------------------------------------------------------------------------------
# No-progress detection
# --------------------------------------------------------------------------------------------


@dataclass
class ProgressTracker:
    """Counts consecutive failures across which the newest checkpoint's step did not advance.

    A job that dies at step 41,213 every time never moves its newest checkpoint; restarting it
    forever burns the budget and the GPU bill. ``best_step`` is the newest checkpoint step seen at
    the previous failure (or at supervisor start).
    """

    best_step: int | None = None
    stalled_failures: int = 0

    def record_failure(self, newest_checkpoint_step: int | None) -> int:
        """Update with the newest checkpoint step after a failure; returns the stall count."""
        advanced = newest_checkpoint_step is not None and (
            self.best_step is None or newest_checkpoint_step > self.best_step
        )
        if advanced:
            self.best_step = newest_checkpoint_step
            self.stalled_failures = 0
        else:
            self.stalled_failures += 1
        return self.stalled_failures


@dataclass(frozen=True)
class RestartLimits:
    max_restarts: int = 10
    max_no_progress_restarts: int = 3


@dataclass(frozen=True)
class Decision:
    restart: bool
    delay_s: float = 0.0
    reason: str = ""
    # How a "no" ends the run: a run-identity mismatch is a refusal, everything else giving up.
    end_state: SupervisorStateName = SupervisorStateName.GAVE_UP
    exit_code: SupervisorExit = SupervisorExit.GAVE_UP


def decide_after_failure(
    outcome: Outcome,
    *,
    restarts_used: int,
    stalled_failures: int,
    consecutive_failures: int,
    limits: RestartLimits,
    backoff: BackoffConfig,
) -> Decision:
    """Restart (after how long) or give up, and why, in one human line."""
    if outcome.kind == OutcomeKind.PERMANENT:
        if outcome.exit_code == WorkerExit.RUN_MISMATCH:
            return Decision(False, reason="the arguments describe another run than the one in this directory",
                            end_state=SupervisorStateName.REFUSED, exit_code=SupervisorExit.REFUSED)
        if outcome.exit_code == WorkerExit.UNSUPPORTED_FORMAT:  # the worker's own version check
            return Decision(False, reason="the checkpoint's format is newer than this gpt2sup reads",
                            exit_code=SupervisorExit.UNSUPPORTED_FORMAT)
        return Decision(False, reason="relaunching the same command cannot succeed")
    if restarts_used >= limits.max_restarts:
        return Decision(False, reason=f"restart budget exhausted ({restarts_used}/{limits.max_restarts} restarts used)")
    if limits.max_no_progress_restarts > 0 and stalled_failures >= limits.max_no_progress_restarts:
        return Decision(
            False,
            reason=(
                f"no progress: the newest checkpoint did not advance across {stalled_failures} "
                f"consecutive failures"
            ),
        )
    if outcome.kind == OutcomeKind.BAD_CHECKPOINT:
        # The cause is quarantined before the relaunch; waiting would not make the next file better.
        return Decision(True, delay_s=0.0, reason="restart from the previous checkpoint")
    return Decision(True, delay_s=backoff_delay(consecutive_failures, backoff), reason="restart")


