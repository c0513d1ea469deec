"""Pure restart policy: every "should we / how long / is it stuck" question as a function of data.

Nothing here touches processes, files or the clock (callers pass ``now``), so the whole policy is
unit-tested in milliseconds and the run loop stays a thin sequence of calls into it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Collection, Iterable, Sequence

# --------------------------------------------------------------------------------------------
# Hang timeouts per phase
# --------------------------------------------------------------------------------------------

AUTO = "auto"
# `--hang-timeout auto`: this many times the slowest train step seen, never below the floor.
AUTO_STEP_MULTIPLE = 20.0
AUTO_FLOOR_S = 120.0

EVAL_LIKE_PHASES = ("eval", "hellaswag", "generate")


@dataclass(frozen=True)
class TimeoutConfig:
    """How long each phase may stay silent before the rank counts as hung.

    ``hang_timeout`` is seconds, or ``None`` for auto. Long phases get their own allowance
    because a checkpoint save of a 1.5 GB file or a HellaSwag pass legitimately takes minutes
    without a step heartbeat.
    """

    hang_timeout: float | None  # None == auto
    startup_timeout: float
    checkpoint_timeout: float
    eval_timeout: float
    auto_multiple: float = AUTO_STEP_MULTIPLE
    auto_floor: float = AUTO_FLOOR_S


def parse_hang_timeout(text: str) -> float | None:
    """``"auto"`` -> None; a positive number of seconds -> float. Raises ValueError otherwise."""
    cleaned = str(text).strip().lower()
    if cleaned == AUTO:
        return None
    value = float(cleaned)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"hang timeout must be positive seconds or 'auto', got {text!r}")
    return value


def auto_train_timeout(slowest_step_s: float | None, config: TimeoutConfig) -> float:
    """The auto hang timeout: a multiple of the slowest step, floored.

    Before any step has been timed (the first step includes warm-up/compile) we do not know the
    pace, so the start-up allowance applies instead of a guess.
    """
    if slowest_step_s is None:
        return max(config.auto_floor, config.startup_timeout)
    return max(config.auto_floor, config.auto_multiple * slowest_step_s)


def timeout_for_phase(phase: str | None, config: TimeoutConfig, slowest_step_s: float | None = None) -> float:
    """Seconds of heartbeat silence tolerated in ``phase``."""
    if phase in (None, "startup"):
        return config.startup_timeout
    if phase == "checkpoint":
        return config.checkpoint_timeout
    if phase in EVAL_LIKE_PHASES:
        return config.eval_timeout
    if config.hang_timeout is None:
        return auto_train_timeout(slowest_step_s, config)
    return config.hang_timeout


@dataclass
class StepPaceTracker:
    """Learns the slowest train-step interval from successive heartbeat observations.

    Only pairs of observations that are both in phase ``train`` count, so an eval or a checkpoint
    between two polls does not masquerade as a slow step (it would inflate the auto timeout).
    """

    slowest_step_s: float | None = None
    _last: tuple[int, float, str] | None = None  # (step, heartbeat time, phase)

    def observe(self, step: int, hb_time: float, phase: str) -> None:
        last = self._last
        self._last = (step, hb_time, phase)
        if last is None:
            return
        last_step, last_time, last_phase = last
        if phase != "train" or last_phase != "train" or step <= last_step or last_step < 1:
            # last_step < 1: the interval up to step 1 includes warm-up, not the steady pace.
            return
        per_step = (hb_time - last_time) / (step - last_step)
        if per_step > 0 and (self.slowest_step_s is None or per_step > self.slowest_step_s):
            self.slowest_step_s = per_step

    def reset_attempt(self) -> None:
        """Forget the last observation (a new attempt's steps are not contiguous with the old)."""
        self._last = None


@dataclass(frozen=True)
class RankBeat:
    """What the hang check needs from one rank's heartbeat."""

    rank: int
    phase: str
    time: float
    status: str = "running"
    step: int = -1


@dataclass(frozen=True)
class HangVerdict:
    rank: int
    phase: str
    silent_s: float
    timeout_s: float
    step: int

    def describe(self) -> str:
        return (
            f"rank {self.rank} silent for {self.silent_s:.1f}s in phase {self.phase!r} at step "
            f"{self.step} (timeout {self.timeout_s:.0f}s)"
        )


def find_hung_rank(
    beats: Sequence[RankBeat],
    now: float,
    config: TimeoutConfig,
    slowest_step_s: float | None = None,
    suspect_ranks: Collection[int] = (),
) -> HangVerdict | None:
    """The rank most likely to blame among those past their phase timeout, else None.

    When one rank stalls, its peers block in the next collective and stop beating too, so all of
    them go overdue within moments. The culprit is named by, in order: a rank the caller knows
    is suspect (e.g. its process is stopped), the rank furthest behind in steps, the rank whose
    heartbeat is oldest. Ranks that reported a terminal status are on their way out and get the
    checkpoint allowance to do so.
    """
    overdue: list[HangVerdict] = []
    for beat in beats:
        if beat.status != "running":
            timeout = config.checkpoint_timeout
        else:
            timeout = timeout_for_phase(beat.phase, config, slowest_step_s)
        silent = now - beat.time
        if silent > timeout:
            overdue.append(HangVerdict(beat.rank, beat.phase, silent, timeout, beat.step))
    if not overdue:
        return None
    suspects = set(suspect_ranks)
    return min(overdue, key=lambda v: (v.rank not in suspects, v.step, -v.silent_s, v.rank))


def startup_timed_out(launched_at: float, now: float, any_heartbeat: bool, config: TimeoutConfig) -> bool:
    """No first heartbeat within the start-up allowance (imports, rendezvous, compile)."""
    return not any_heartbeat and now - launched_at > config.startup_timeout


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


# --------------------------------------------------------------------------------------------
# Exit classification and the restart decision
# --------------------------------------------------------------------------------------------

# Outcome kinds.
FINISHED = "finished"
STOPPED = "stopped"
CRASHED = "crashed"
OOM = "oom"
DIVERGED = "diverged"
HUNG = "hung"
STARTUP_TIMEOUT = "startup_timeout"
USAGE_ERROR = "usage_error"

WORKER_EXIT_USAGE = 2
WORKER_EXIT_DIVERGED = 3
WORKER_EXIT_CHECKPOINT = 4
WORKER_EXIT_DATA = 5


@dataclass(frozen=True)
class RankExit:
    """One rank's exit as torchrun reported it (negative = killed by that signal)."""

    rank: int
    exit_code: int


@dataclass(frozen=True)
class ExitFacts:
    """Everything observed about an attempt that ended on its own (no hang verdict)."""

    returncode: int  # torchrun's (negative: killed by a signal)
    statuses: Sequence[str] = ()  # heartbeat status per rank (fresh heartbeats only)
    rank_exits: Sequence[RankExit] = ()  # from torchrun's failure summary
    oom_kill_observed: bool = False  # the kernel's OOM counter moved during the attempt
    memory_was_tight: bool = False  # psutil saw available memory near zero just before
    stop_requested: bool = False


@dataclass(frozen=True)
class Outcome:
    kind: str
    exit_code: int | None = None
    signal: int | None = None
    rank: int | None = None

    @property
    def is_failure(self) -> bool:
        return self.kind not in (FINISHED, STOPPED)


def classify_exit(facts: ExitFacts) -> Outcome:
    """Name what happened to an attempt from its exit code, heartbeats and torchrun's summary."""
    statuses = list(facts.statuses)
    if facts.stop_requested:
        # We asked it to stop: however it went down, that is not a failure to restart from.
        if facts.returncode == 0 and statuses and all(s == "finished" for s in statuses):
            return Outcome(FINISHED, exit_code=0)
        return Outcome(STOPPED, exit_code=facts.returncode)
    if facts.returncode == 0:
        if "stopped" in statuses:
            return Outcome(STOPPED, exit_code=0)
        return Outcome(FINISHED, exit_code=0)
    first = facts.rank_exits[0] if facts.rank_exits else None
    code = first.exit_code if first is not None else facts.returncode
    rank = first.rank if first is not None else None
    if "diverged" in statuses or code == WORKER_EXIT_DIVERGED:
        return Outcome(DIVERGED, exit_code=code, rank=rank)
    if code == WORKER_EXIT_USAGE:
        return Outcome(USAGE_ERROR, exit_code=code, rank=rank)
    if code < 0:
        signum = -code
        if signum == 9 and (facts.oom_kill_observed or facts.memory_was_tight):
            return Outcome(OOM, signal=signum, rank=rank)
        return Outcome(CRASHED, signal=signum, rank=rank)
    return Outcome(CRASHED, exit_code=code, rank=rank)


@dataclass(frozen=True)
class RestartLimits:
    max_restarts: int = 10
    max_no_progress_restarts: int = 3


@dataclass(frozen=True)
class Decision:
    restart: bool
    delay_s: float = 0.0
    reason: str = ""


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
    if outcome.kind == USAGE_ERROR:
        return Decision(False, reason="the worker rejected its command line (exit 2); restarting cannot help")
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
    return Decision(True, delay_s=backoff_delay(consecutive_failures, backoff), reason="restart")


# --------------------------------------------------------------------------------------------
# Disk
# --------------------------------------------------------------------------------------------

DISK_OK = "ok"
DISK_LOW = "low"  # below the threshold: warn
DISK_CRITICAL = "critical"  # cannot fit even one more checkpoint

MIN_FREE_DISK_FLOOR = 64 * 1024**2
MIN_FREE_DISK_MULTIPLE = 2


def default_min_free_disk(newest_checkpoint_bytes: int | None) -> int:
    """Room for two more checkpoints of the newest's size (one being written, one spare)."""
    return max(MIN_FREE_DISK_FLOOR, MIN_FREE_DISK_MULTIPLE * int(newest_checkpoint_bytes or 0))


def disk_level(free_bytes: int, threshold_bytes: int, newest_checkpoint_bytes: int | None) -> str:
    if newest_checkpoint_bytes and free_bytes < newest_checkpoint_bytes:
        return DISK_CRITICAL
    if free_bytes < threshold_bytes:
        return DISK_LOW
    return DISK_OK


def parse_size(text: str) -> int:
    """``"500M"``, ``"2G"``, ``"1.5GiB"``, ``"1048576"`` -> bytes. Raises ValueError."""
    cleaned = str(text).strip().upper().replace("IB", "").rstrip("B")
    units = {"K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
    multiplier = 1
    if cleaned and cleaned[-1] in units:
        multiplier = units[cleaned[-1]]
        cleaned = cleaned[:-1]
    value = float(cleaned)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"bad size {text!r}")
    return int(value * multiplier)


@dataclass(frozen=True)
class CheckpointOnDisk:
    step: int
    size_bytes: int
    name: str


def choose_checkpoints_to_prune(
    valid_checkpoints: Iterable[CheckpointOnDisk],
    free_bytes: int,
    threshold_bytes: int,
    newest_valid_step: int | None,
) -> list[CheckpointOnDisk]:
    """Oldest valid checkpoints to delete until free space reaches the threshold.

    The newest valid checkpoint, and anything newer than it (not yet validated, maybe being
    written), is never a candidate: it is the one we resume from.
    """
    candidates = sorted(
        (c for c in valid_checkpoints if newest_valid_step is not None and c.step < newest_valid_step),
        key=lambda c: c.step,
    )
    chosen: list[CheckpointOnDisk] = []
    freed = 0
    for ckpt in candidates:
        if free_bytes + freed >= threshold_bytes:
            break
        chosen.append(ckpt)
        freed += ckpt.size_bytes
    return chosen


@dataclass
class DiskWatch:
    """Remembers the last disk level so events are written at threshold crossings, not every poll."""

    level: str = DISK_OK
    history: list[str] = field(default_factory=list)

    def update(self, new_level: str) -> bool:
        """True when the level changed (worth an event)."""
        changed = new_level != self.level
        self.level = new_level
        if changed:
            self.history.append(new_level)
        return changed
