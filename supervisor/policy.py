"""Pure restart policy: every "should we / how long / is it stuck" question as a function of data.

Nothing here touches processes, files or the clock (callers pass ``now``), so the whole policy is
unit-tested in milliseconds and the run loop stays a thin sequence of calls into it.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from shared.exit_codes import PERMANENT_WORKER_EXITS, SupervisorExit, WorkerExit
from shared.vocabulary import (
    EVAL_LIKE_PHASES,
    DiskLevel,
    OutcomeKind,
    Phase,
    RankStatus,
    SupervisorStateName,
)

# --------------------------------------------------------------------------------------------
# Hang timeouts per phase
# --------------------------------------------------------------------------------------------

AUTO = "auto"
# Auto timeouts: this many times the slowest step / save / eval seen, never below a floor.
AUTO_STEP_MULTIPLE = 20.0
AUTO_FLOOR_S = 120.0
# Before the first save of a run is timed, a save is estimated from the newest checkpoint's size
# at this (deliberately slow: network filesystems, busy disks) write bandwidth.
CONSERVATIVE_WRITE_BYTES_PER_S = 50e6
# Allowances while nothing at all is known (no save timed, no checkpoint on disk, no eval timed).
UNKNOWN_SAVE_S = 600.0
UNKNOWN_EVAL_S = 1200.0


@dataclass(frozen=True)
class TimeoutConfig:
    """How long each phase may stay silent before the rank counts as hung; ``None`` means auto.

    Long phases get their own allowance because saving a 1.5 GB checkpoint or a HellaSwag pass
    legitimately takes minutes without a step heartbeat. Auto allowances follow what this run
    has measured (``phase_timeouts``), so a save that hangs is caught in about the time a save
    takes here, not after a fixed ten minutes.
    """

    hang_timeout: float | None = None
    startup_timeout: float = 1800.0
    checkpoint_timeout: float | None = None
    eval_timeout: float | None = None
    auto_multiple: float = AUTO_STEP_MULTIPLE
    auto_floor: float = AUTO_FLOOR_S


def auto_train_timeout(slowest_step_s: float | None, config: TimeoutConfig) -> float:
    """The auto hang timeout: a multiple of the slowest step, floored.

    Before any step has been timed (the first step includes warm-up/compile) we do not know the
    pace, so the start-up allowance applies instead of a guess.
    """
    if slowest_step_s is None:
        return max(config.auto_floor, config.startup_timeout)
    return max(config.auto_floor, config.auto_multiple * slowest_step_s)


@dataclass(frozen=True)
class Measurements:
    """What this run has measured so far: the inputs of the auto timeouts."""

    slowest_step_s: float | None = None
    slowest_save_s: float | None = None
    slowest_eval_s: float | None = None
    newest_checkpoint_bytes: int | None = None


def phase_timeouts(config: TimeoutConfig, seen: Measurements) -> dict[Phase, float]:
    """Seconds of heartbeat silence tolerated in each phase (explicit values win over auto).

    A save or an eval may always take as long as a silent training step (the floor); beyond
    that, ``auto_multiple`` times the slowest one seen. Before the first save is timed, the save
    is estimated from the newest checkpoint's size at a conservative bandwidth.
    """
    if config.hang_timeout is not None:
        train = config.hang_timeout
    else:
        train = auto_train_timeout(seen.slowest_step_s, config)
    floor = config.hang_timeout if config.hang_timeout is not None else config.auto_floor

    def auto(measured: float | None, unknown: float) -> float:
        return unknown if measured is None else max(floor, config.auto_multiple * measured)

    if config.checkpoint_timeout is not None:
        save = config.checkpoint_timeout
    elif seen.slowest_save_s is None and seen.newest_checkpoint_bytes:
        save = auto(seen.newest_checkpoint_bytes / CONSERVATIVE_WRITE_BYTES_PER_S, UNKNOWN_SAVE_S)
    else:
        save = auto(seen.slowest_save_s, UNKNOWN_SAVE_S)
    evaluation = config.eval_timeout if config.eval_timeout is not None else auto(seen.slowest_eval_s, UNKNOWN_EVAL_S)
    timeouts = {Phase.STARTUP: config.startup_timeout, Phase.TRAIN: train, Phase.CHECKPOINT: save}
    timeouts.update({phase: evaluation for phase in EVAL_LIKE_PHASES})
    return timeouts


def stop_allowance(timeouts: Mapping[Phase, float], configured: float | None = None) -> float:
    """How long a stop request may take: ``--stop-timeout`` when given, else (``auto``) finish the
    current step, then save. The one rule for the live run's stops and for stopping orphans."""
    if configured is not None:
        return configured
    return timeouts[Phase.TRAIN] + timeouts[Phase.CHECKPOINT]


# `gpt2sup stop --force` sends this signal; a second SIGINT (Ctrl-C at the supervisor's terminal) also forces.
FORCE_SIGNAL_NAME = "SIGQUIT"


def stop_is_forced(signal_names: Sequence[str]) -> bool:
    """Whether the stop requests received so far say "stop now, without the save".

    Plain requests (SIGTERM from ``gpt2sup stop``, SIGHUP, a first Ctrl-C) are idempotent: two
    operators or a retrying script that ask at the same moment must not lose the steps since the
    last checkpoint. Only an explicit force (``gpt2sup stop --force``: SIGQUIT) or a second Ctrl-C
    at the supervisor's own terminal (a second SIGINT) skips the save.
    """
    return FORCE_SIGNAL_NAME in signal_names or list(signal_names).count("SIGINT") >= 2


def forced_stop_reason(signal_names: Sequence[str]) -> str:
    """Words for the journal once :func:`stop_is_forced` holds."""
    if FORCE_SIGNAL_NAME in signal_names:
        return f"forced stop request ({FORCE_SIGNAL_NAME}, `gpt2sup stop --force`)"
    return "second Ctrl-C (SIGINT)"


def timeout_for_phase(phase: str | None, timeouts: Mapping[Phase, float]) -> float:
    """Seconds of heartbeat silence tolerated in ``phase`` (an unknown phase counts as training)."""
    if phase is None:
        return timeouts[Phase.STARTUP]
    try:
        return timeouts[Phase(phase)]
    except (ValueError, KeyError):
        return timeouts[Phase.TRAIN]


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
        if phase != Phase.TRAIN or last_phase != Phase.TRAIN or step <= last_step or last_step < 1:
            # last_step < 1: the interval up to step 1 includes warm-up, not the steady pace.
            return
        per_step = (hb_time - last_time) / (step - last_step)
        if per_step > 0 and (self.slowest_step_s is None or per_step > self.slowest_step_s):
            self.slowest_step_s = per_step

    def reset_attempt(self) -> None:
        """Forget the last observation (a new attempt's steps are not contiguous with the old)."""
        self._last = None


def slowest(previous: float | None, measured: object) -> float | None:
    """The larger of a remembered duration and a newly reported one (ignoring junk values)."""
    if isinstance(measured, bool) or not isinstance(measured, (int, float)):
        return previous
    if not math.isfinite(measured) or measured < 0:
        return previous
    return float(measured) if previous is None else max(previous, float(measured))


@dataclass(frozen=True)
class RankBeat:
    """What the hang check needs from one rank's heartbeat."""

    rank: int
    phase: str
    time: float
    status: str = RankStatus.RUNNING
    step: int = -1


@dataclass(frozen=True)
class HangVerdict:
    rank: int
    phase: str
    silent_s: float
    timeout_s: float
    step: int

    def describe(self) -> str:
        where = f"after step {self.step}" if self.step >= 0 else "before its first step"
        return (
            f"rank {self.rank} silent for {self.silent_s:.1f}s in phase {self.phase!r} {where} "
            f"(timeout {self.timeout_s:.0f}s)"
        )


def beat_of_attempt(beat_attempt_id: str | None, attempt_id: str, changed_since_launch: bool) -> bool:
    """Does a heartbeat belong to the attempt being watched (else it is an earlier attempt's leftover)?

    By the attempt id the supervisor handed the ranks, which they write into every beat; never by
    comparing the beat's wall-clock time with the launch time (a rank whose clock is behind would
    look like a leftover forever, and its final beat naming the final checkpoint would be lost). A
    worker that writes no id (an older or custom ``--worker``) counts once its file changed after
    the launch.
    """
    if beat_attempt_id is not None:
        return beat_attempt_id == attempt_id
    return changed_since_launch


def agent_unresponsive(ranks_known: int, ranks_alive: int, agent_stopped: bool, hang_found: bool) -> bool:
    """Is torchrun itself (the agent) the one not ending the attempt?

    Only once every rank it started has exited: then nothing but torchrun is left to report and
    exit. Stopped by a signal, it never will, so that is known at once; otherwise only when the
    ranks' time to end (the hang check's allowance) ran out. Blaming a rank then would spend a
    training restart on a run whose ranks may have finished and saved.
    """
    if ranks_known == 0 or ranks_alive > 0:
        return False
    return agent_stopped or hang_found


def ranks_ended_cleanly(statuses: Sequence[str], ranks_known: int, final_checkpoint_valid: bool) -> bool:
    """After torchrun stopped responding: did every rank end as it meant to (all finished, with the
    final checkpoint valid; or all stopped, having saved on a stop request)?"""
    if not statuses or len(statuses) < ranks_known:
        return False
    if all(status == RankStatus.STOPPED for status in statuses):
        return True
    return final_checkpoint_valid and all(status == RankStatus.FINISHED for status in statuses)


def find_hung_rank(
    beats: Sequence[RankBeat],
    now: float,
    timeouts: Mapping[Phase, float],
    suspect_ranks: Collection[int] = (),
    exited_ranks: Collection[int] = (),
) -> HangVerdict | None:
    """The rank most likely to blame among those past their phase timeout, else None.

    When one rank stalls, its peers block in the next collective and stop beating too, so all of
    them go overdue within moments. The culprit is named by, in order: a rank the caller knows
    is suspect (e.g. its process is stopped), the rank furthest behind in steps, the rank whose
    heartbeat is oldest. Ranks that reported a terminal status are on their way out and get the
    checkpoint allowance to do so.

    A rank whose process has already exited did not hang: it crashed, and torchrun reports that
    once it has stopped the others (which can take it many seconds on a loaded machine, or its
    own close timeout when a peer is stuck in a collective). Until then every rank gets the
    checkpoint allowance (the time an attempt may take to end), and the exited rank is named
    first if even that runs out.
    """
    ending = bool(exited_ranks)
    overdue: list[HangVerdict] = []
    for beat in beats:
        if ending or beat.status != RankStatus.RUNNING:
            timeout = timeouts[Phase.CHECKPOINT]
        else:
            timeout = timeout_for_phase(beat.phase, timeouts)
        silent = now - beat.time
        if silent > timeout:
            overdue.append(HangVerdict(beat.rank, beat.phase, silent, timeout, beat.step))
    if not overdue:
        return None
    suspects = set(suspect_ranks) | set(exited_ranks)
    return min(overdue, key=lambda v: (v.rank not in suspects, v.step, -v.silent_s, v.rank))


# --------------------------------------------------------------------------------------------
# Stragglers (detection only: nothing is killed or restarted for being slow)
# --------------------------------------------------------------------------------------------
STRAGGLER_RATIO = 1.2  # a rank computing this much longer than the others is a straggler
STRAGGLER_RECOVERED_RATIO = 1.1  # ... and stops being one below this (no event every interval)
STRAGGLER_MIN_SAMPLES = 10  # steps a rank must have measured before it is judged
STRAGGLER_MIN_EXCESS_S = 0.005  # ignore a difference smaller than this: timer noise on tiny steps


@dataclass(frozen=True)
class Straggler:
    """A rank whose own compute per step is consistently slower than its peers'."""

    rank: int
    median_s: float  # its median compute time per step over its recent steps
    others_median_s: float  # the median of the other ranks' medians
    ratio: float

    def describe(self, hostname: str | None = None) -> str:
        where = f" on {hostname}" if hostname else ""
        return (f"rank {self.rank}{where} is a straggler: {self.median_s * 1000:.1f} ms of compute per step, "
                f"{self.ratio:.2f}x the other ranks' {self.others_median_s * 1000:.1f} ms")


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def is_duration(value: object) -> bool:
    """A heartbeat is another process's file: only finite, non-negative numbers are used."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def find_stragglers(
    samples: Mapping[int, Sequence[float]],
    flagged: Collection[int] = (),
    ratio: float = STRAGGLER_RATIO,
    recovered_ratio: float = STRAGGLER_RECOVERED_RATIO,
    min_samples: int = STRAGGLER_MIN_SAMPLES,
    min_excess_s: float = STRAGGLER_MIN_EXCESS_S,
) -> list[Straggler]:
    """Ranks whose median compute time over their recent steps exceeds ``ratio`` x the median of
    the other ranks' medians.

    ``samples``: per rank, the seconds of its own compute in each recent step (the heartbeat's
    ``compute_s``; not the step time, which the gradient all-reduce makes equal on every rank).
    Medians, so one slow step (a GC pause, a page fault) is not a straggler; the other ranks,
    not all of them, so with two ranks the slow one is compared with the fast one rather than
    with a median it pulls up itself. A rank in ``flagged`` stays a straggler until it falls
    below ``recovered_ratio``, so a rank hovering at the threshold is not announced every check.
    Ranks with fewer than ``min_samples`` steps are neither judged nor used as the yardstick.
    """
    medians = {rank: median(values) for rank, values in samples.items()
               if len(values) >= min_samples and all(is_duration(v) for v in values)}
    found: list[Straggler] = []
    for rank, own in sorted(medians.items()):
        others = [m for r, m in medians.items() if r != rank]
        if not others:
            continue
        typical = median(others)
        threshold = recovered_ratio if rank in flagged else ratio
        if own - typical >= min_excess_s and own > threshold * typical:
            found.append(Straggler(rank, own, typical, own / typical if typical > 0 else math.inf))
    return found


@dataclass(frozen=True)
class PeerEnding:
    """Another node's supervisor ended the run (gave up, refused, stopped): follow it."""

    node: int
    state: str  # a SupervisorStateName: gave_up, refused, stopped
    exit_code: int
    reason: str

    def describe(self) -> str:
        verb = {"gave_up": "gave up", "refused": "refused to go on", "stopped": "stopped"}.get(self.state, self.state)
        return f"node {self.node} {verb}: {self.reason.removeprefix(f'{verb}: ')}"


def peer_ending(marker: object, own_node: int, before: Sequence[object] = (),
                started_at: float | None = None) -> PeerEnding | None:
    """The ending another node recorded (``give_up.json`` or node 0's store) that this supervisor
    must follow.

    A record already there when this supervisor started (one of ``before``) ended an earlier run of
    this directory, which a new ``gpt2sup run`` on every node resumes; any other was written since.
    That is judged without comparing the record's ``time`` with this node's clock: node clocks
    differ (a node an hour ahead would make an old record look new and end a fresh run at once).
    Only node 0's store, which this supervisor cannot read before it connects, still falls back on
    ``started_at`` (the record's time against this node's start). The record is another
    process's file: anything malformed is ignored.
    """
    if not isinstance(marker, dict) or any(marker == old for old in before):
        return None
    node, code, when = marker.get("node"), marker.get("exit_code"), marker.get("time")
    if not isinstance(node, int) or isinstance(node, bool) or node == own_node:
        return None
    if not isinstance(code, int) or isinstance(code, bool):
        return None
    if started_at is not None and (not is_duration(when) or when < started_at):
        return None
    return PeerEnding(node, str(marker.get("state") or "gave_up"), code, str(marker.get("reason") or "no reason given"))


def find_slow_hosts(
    samples: Mapping[int, Sequence[float]],
    hosts: Mapping[int, str | None],
    ratio: float = STRAGGLER_RATIO,
    min_samples: int = STRAGGLER_MIN_SAMPLES,
    min_excess_s: float = STRAGGLER_MIN_EXCESS_S,
) -> dict[str, tuple[float, float]]:
    """Whole nodes that are stragglers: host -> (its median compute per step, the other hosts').

    A node whose every rank is slow (a throttled or shared machine) hides from ``find_stragglers``
    when it holds most of the ranks; here each host's ranks are pooled into one median and compared
    with the median of the other hosts' medians. Needs at least two hosts with measured ranks.
    """
    by_host: dict[str, list[float]] = {}
    for rank, values in samples.items():
        host = hosts.get(rank)
        if host and len(values) >= min_samples and all(is_duration(v) for v in values):
            by_host.setdefault(host, []).append(median(values))
    host_medians = {host: median(values) for host, values in by_host.items()}
    slow: dict[str, tuple[float, float]] = {}
    for host, own in sorted(host_medians.items()):
        others = [m for h, m in host_medians.items() if h != host]
        if not others:
            continue
        typical = median(others)
        if own - typical >= min_excess_s and own > ratio * typical:
            slow[host] = (own, typical)
    return slow


def startup_timed_out(launched_at: float, workers_started_at: float | None, now: float, any_heartbeat: bool,
                      config: TimeoutConfig) -> bool:
    """No first heartbeat within the start-up allowance (imports, rendezvous, compile).

    The allowance is the workers': it counts from the moment torchrun started them, so a
    launcher slow to start on a loaded machine does not eat the workers' time. torchrun itself
    gets the same allowance to start them.
    """
    started = workers_started_at if workers_started_at is not None else launched_at
    return not any_heartbeat and now - started > config.startup_timeout


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


# --------------------------------------------------------------------------------------------
# Exit classification and the restart decision
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RankExit:
    """One rank's exit as torchrun reported it (negative = killed by that signal)."""

    rank: int
    exit_code: int


@dataclass(frozen=True)
class RankReport:
    """What one rank's last heartbeat said about its end."""

    rank: int
    status: str
    time: float
    step: int = -1


@dataclass(frozen=True)
class ExitFacts:
    """Everything observed about an attempt that ended on its own (no hang verdict)."""

    returncode: int  # torchrun's (negative: killed by a signal)
    statuses: Sequence[str] = ()  # heartbeat status per rank (fresh heartbeats only)
    rank_exits: Sequence[RankExit] = ()  # from torchrun's failure summary, root cause first
    oom_kill_observed: bool = False  # the kernel's OOM counter moved during the attempt
    memory_was_tight: bool = False  # psutil saw available memory near zero just before
    stop_requested: bool = False
    module_missing: bool = False  # Python could not find the --worker module
    final_checkpoint_on_disk: bool = True  # the checkpoint the finishing worker named exists
    reports: Sequence[RankReport] = ()  # per-rank heartbeat ends, to find who failed first


@dataclass(frozen=True)
class Outcome:
    kind: OutcomeKind
    exit_code: int | None = None
    signal: int | None = None
    rank: int | None = None

    @property
    def is_failure(self) -> bool:
        return self.kind not in (OutcomeKind.FINISHED, OutcomeKind.STOPPED, OutcomeKind.FINISHED_WITHOUT_CHECKPOINT)


_TERMINATED_BY_PEER = 15  # SIGTERM: what torchrun sends the surviving ranks


def first_failure(rank_exits: Sequence[RankExit], reports: Sequence[RankReport]) -> RankExit | None:
    """The rank that failed FIRST, with its exit.

    torchrun's "root cause" is the first failure *it observed*; when ranks die within one of its
    polls it is a coin toss, and the survivors' errors ("Connection closed by peer") look like
    causes. So, in order: a rank killed by a signal from outside (not torchrun's SIGTERM) — it
    wrote nothing; else the rank whose heartbeat said ``failed`` earliest — it caught its own
    error before its peers lost their connection to it; else torchrun's root cause. Among the
    ``failed`` heartbeats, one whose rank exited with its own code comes before one torchrun
    SIGTERMed after it wrote: ranks that found the same error (a damaged checkpoint) at the same
    moment race to exit, and the loser's -15 is torchrun's, not the error's.
    """
    exits = {e.rank: e for e in rank_exits}
    for entry in rank_exits:
        if entry.exit_code < 0 and -entry.exit_code != _TERMINATED_BY_PEER:
            return entry
    failed = sorted((r for r in reports if r.status == RankStatus.FAILED), key=lambda r: (r.time, r.rank))
    exited_by_itself = [r for r in failed if r.rank in exits and -exits[r.rank].exit_code != _TERMINATED_BY_PEER]
    failed = exited_by_itself or failed
    if failed:
        rank = failed[0].rank
        fallback = rank_exits[0].exit_code if rank_exits else 1
        return exits.get(rank, RankExit(rank, fallback))
    return rank_exits[0] if rank_exits else None


def classify_exit(facts: ExitFacts) -> Outcome:
    """Name what happened to an attempt from its exit code, heartbeats and torchrun's summary."""
    statuses = list(facts.statuses)
    unsaved = RankStatus.FINISHED_WITHOUT_CHECKPOINT in statuses
    first = first_failure(facts.rank_exits, facts.reports) if facts.returncode != 0 else None
    code = first.exit_code if first is not None else facts.returncode
    rank = first.rank if first is not None else None
    if facts.stop_requested:
        return _classify_requested_stop(facts, statuses, code, rank)
    if facts.returncode == 0:
        if RankStatus.STOPPED in statuses:
            return Outcome(OutcomeKind.STOPPED, exit_code=0)
        return _finished_outcome(facts, unsaved)
    return _classify_failure(facts, statuses, code, rank)


def _finished_outcome(facts: ExitFacts, unsaved: bool) -> Outcome:
    """A run that reached its end: finished, or finished without its final checkpoint on disk."""
    if unsaved or not facts.final_checkpoint_on_disk:
        return Outcome(OutcomeKind.FINISHED_WITHOUT_CHECKPOINT, exit_code=facts.returncode)
    return Outcome(OutcomeKind.FINISHED, exit_code=0)


def stop_checkpoint_missing(exit_code: int | None, reached_step: int | None, newest_step: int | None) -> bool:
    """A plain stop whose own checkpoint is not on disk, though the worker never said exit 9.

    Why: a worker that fails its stop save can still die another way on the way out (an abort in
    interpreter teardown: torchrun exit 1, signal -6), and the ending then said "saved
    model_00004.pt" beside a run that had reached step 6. Whatever the code, a worker that exited
    non-zero after reaching a step newer than every checkpoint on disk did not save its stop."""
    if exit_code is None or exit_code == 0 or reached_step is None or reached_step < 0:
        return False  # a forced stop (no code: killed on purpose) or a clean exit
    return newest_step is None or newest_step < reached_step


def _classify_requested_stop(facts: ExitFacts, statuses: list[str], code: int, rank: int | None) -> Outcome:
    """We asked it to stop: however it went down, that is not a failure to restart from. A stop
    whose checkpoint could not be written keeps the worker's exit 9, so the ending says so."""
    unsaved = RankStatus.FINISHED_WITHOUT_CHECKPOINT in statuses
    if facts.returncode == 0 and statuses and all(s == RankStatus.FINISHED for s in statuses):
        return _finished_outcome(facts, unsaved)
    if unsaved or code == WorkerExit.FINAL_SAVE_FAILED:
        return Outcome(OutcomeKind.FINISHED_WITHOUT_CHECKPOINT, exit_code=code, rank=rank)
    return Outcome(OutcomeKind.STOPPED, exit_code=code, rank=rank)


def _classify_failure(facts: ExitFacts, statuses: list[str], code: int, rank: int | None) -> Outcome:
    """A non-zero exit nobody asked for: ``code`` and ``rank`` are the first failing rank's."""
    unsaved = RankStatus.FINISHED_WITHOUT_CHECKPOINT in statuses
    if unsaved or code == WorkerExit.FINAL_SAVE_FAILED:
        # The exit code says it even when a full disk swallowed the heartbeat's status.
        return Outcome(OutcomeKind.FINISHED_WITHOUT_CHECKPOINT, exit_code=code, rank=rank)
    if code == WorkerExit.STOP_SAVE_FAILED:
        # A stop nobody here asked for (SIGTERM to the workers from outside, or they lost sight of
        # this supervisor) whose checkpoint could not be written: the workers stopped; never
        # relaunched on its own, and the ending says the stop's checkpoint is missing.
        return Outcome(OutcomeKind.STOPPED, exit_code=code, rank=rank)
    if RankStatus.DIVERGED in statuses or code == WorkerExit.DIVERGED:
        return Outcome(OutcomeKind.DIVERGED, exit_code=code, rank=rank)
    if code in PERMANENT_WORKER_EXITS or facts.module_missing:
        return Outcome(OutcomeKind.PERMANENT, exit_code=code, rank=rank)
    if code == WorkerExit.CHECKPOINT_ERROR:
        return Outcome(OutcomeKind.BAD_CHECKPOINT, exit_code=code, rank=rank)
    if code < 0:
        signum = -code
        if signum == 9 and (facts.oom_kill_observed or facts.memory_was_tight):
            return Outcome(OutcomeKind.OOM, signal=signum, rank=rank)
        return Outcome(OutcomeKind.CRASHED, signal=signum, rank=rank)
    return Outcome(OutcomeKind.CRASHED, exit_code=code, rank=rank)


@dataclass(frozen=True)
class ExitEvidence:
    """The text the supervisor read after torchrun exited, beyond ``ExitFacts``: what explains it.

    Messages arrive as their summary lines already (``messages.first_line``).
    """
    returncode: int
    stop_requested: bool
    failing_summary: str | None = None  # the failing (or first-ended) rank's own message
    torchrun_error: str | None = None  # torchrun's error line, read on a non-zero exit only
    rendezvous_closed: bool = False  # non-zero exit, no heartbeat, and the rendezvous was closed
    agent_cause: str | None = None  # why the supervisor killed an unresponsive torchrun agent
    stop_summary: str | None = None  # the message of the first rank that stopped (who asked)


@dataclass(frozen=True)
class ExitDescription:
    """The cause of an attempt's end, and for an attempt that did not fail, how it ended.

    ``reason`` is None for a failure: ``messages.attempt_failure`` words that one from the
    outcome, step and cause (``messages`` imports this module, so the wording stays there).
    """
    cause: str | None
    reason: str | None


def describe_exit(outcome: Outcome, evidence: ExitEvidence) -> ExitDescription:
    """Name the cause of an attempt's end (an agent kill, a closed rendezvous, the rank's own
    message, torchrun's error line, in that precedence) and, when it did not fail, how it ended."""
    cause = evidence.failing_summary or evidence.torchrun_error
    if evidence.rendezvous_closed:
        cause = "torchrun found the rendezvous closed (RendezvousClosedError)"
    if evidence.agent_cause is not None:
        cause = evidence.agent_cause
    if outcome.is_failure:
        return ExitDescription(cause, None)
    code = evidence.returncode
    reason = "the workers saved and exited" if code == 0 else f"torchrun exit {code}"
    if evidence.agent_cause is not None:
        reason += f"; {evidence.agent_cause}: killed it"
    # Not asked by us: say who asked (another node's workers stop when their supervisor is gone,
    # and the stop reaches every rank).
    if code == 0 and not evidence.stop_requested and evidence.stop_summary:
        reason += f": {evidence.stop_summary}"
    return ExitDescription(cause, reason)


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


# --------------------------------------------------------------------------------------------
# Disk
# --------------------------------------------------------------------------------------------

MIN_FREE_DISK_FLOOR = 64 * 1024**2
MIN_FREE_DISK_MULTIPLE = 2


def default_min_free_disk(newest_checkpoint_bytes: int | None) -> int:
    """Room for two more checkpoints of the newest's size (one being written, one spare)."""
    return max(MIN_FREE_DISK_FLOOR, MIN_FREE_DISK_MULTIPLE * int(newest_checkpoint_bytes or 0))


def disk_level(free_bytes: int, threshold_bytes: int, newest_checkpoint_bytes: int | None) -> DiskLevel:
    if newest_checkpoint_bytes and free_bytes < newest_checkpoint_bytes:
        return DiskLevel.CRITICAL
    if free_bytes < threshold_bytes:
        return DiskLevel.LOW
    return DiskLevel.OK


_SIZE_UNITS = {"K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(text: str) -> int:
    """``"500M"``, ``"2G"``, ``"1.5GiB"``, ``"1048576"`` -> bytes. Raises ValueError."""
    cleaned = str(text).strip().upper().replace("IB", "").rstrip("B")
    multiplier = 1
    if cleaned and cleaned[-1] in _SIZE_UNITS:
        multiplier = _SIZE_UNITS[cleaned[-1]]
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

    level: DiskLevel = DiskLevel.OK
    history: list[DiskLevel] = field(default_factory=list)

    def update(self, new_level: DiskLevel) -> bool:
        """True when the level changed (worth an event)."""
        changed = new_level != self.level
        self.level = new_level
        if changed:
            self.history.append(new_level)
        return changed


# --- the run a directory holds: what a plain ``gpt2sup run`` reuses ------------------------------
@dataclass(frozen=True)
class RecordedRun:
    """The worker arguments and ``--worker`` module of the last attempt the worker accepted."""

    worker_args: tuple[str, ...]
    worker_module: str

    def to_dict(self) -> dict[str, object]:
        return {"worker_args": list(self.worker_args), "worker_module": self.worker_module}


# A supervisor that ended this way may have recorded arguments the worker never accepted.
_UNACCEPTED_ENDINGS = frozenset({SupervisorStateName.REFUSED, SupervisorStateName.GAVE_UP})


def arguments_accepted(kind: OutcomeKind, step: int | None) -> bool:
    """Whether an attempt's worker arguments became the run's: the worker trained (or resumed) with
    them, i.e. a heartbeat named a step, and it did not end on a permanent error (a refusal, a
    bad flag, missing data). A stop or crash during start-up proves nothing either way."""
    return kind != OutcomeKind.PERMANENT and step is not None and step >= 0


def run_to_reuse(accepted: object, run_config: Mapping[str, object], state: str | None,
                 default_module: str) -> RecordedRun | None:
    """What "no worker arguments" means on an existing run directory: its accepted run.

    Why not simply ``run_config``: every supervisor rewrites it with the arguments it was given,
    including one whose launch the worker refused (another run's data, a typo), and reusing those
    refuses again, forever (issue 19). So each attempt the worker accepts records ``accepted_run``
    and a refused one leaves it alone. A file without that record (written before it existed, or
    by a supervisor killed during its first attempt) falls back to its ``run_config``, unless that
    supervisor itself ended refused or gave up.
    """
    if isinstance(accepted, Mapping) and isinstance(accepted.get("worker_args"), list):
        module = accepted.get("worker_module")
        return RecordedRun(tuple(str(a) for a in accepted["worker_args"]),
                           module if isinstance(module, str) and module else default_module)
    if state in _UNACCEPTED_ENDINGS or not isinstance(run_config.get("worker_args"), list):
        return None
    module = run_config.get("worker_module")
    return RecordedRun(tuple(str(a) for a in run_config["worker_args"]),  # type: ignore[union-attr]
                       module if isinstance(module, str) and module else default_module)


def finished_checkpoint(previous_state: str | None, previous_newest: str | None,
                        recorded: str | None) -> str | None:
    """The final checkpoint of the run a directory holds, if it finished: the one recorded, else
    (a file written before that record existed) the newest one of a supervisor that ended finished."""
    if recorded is not None:
        return recorded
    return previous_newest if previous_state == SupervisorStateName.FINISHED else None


def already_finished(final_checkpoint: str | None, resume_from: str | None, same_run: bool) -> bool:
    """Whether a new ``gpt2sup run`` would only relaunch a run that is complete.

    Why: torchrun and the workers take seconds to minutes to start, load the final checkpoint and
    exit at once, with no word that nothing was left to do (issue 19). A run is complete when its
    final checkpoint (``finished_checkpoint``, kept across refused attempts) is the one to resume
    from (it still passes validation) and the worker arguments and module are the accepted ones;
    other arguments (a longer ``--max_steps``) go to the worker, which extends or refuses the run.
    """
    return same_run and resume_from is not None and final_checkpoint == resume_from
