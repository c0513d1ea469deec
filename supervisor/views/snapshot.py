"""One read-only look at a run directory: everything ``gpt2sup status`` and the live panel show.

Why a separate module: ``status``, ``stop`` and the run loop's panel all need the same answers
("is the supervisor alive?", "which rank went quiet?", "how far along are we?") and must agree on
them. Everything here comes from the run directory's files (docs/cli.md, "The run directory") and from psutil; it never imports torch
and never loads a checkpoint (the supervisor records the newest checkpoint's validation result in
``supervisor.json``; we only repeat it). It must stay fast enough to call every monitor interval:
checkpoints are only ``stat``-ed and ``metrics.jsonl`` / ``events.jsonl`` are read from the end.
"""
from __future__ import annotations

import os
import socket
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from shared.atomic_io import read_file_tail, read_json, read_jsonl
from shared.heartbeat import Heartbeat, read_heartbeat
from shared.process_identity import CREATE_TIME_TOLERANCE_S, same_process_alive
from shared.run_dir import QUARANTINE_SUFFIX, RunDir
from shared.supervisor_state import SupervisorState, load_supervisor_state
from shared.vocabulary import (
    TERMINAL_STATES,
    EventKind,
    Phase,
    RankStatus,
    StrEnum,
    SupervisorStateName,
)
from supervisor import policy
from supervisor.views.run_history import Goodput, finite_number, measure_goodput

# How much of a JSONL file's end to read. A metrics line is ~150 bytes, so this holds hundreds
# of steps while keeping the read constant-time however long the run has been going.
TAIL_BYTES = 64 * 1024
# Steps the ETA's rate is averaged over: recent enough to follow a changed speed, many enough
# that one slow step (an eval, a checkpoint save, the first compiled step) does not swing it.
ETA_WINDOW_STEPS = 100
# A pause between two consecutive steps' records longer than this many median step times (and
# than RESTART_GAP_MIN_S) is a restart, not training: the rate is measured after it.
RESTART_GAP_STEPS = 10
RESTART_GAP_MIN_S = 60.0
RECENT_EVENTS = 5
# Events are rare (a few per attempt), so this much of the journal's end holds hundreds of them:
# enough to find the newest replay check behind the latest restarts.
EVENTS_TAIL_BYTES = 64 * 1024
LOG_TXT_TAIL_BYTES = 16 * 1024


class RunVerdict(StrEnum):
    """The one word ``status`` leads with: what the run is doing, or how it ended."""

    RUNNING = "running"
    FINISHED = "finished"
    FINISHED_WITHOUT_CHECKPOINT = "finished without checkpoint"
    STOPPED = "stopped"
    GAVE_UP = "gave up"
    REFUSED = "refused"
    CRASHED = "crashed"
    DEAD = "dead"  # the supervisor is gone and the run had not ended
    BARE_WORKER = "bare worker"  # workers without a supervisor (a plain torchrun)
    NO_RUN = "no run"


# While one of these holds, something is training and an ETA means something.
ACTIVE_VERDICTS = frozenset({RunVerdict.RUNNING, RunVerdict.BARE_WORKER})
_TERMINAL_VERDICT = {
    SupervisorStateName.FINISHED: RunVerdict.FINISHED,
    SupervisorStateName.FINISHED_WITHOUT_CHECKPOINT: RunVerdict.FINISHED_WITHOUT_CHECKPOINT,
    SupervisorStateName.STOPPED: RunVerdict.STOPPED,
    SupervisorStateName.GAVE_UP: RunVerdict.GAVE_UP,
    SupervisorStateName.REFUSED: RunVerdict.REFUSED,
    SupervisorStateName.ERROR: RunVerdict.CRASHED,
}
# Terminal states in which a failure was not overcome.
_FAILED_STATES = frozenset({SupervisorStateName.GAVE_UP, SupervisorStateName.REFUSED, SupervisorStateName.ERROR})


@dataclass
class SupervisorInfo:
    """What ``supervisor.json`` says, plus whether its process still lives."""

    pid: int
    alive: bool | None  # None: recorded on another host, we cannot tell
    state: str
    hostname: str
    attempt: int
    restarts_used: int
    max_restarts: int
    last_failure_kind: str | None
    last_failure_reason: str | None
    updated_at: float
    exit_code: int | None
    # True once a later attempt trained past the last failure (or the run finished after it).
    last_failure_recovered: bool = False
    phase_timeouts: dict[str, float] = field(default_factory=dict)  # the hang timeout per phase
    # Multi-node: "node R of N, c10d at HOST:PORT, id ID" from its run_config, else None.
    rendezvous: str | None = None
    # A script without heartbeats (``-- SCRIPT.py``): how its hangs are found, else None.
    script_hang_detection: str | None = None


@dataclass
class RankInfo:
    """One worker rank as its heartbeat describes it."""

    rank: int
    pid: int
    pid_alive: bool
    phase: str
    status: str
    step: int
    age_s: float
    loss: float | None
    tokens_per_s: float | None
    world_size: int
    max_steps: int | None
    last_checkpoint: str | None
    message: str | None
    phase_timeout_s: float | None = None  # the supervisor's hang timeout for this rank's phase
    heartbeat_time: float | None = None  # when it was written (the file's mtime: this machine's clock)
    hostname: str | None = None
    compute_median_s: float | None = None  # median own compute per step over its recent steps
    straggler: StragglerInfo | None = None  # set when it computes consistently slower than its peers
    node: int | None = None  # multi-node, one shared directory: the node whose supervisor launched it


@dataclass
class StragglerInfo:
    """Why a rank is marked a straggler (``policy.find_stragglers``); detection only."""

    median_s: float
    others_median_s: float
    ratio: float


@dataclass
class ProgressInfo:
    step: int | None  # index of the last completed step (the worker counts from 0; -1: none yet)
    max_steps: int | None
    fraction: float | None  # completed steps / max_steps, 0..1
    loss: float | None
    tokens_per_s: float | None
    step_time_s: float | None  # median of recent metrics.jsonl "dt" (compute only)
    eta_s: float | None  # only while something is running
    phase: str | None
    quietest_rank: int | None  # running rank with the oldest heartbeat
    quietest_age_s: float | None
    lagging_rank: int | None  # running rank with the lowest step, when ranks disagree
    seconds_per_step: float | None = None  # wall-clock, averaged over recent steps: the ETA's rate
    val_loss: float | None = None  # newest "{step} val {loss}" line of log.txt
    val_step: int | None = None
    hellaswag: float | None = None  # newest "{step} hella {acc}" line of log.txt (acc_norm)
    hellaswag_step: int | None = None

    @property
    def completed_steps(self) -> int | None:
        """Steps done so far (``step + 1``): what "60/60" counts. None before the first step."""
        if self.step is None or self.step < 0:
            return None
        return self.step + 1


@dataclass
class ReplayCheckInfo:
    """The worker's newest comparison of re-done steps after a resume (a ``replay_check`` event)."""

    time: float | None
    resumed_step: int | None
    steps_compared: int | None
    equal: bool
    first_mismatch: dict[str, Any] | None
    message: str | None


@dataclass
class CheckpointInfo:
    count: int = 0
    total_bytes: int = 0
    newest_name: str | None = None
    newest_step: int | None = None
    newest_bytes: int | None = None
    quarantined: int = 0
    latest_link: str | None = None  # file latest_checkpoint.pt resolves to
    newest_valid: bool | None = None  # as recorded by the supervisor; None = not validated
    newest_reason: str | None = None


@dataclass
class DiskInfo:
    total_bytes: int
    used_bytes: int
    free_bytes: int  # available to an unprivileged writer (statvfs f_bavail), as df's "Avail"

    @property
    def used_fraction(self) -> float:
        """As ``df`` computes Use%: used / (used + available). The blocks reserved for root count
        in neither, so used / total would understate how full the disk is for the worker."""
        usable = self.used_bytes + self.free_bytes
        return self.used_bytes / usable if usable else 0.0


@dataclass
class RemoteInfo:
    """The --checkpoint-uri store as the supervisor's uploader last saw it (``remote_sync.json``)."""

    uri: str  # never a credential (the URI holds none)
    newest_committed_step: int | None
    newest_local_step: int | None
    upload_lag_steps: int | None  # newest local step - newest committed remote step
    uploading: str | None
    last_error: str | None
    last_error_at: float | None
    skipped: list[int] | None
    updated_at: float | None


@dataclass
class RunSnapshot:
    log_dir: str
    time: float
    exists: bool
    has_run: bool
    verdict: str
    supervisor: SupervisorInfo | None = None
    ranks: list[RankInfo] = field(default_factory=list)
    progress: ProgressInfo | None = None
    checkpoints: CheckpointInfo = field(default_factory=CheckpointInfo)
    disk: DiskInfo | None = None
    recent_events: list[dict[str, Any]] = field(default_factory=list)
    replay_check: ReplayCheckInfo | None = None
    goodput: Goodput | None = None  # only when asked for: it reads all of metrics.jsonl
    # Multi-node: the other nodes' supervisors (``supervisor.nodeR.json``) in this directory;
    # ``supervisor`` is node 0's (``supervisor.json``), or the lowest node's when node 0's is absent.
    nodes: dict[int, SupervisorInfo] = field(default_factory=dict)
    # Why the run's supervisor.json exists but cannot be read ("not JSON"), else None.
    supervisor_unreadable: str | None = None
    remote: RemoteInfo | None = None  # the run's --checkpoint-uri store, when it has one

    def verdict_text(self) -> str:
        """The verdict, with the supervisor's exit code once it has ended: ``stopped (exit 4)``."""
        sup = self.supervisor
        if sup is not None and sup.exit_code is not None and sup.alive is not True:
            return f"{self.verdict} (exit {sup.exit_code})"
        return self.verdict

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.disk is not None:
            data["disk"]["used_fraction"] = round(self.disk.used_fraction, 4)
        if self.progress is not None:
            data["progress"]["completed_steps"] = self.progress.completed_steps
        return data


# --- process identity ---------------------------------------------------------------------------
def process_matches(pid: int, create_time: float) -> bool:
    """True iff ``pid`` is a live (non-zombie) process that started at ``create_time``."""
    return same_process_alive(pid, create_time) is not None


def heartbeat_pid_alive(pid: int, heartbeat_time: float) -> bool:
    """True iff ``pid`` lives and was already running when it wrote the heartbeat.

    Heartbeats carry no start time, but a process created after the heartbeat was written cannot
    be its writer: that rules out pid reuse for every practical case.
    """
    proc = _live_process(pid)
    if proc is None:
        return False
    try:
        return proc.create_time() <= float(heartbeat_time) + CREATE_TIME_TOLERANCE_S
    except (psutil.Error, TypeError, ValueError):
        return False


def _live_process(pid: Any) -> psutil.Process | None:
    if not isinstance(pid, int) or pid <= 0:
        return None
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None  # exited, only waiting to be reaped
        return proc
    except psutil.Error:
        return None


# --- file readers --------------------------------------------------------------------------------






def _phase_timeouts(raw: dict[str, Any]) -> dict[str, float]:
    timeouts = raw.get("phase_timeouts")
    if not isinstance(timeouts, dict):
        return {}
    return {str(phase): float(v) for phase, v in timeouts.items() if finite_number(v) is not None}


def read_log_txt_newest(path: Path, kinds: tuple[str, ...] = ("val", "hella")) -> dict[str, tuple[int, float]]:
    """The newest ``{step} {kind} {value}`` line of ``log.txt`` per kind (read from the end)."""
    chunk, cut = read_file_tail(path, LOG_TXT_TAIL_BYTES)
    lines = chunk.decode("utf-8", "replace").split("\n")
    if cut:
        lines = lines[1:]
    found: dict[str, tuple[int, float]] = {}
    for line in reversed(lines):
        parts = line.split()
        if len(parts) == 3 and parts[1] in kinds and parts[1] not in found and parts[0].isdigit():
            try:
                found[parts[1]] = (int(parts[0]), float(parts[2]))
            except ValueError:
                continue
            if len(found) == len(kinds):
                break
    return found


def _replay_check(events: list[dict[str, Any]]) -> ReplayCheckInfo | None:
    for event in reversed(events):
        if event.get("event") != EventKind.REPLAY_CHECK:
            continue
        mismatch = event.get("first_mismatch")
        return ReplayCheckInfo(
            time=finite_number(event.get("time")),
            resumed_step=event.get("resumed_step") if isinstance(event.get("resumed_step"), int) else None,
            steps_compared=event.get("steps_compared") if isinstance(event.get("steps_compared"), int) else None,
            equal=event.get("equal") is True,
            first_mismatch=mismatch if isinstance(mismatch, dict) else None,
            message=event.get("message") if isinstance(event.get("message"), str) else None,
        )
    return None


# --- the pieces of a snapshot ---------------------------------------------------------------------
def _failure_recovered(state: SupervisorState, ranks: list[RankInfo]) -> bool:
    """Did the run get past its last failure? A later attempt must have trained after it (a
    heartbeat newer than the failure at a training step), or the run finished since."""
    failure = state.last_failure
    if failure is None or state.state in _FAILED_STATES:
        return False
    if state.state in (SupervisorStateName.FINISHED, SupervisorStateName.FINISHED_WITHOUT_CHECKPOINT):
        return True
    if state.attempt <= failure.attempt:
        return False
    failed_at = finite_number(failure.time) or 0.0
    return any(
        r.step >= 0 and r.phase != Phase.STARTUP and (r.heartbeat_time or 0.0) > failed_at
        and (failure.step is None or r.step > failure.step)
        for r in ranks
    )


def _supervisor_info(state: SupervisorState, raw: dict[str, Any], ranks: list[RankInfo]) -> SupervisorInfo:
    same_host = not state.hostname or state.hostname == socket.gethostname()
    alive = process_matches(state.pid, state.pid_create_time) if same_host else None
    failure = state.last_failure
    return SupervisorInfo(
        pid=state.pid,
        alive=alive,
        state=state.state,
        hostname=state.hostname,
        attempt=state.attempt,
        restarts_used=state.restarts_used,
        max_restarts=state.max_restarts,
        last_failure_kind=failure.kind if failure else None,
        last_failure_reason=failure.reason if failure else None,
        updated_at=state.updated_at,
        exit_code=state.exit_code,
        last_failure_recovered=_failure_recovered(state, ranks),
        phase_timeouts=_phase_timeouts(raw),
        rendezvous=_rendezvous_text(state.run_config),
        script_hang_detection=_script_hang_detection(state.run_config, bool(ranks)),
    )


def _script_hang_detection(run_config: Any, has_heartbeats: bool) -> str | None:
    """A user's script (``-- SCRIPT.py``): whether and how its hangs are detected. One that writes
    heartbeats (``shared.client``) is judged by them, like gpt2sup's worker: None."""
    if not isinstance(run_config, dict) or has_heartbeats:
        return None
    worker = run_config.get("worker_module")
    if not isinstance(worker, str) or not worker.endswith(".py"):
        return None
    timeouts = run_config.get("timeouts")
    hang = timeouts.get("hang_timeout") if isinstance(timeouts, dict) else None
    if not isinstance(hang, (int, float)):
        return "OFF (a script without heartbeats; give --hang-timeout to judge it by its silence)"
    return f"by silence: no output and no file written for {hang:g}s"


def _rendezvous_text(run_config: Any) -> str | None:
    multi = run_config.get("multi_node") if isinstance(run_config, dict) else None
    if not isinstance(multi, dict):
        return None
    node = multi.get("node_rank")
    return (f"node {node if node is not None else '?'} of {multi.get('nnodes')}, {multi.get('rdzv_backend', 'c10d')} "
            f"at {multi.get('rdzv_endpoint')}, id {multi.get('rdzv_id')}")


def heartbeat_written_at(hb: Heartbeat, path: Path) -> float:
    """When the heartbeat was written, on this machine's clock: the file's modification time (the
    kernel's record of the write), not the ``time`` the rank wrote into it. A rank whose clock is an
    hour ahead would otherwise read "heartbeat 0.0s ago" however long it has been stopped, and one
    an hour behind would look dead. Falls back to the rank's ``time`` where the file cannot be read."""
    try:
        return path.stat().st_mtime
    except OSError:
        return hb.time


def _rank_info(hb: Heartbeat, now: float, written_at: float | None = None) -> RankInfo:
    when = hb.time if written_at is None else written_at
    return RankInfo(
        rank=hb.rank,
        pid=hb.pid,
        pid_alive=heartbeat_pid_alive(hb.pid, when),
        phase=hb.phase,
        status=hb.status,
        step=hb.step,
        age_s=max(0.0, now - when),
        loss=finite_number(hb.loss),
        tokens_per_s=finite_number(hb.tokens_per_s),
        world_size=hb.world_size,
        max_steps=hb.max_steps,
        last_checkpoint=hb.last_checkpoint,
        message=hb.message,
        heartbeat_time=finite_number(when),
        hostname=hb.hostname,
        compute_median_s=_compute_median(hb.compute_s),
    )


def _mark_nodes(ranks: list[RankInfo], states: dict[int, SupervisorState | None]) -> None:
    """Which node launched each rank: its pid among the processes a node's supervisor recorded."""
    for node, state in states.items():
        pids = {p.pid for p in state.processes} if state is not None else set()
        for rank in ranks:
            if rank.pid in pids:
                rank.node = node


def _compute_median(samples: list[float] | None) -> float | None:
    """Durations already validated by ``shared.heartbeat``."""
    return policy.median(samples) if samples else None


def _mark_stragglers(ranks: list[RankInfo], samples: dict[int, list[float]]) -> None:
    """The same verdict the supervisor's watch announces as a ``straggler`` event."""
    by_rank = {r.rank: r for r in ranks}
    for found in policy.find_stragglers(samples):
        by_rank[found.rank].straggler = StragglerInfo(found.median_s, found.others_median_s, found.ratio)


def _checkpoint_info(run: RunDir, state: SupervisorState | None) -> CheckpointInfo:
    info = CheckpointInfo()
    checkpoints = run.list_checkpoints()
    info.count = len(checkpoints)
    info.total_bytes = sum(c.size for c in checkpoints)
    if checkpoints:
        newest = checkpoints[-1]
        info.newest_step, info.newest_bytes, info.newest_name = newest.step, newest.size, newest.path.name
    try:
        info.quarantined = sum(1 for e in os.scandir(run.root) if e.name.endswith(QUARANTINE_SUFFIX))
    except OSError:
        info.quarantined = 0  # an unreadable directory shows no quarantined files, not an error
    latest = run.resolve_latest_link()
    info.latest_link = latest.name if latest is not None else None
    # Repeat the supervisor's verdict only when it is about the file that is newest now.
    recorded = Path(state.newest_checkpoint).name if state is not None and state.newest_checkpoint else None
    if recorded is not None and recorded == info.newest_name:
        info.newest_valid = state.newest_checkpoint_valid
        info.newest_reason = state.newest_checkpoint_reason
    return info


def seconds_per_step(metrics_tail: list[dict[str, Any]]) -> float | None:
    """Wall-clock seconds per step, averaged over the recent steps of the current attempt.

    Why not the last step's ``dt``: one step's time swings with an eval, a save or a busy
    machine, and an ETA built on it jumps by minutes from one refresh to the next. Why wall-clock
    and not the mean ``dt``: evals, samples and saves take real time too, and the ETA must count
    them. A pause much longer than a step between consecutive records is a restart, and the
    average starts after it. Falls back to the median ``dt`` when records carry no time.
    """
    records = [
        (m["step"], float(m["time"]))
        for m in metrics_tail[-ETA_WINDOW_STEPS:]
        if isinstance(m.get("step"), int) and finite_number(m.get("time")) is not None
    ]
    dts = [d for d in (finite_number(m.get("dt")) for m in metrics_tail[-ETA_WINDOW_STEPS:]) if d and d > 0]
    typical = statistics.median(dts) if dts else None
    gap = max(RESTART_GAP_MIN_S, RESTART_GAP_STEPS * (typical or 0.0))
    start = 0
    for i in range(1, len(records)):
        (prev_step, prev_time), (step, t) = records[i - 1], records[i]
        if step <= prev_step or t - prev_time > gap:
            start = i  # a resume rewound the steps, or a restart paused the clock
    segment = records[start:]
    if len(segment) >= 2 and segment[-1][0] > segment[0][0] and segment[-1][1] > segment[0][1]:
        return (segment[-1][1] - segment[0][1]) / (segment[-1][0] - segment[0][0])
    return typical


def _progress_info(
    ranks: list[RankInfo], metrics_tail: list[dict[str, Any]], running: bool, log_txt: Path,
) -> ProgressInfo | None:
    if not ranks and not metrics_tail:
        return None
    lead = next((r for r in ranks if r.rank == 0), ranks[0] if ranks else None)
    last_metric = metrics_tail[-1] if metrics_tail else {}

    step = lead.step if lead is not None else None
    metric_step = last_metric.get("step")
    if isinstance(metric_step, int) and (step is None or metric_step > step):
        step = metric_step  # heartbeats of a finished run may lag the metrics by nothing, or be gone
    max_steps = next((r.max_steps for r in ranks if isinstance(r.max_steps, int)), None)
    loss = lead.loss if lead is not None and lead.loss is not None else finite_number(last_metric.get("loss"))
    tok_s = (
        lead.tokens_per_s
        if lead is not None and lead.tokens_per_s is not None
        else finite_number(last_metric.get("tokens_per_s"))
    )

    dts = [d for d in (finite_number(m.get("dt")) for m in metrics_tail[-ETA_WINDOW_STEPS:]) if d and d > 0]
    step_time = statistics.median(dts) if dts else None
    rate = seconds_per_step(metrics_tail)

    fraction = eta = None
    if step is not None and max_steps:
        # build-nanogpt runs steps 0..max_steps-1; ``step`` is the last completed one.
        done = min(max(step + 1, 0), max_steps)
        fraction = done / max_steps
        if running and rate is not None:
            eta = (max_steps - done) * rate
    newest = read_log_txt_newest(log_txt)
    val_step, val_loss = newest.get("val", (None, None))
    hella_step, hella = newest.get("hella", (None, None))

    active = [r for r in ranks if r.status == RankStatus.RUNNING]
    quietest = max(active, key=lambda r: r.age_s) if active else None
    lagging = None
    if active and len({r.step for r in active}) > 1:
        lagging = min(active, key=lambda r: r.step).rank
    return ProgressInfo(
        step=step,
        max_steps=max_steps,
        fraction=fraction,
        loss=loss,
        tokens_per_s=tok_s,
        step_time_s=step_time,
        eta_s=eta,
        phase=lead.phase if lead is not None else None,
        quietest_rank=quietest.rank if quietest else None,
        quietest_age_s=quietest.age_s if quietest else None,
        lagging_rank=lagging,
        seconds_per_step=rate,
        val_loss=val_loss,
        val_step=val_step,
        hellaswag=hella,
        hellaswag_step=hella_step,
    )


def _verdict(supervisor: SupervisorInfo | None, ranks: list[RankInfo], has_run: bool) -> RunVerdict:
    if not has_run:
        return RunVerdict.NO_RUN
    live_worker = any(r.pid_alive and r.status == RankStatus.RUNNING for r in ranks)
    if supervisor is not None:
        if supervisor.state in TERMINAL_STATES:
            if supervisor.alive is False and live_worker:
                return RunVerdict.BARE_WORKER  # a torchrun started by hand after the supervised run ended
            return _TERMINAL_VERDICT.get(supervisor.state, supervisor.state)
        return RunVerdict.DEAD if supervisor.alive is False else RunVerdict.RUNNING
    # No supervisor: a bare `torchrun -m worker.train_gpt2`, or its leftovers.
    if live_worker:
        return RunVerdict.BARE_WORKER
    statuses = {r.status for r in ranks}
    if statuses & {RankStatus.DIVERGED, RankStatus.FAILED} or RankStatus.RUNNING in statuses:
        return RunVerdict.CRASHED  # failed itself, or died without saying so
    if statuses == {RankStatus.FINISHED}:
        return RunVerdict.FINISHED
    if RankStatus.FINISHED_WITHOUT_CHECKPOINT in statuses:
        return RunVerdict.FINISHED_WITHOUT_CHECKPOINT
    return RunVerdict.STOPPED  # stopped on request, or only checkpoints/metrics left: resumable


def collect_snapshot(run_dir: Path | str, now: float | None = None, *, with_goodput: bool = False) -> RunSnapshot:
    """Read ``run_dir`` and describe the run in it. Never raises for missing or odd files.

    ``with_goodput`` adds the run's goodput, which reads the whole metrics.jsonl and events.jsonl:
    right for ``gpt2sup status``, too much for the supervisor's refresh every monitor interval.
    """
    now = time.time() if now is None else now
    run = RunDir.at(run_dir)
    if not run.root.is_dir():
        return RunSnapshot(log_dir=str(run.root), time=now, exists=False, has_run=False, verdict=RunVerdict.NO_RUN)

    # The typed state, plus the raw dict for fields newer than the type; an unreadable file is named.
    loaded = {node: load_supervisor_state(path) for node, path in run.list_node_states().items()}
    unreadable = {node: f.unreadable for node, f in loaded.items() if f.unreadable is not None}
    states = {node: (f.state, f.raw) for node, f in loaded.items() if f.state is not None}
    primary = min(states, default=0)  # node 0; a node-local directory of node R holds only R's
    state, raw_state = states.pop(primary, (None, {}))
    ranks = []
    compute_samples: dict[int, list[float]] = {}
    for path in run.list_heartbeats():
        hb = read_heartbeat(path)
        if hb is not None:
            ranks.append(_rank_info(hb, now, heartbeat_written_at(hb, path)))
            if hb.compute_s is not None:
                compute_samples[hb.rank] = hb.compute_s
    ranks.sort(key=lambda r: r.rank)
    _mark_stragglers(ranks, compute_samples)
    supervisor = _supervisor_info(state, raw_state, ranks) if state is not None else None
    nodes = {node: _supervisor_info(st, raw, ranks) for node, (st, raw) in states.items() if st is not None}
    if nodes:
        _mark_nodes(ranks, {primary: state, **{node: st for node, (st, _) in states.items()}})
    if supervisor is not None:
        for rank in ranks:
            rank.phase_timeout_s = supervisor.phase_timeouts.get(rank.phase)
    metrics_tail = read_jsonl(run.metrics, ETA_WINDOW_STEPS, TAIL_BYTES)
    checkpoints = _checkpoint_info(run, state)

    has_run = bool(
        ranks
        or state is not None
        or run.supervisor_state.exists()
        or bool(nodes)
        or checkpoints.count
        or checkpoints.quarantined
        or metrics_tail
    )
    verdict = _verdict(supervisor, ranks, has_run)
    progress = _progress_info(ranks, metrics_tail, verdict in ACTIVE_VERDICTS, run.log_txt)
    disk = _disk_info(run.root)
    events = read_jsonl(run.events, 10_000, tail_bytes=EVENTS_TAIL_BYTES)
    return RunSnapshot(
        log_dir=str(run.root),
        time=now,
        exists=True,
        has_run=has_run,
        verdict=verdict,
        supervisor=supervisor,
        ranks=ranks,
        progress=progress,
        checkpoints=checkpoints,
        disk=disk,
        recent_events=events[-RECENT_EVENTS:],
        replay_check=_replay_check(events),
        nodes=nodes,
        supervisor_unreadable=unreadable.get(primary) if supervisor is None else None,
        goodput=measure_goodput(run.root, live_until=now if verdict in ACTIVE_VERDICTS else None)
        if with_goodput and has_run else None,
        remote=remote_info(run.root),
    )


def remote_info(root: Path) -> RemoteInfo | None:
    """The uploader's record in the run directory (``supervisor.checkpoints.remote_sync``), or None."""
    data = read_json(RunDir.at(root).remote_sync)
    if not isinstance(data, dict) or not isinstance(data.get("uri"), str):
        return None

    def number(key: str) -> Any:
        value = data.get(key)
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    skipped = data.get("skipped")
    return RemoteInfo(
        uri=data["uri"], newest_committed_step=number("newest_committed_step"),
        newest_local_step=number("newest_local_step"), upload_lag_steps=number("upload_lag_steps"),
        uploading=data.get("uploading") if isinstance(data.get("uploading"), str) else None,
        last_error=data.get("last_error") if isinstance(data.get("last_error"), str) else None,
        last_error_at=number("last_error_at"),
        skipped=[s for s in skipped if isinstance(s, int)] if isinstance(skipped, list) else None,
        updated_at=number("updated_at"),
    )


def _disk_info(path: Path) -> DiskInfo | None:
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    # What df reports: Size, Used (all blocks not free) and Avail (free to non-root writers).
    return DiskInfo(
        total_bytes=st.f_blocks * st.f_frsize,
        used_bytes=(st.f_blocks - st.f_bfree) * st.f_frsize,
        free_bytes=st.f_bavail * st.f_frsize,
    )
