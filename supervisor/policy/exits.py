"""What an attempt's exit was: the first failed rank, the outcome of the exit, and its
description for the journal.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from shared.exit_codes import PERMANENT_WORKER_EXITS, WorkerExit
from shared.vocabulary import (
    OutcomeKind,
    RankStatus,
)

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
    # gpt2sup's worker: its exit codes mean what shared.exit_codes says (3 diverged, 4 bad
    # checkpoint, 9 stop unsaved, ...). A user's script (``-- SCRIPT.py``): they mean nothing but
    # argparse's 2 (a usage error: restarting repeats it); any other non-zero exit is a crash.
    worker_exit_codes: bool = True


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
    if unsaved or (facts.worker_exit_codes and code == WorkerExit.FINAL_SAVE_FAILED):
        return Outcome(OutcomeKind.FINISHED_WITHOUT_CHECKPOINT, exit_code=code, rank=rank)
    return Outcome(OutcomeKind.STOPPED, exit_code=code, rank=rank)


def _classify_failure(facts: ExitFacts, statuses: list[str], code: int, rank: int | None) -> Outcome:
    """A non-zero exit nobody asked for: ``code`` and ``rank`` are the first failing rank's."""
    if not facts.worker_exit_codes:
        return _classify_script_failure(facts, code, rank)
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


def _classify_script_failure(facts: ExitFacts, code: int, rank: int | None) -> Outcome:
    """A user's script failed: exit 2 is argparse's usage error (permanent), a SIGKILL under
    memory pressure an OOM kill, anything else a crash to restart from its newest checkpoint."""
    if code == WorkerExit.USAGE:
        return Outcome(OutcomeKind.PERMANENT, exit_code=code, rank=rank)
    if code < 0:
        signum = -code
        kind = OutcomeKind.OOM if signum == 9 and (facts.oom_kill_observed or facts.memory_was_tight) else OutcomeKind.CRASHED
        return Outcome(kind, signal=signum, rank=rank)
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
