"""Hangs and start-up: which rank is stuck, whose heartbeat belongs to this attempt, whether
the agent or the workers stopped answering.
"""
from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from shared.vocabulary import (
    Phase,
    RankStatus,
)
from supervisor.policy.timeouts import TimeoutConfig, timeout_for_phase


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
            f"rank {self.rank} silent for {self.silent_s:.1f}s in phase '{self.phase}' {where} "
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


def startup_timed_out(launched_at: float, workers_started_at: float | None, now: float, any_heartbeat: bool,
                      config: TimeoutConfig) -> bool:
    """No first heartbeat within the start-up allowance (imports, rendezvous, compile).

    The allowance is the workers': it counts from the moment torchrun started them, so a
    launcher slow to start on a loaded machine does not eat the workers' time. torchrun itself
    gets the same allowance to start them.
    """
    started = workers_started_at if workers_started_at is not None else launched_at
    return not any_heartbeat and now - started > config.startup_timeout




@dataclass(frozen=True)
class SilenceVerdict:
    """A script that writes no heartbeats said nothing, on its output or in its files, too long."""

    silent_s: float
    timeout_s: float

    def describe(self) -> str:
        return (f"no output and no file written for {self.silent_s:.1f}s (--hang-timeout {self.timeout_s:.0f}s; "
                "a script without heartbeats is judged by its silence)")


def silent_too_long(last_change: float, now: float, hang_timeout: float | None) -> SilenceVerdict | None:
    """A heartbeat-less script is hung once neither its ranks' output nor its run directory's files
    changed for ``hang_timeout`` seconds (times on the supervisor's monotonic clock). No timeout
    given: never (hang detection is off; a long save or eval would otherwise look like a hang)."""
    if hang_timeout is None:
        return None
    silent = now - last_change
    return SilenceVerdict(silent, hang_timeout) if silent > hang_timeout else None
