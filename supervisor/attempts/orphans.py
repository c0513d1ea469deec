"""Processes in this run directory that this supervisor did not start: prove, stop, or refuse.

A supervisor killed with SIGKILL leaves torchrun and its ranks running. The next ``gpt2sup run``
must stop them before launching (two trainers in one directory overwrite each other's
checkpoints), but only processes it can PROVE belong to this run: a copied run directory
(``cp -a runA runB``) carries runA's ``supervisor.json`` naming runA's live processes, and
signalling those would cost another run an attempt. A recorded process is an orphan of this run
only if all of these hold:

- it is alive with the recorded pid *and* start time (pids get reused);
- its command line's ``--log_dir``, resolved against its own working directory, is this directory;
- the supervisor that launched it (recorded pid + start time, on this host) is dead.

Orphans are asked to save (SIGTERM); one that does not answer within the kill grace (no new
heartbeat, or stopped by SIGSTOP / a tracer) cannot save anyway, so the whole orphan tree is
SIGCONT+SIGKILLed rather than waited on for the full stop timeout.

Live trainers that are not provably ours (a bare ``torchrun ... --log_dir R``, the holder of the
worker's lock) are never signalled: ``gpt2sup run`` refuses to launch and names their pids.
"""
from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from shared.heartbeat import read_heartbeat
from shared.process_identity import (
    CREATE_TIME_TOLERANCE_S,
    ProcessId,
    same_process_alive,
)
from shared.run_dir import RunDir
from shared.supervisor_state import SupervisorState
from shared.vocabulary import NODE_RANK_ENV, SUPERVISOR_ENV, TERMINAL_STATES
from supervisor.attempts.process_tree import (
    command_line_log_dir,
    is_alive,
    is_stopped,
    kill_tree,
    processes_with_log_dir,
    send_signal,
    with_descendants,
)
from supervisor.run_lock import worker_lock_holder
from supervisor.stop_signals import mark_stop_request

POLL_S = 0.2


@dataclass
class OrphanSurvey:
    """What an earlier supervisor's ``supervisor.json`` left: the proven orphans and the rest."""

    previous: ProcessId | None
    orphans: list[psutil.Process] = field(default_factory=list)  # proven ours, with descendants
    workers: list[psutil.Process] = field(default_factory=list)  # the ranks among them
    left_alone: dict[int, str] = field(default_factory=dict)  # recorded, alive, not ours: pid -> why


def survey_orphans(previous: SupervisorState | None, run_dir: Path) -> OrphanSurvey:
    """Prove which processes recorded in ``previous`` belong to ``run_dir`` (see module doc)."""
    if previous is None or not previous.processes:
        return OrphanSurvey(None)
    boss = ProcessId(int(previous.pid), float(previous.pid_create_time))
    survey = OrphanSurvey(boss)
    recorded = [(p, same_process_alive(p.pid, p.create_time)) for p in previous.processes]
    live = [(record, proc) for record, proc in recorded if proc is not None]
    if not live:
        return survey
    why_not: str | None = None
    if previous.hostname != socket.gethostname():
        why_not = f"recorded on host {previous.hostname}"
    elif boss.alive() is not None:
        why_not = f"its supervisor {boss.pid} is alive"
    wanted = Path(run_dir).resolve()
    proven: list[psutil.Process] = []
    for record, proc in live:
        reason = why_not
        if reason is None:
            log_dir = command_line_log_dir(proc)
            if log_dir is None and started_by(proc, boss):
                pass  # a script's rank (no --log_dir of ours): its environment names that supervisor
            elif log_dir != wanted:
                reason = f"it trains {log_dir}" if log_dir is not None else "no --log_dir on its command line"
        if reason is not None:
            survey.left_alone[proc.pid] = reason
            continue
        proven.append(proc)
        if record.role != "torchrun":
            survey.workers.append(proc)
    survey.orphans = with_descendants(proven)
    return survey


def started_by(proc: psutil.Process, supervisor: ProcessId) -> bool:
    """``proc``'s environment names ``supervisor`` (``GPT2SUP_SUPERVISOR``, which every attempt's
    torchrun and ranks inherit unless ``--workers-outlive-supervisor``): the proof for a script's
    processes, whose command lines carry no ``--log_dir`` of ours. A pid and a start time both
    match, so a recycled pid proves nothing."""
    try:
        token = proc.environ().get(SUPERVISOR_ENV)
    except (psutil.Error, OSError):
        return False
    named = ProcessId.parse(token) if token else None
    return (named is not None and named.pid == supervisor.pid
            and abs(named.create_time - supervisor.create_time) <= CREATE_TIME_TOLERANCE_S)


def lost_supervisor(previous: SupervisorState | None) -> str | None:
    """One line when the previous supervisor of this directory died without a final state
    (SIGKILL, OOM kill, power loss), so that death is visible in events.jsonl; else None."""
    if previous is None or previous.state in TERMINAL_STATES or previous.hostname != socket.gethostname():
        return None
    if same_process_alive(previous.pid, previous.pid_create_time) is not None:
        return None
    return (f"supervisor {previous.pid} died while '{previous.state}' (attempt {previous.attempt}) without "
            "recording an ending: killed (SIGKILL, OOM) or the machine went down")


def orphan_stop_verdict(
    elapsed_s: float,
    *,
    kill_grace_s: float,
    stop_timeout_s: float,
    stop_forced: bool,
    silent: int,
    stopped: int,
) -> str | None:
    """Why to stop waiting and kill the orphan tree now, or None to keep waiting (pure).

    ``silent``: orphan ranks alive that have not beaten since they were asked to stop;
    ``stopped``: orphan ranks in a stopped state (they cannot act on any signal but SIGKILL).
    """
    if stop_forced:
        return "a forced stop request"
    if elapsed_s >= kill_grace_s and stopped:
        return f"{stopped} orphan rank(s) stopped (SIGSTOP or traced) for the kill grace ({kill_grace_s:g}s)"
    if elapsed_s >= kill_grace_s and silent:
        return f"{silent} orphan rank(s) did not answer the stop request within the kill grace ({kill_grace_s:g}s)"
    if elapsed_s >= stop_timeout_s:
        return f"the stop timeout ({stop_timeout_s:g}s)"
    return None


@dataclass
class OrphanStopReport:
    pids: list[int]
    forced: str | None  # why the tree was killed without waiting for the save, or None
    survivors: list[int]
    seconds: float


def _beat_contents(run_dir: Path) -> dict[int, tuple[object, ...]]:
    """Per writer pid, what its heartbeat says now: compared with what it said when asked to stop,
    never by its ``time`` against our clock (a rank whose clock is behind would look silent, and be
    killed unsaved; one ahead would look as if it answered)."""
    beats: dict[int, tuple[object, ...]] = {}
    for path in RunDir.at(run_dir).list_heartbeats():
        hb = read_heartbeat(path)
        if hb is not None:
            beats[hb.pid] = (hb.seq, hb.time, hb.step, hb.phase, hb.status, hb.message)
    return beats


def stop_orphans(
    survey: OrphanSurvey,
    run_dir: Path,
    *,
    kill_grace_s: float,
    stop_timeout_s: float,
    stop_forced: Callable[[], bool],
    wait: Callable[[float], None],
) -> OrphanStopReport:
    """Ask the orphan ranks to save (SIGTERM), then remove the whole orphan tree.

    Waits at most ``kill_grace_s`` for ranks that do not answer and ``stop_timeout_s`` for ranks
    that are saving; a forced stop request to us (``policy.stop_is_forced``) ends the wait at once. ``wait`` must return early
    when a stop request arrives.
    """
    started = time.monotonic()
    pids = sorted(p.pid for p in survey.orphans)
    before = _beat_contents(run_dir)
    mark_stop_request(RunDir.at(run_dir).stop_request, "orphans of a lost supervisor")  # a request, not a teardown
    send_signal(survey.workers, 15)  # SIGTERM: save at the next step boundary, exit
    forced: str | None = None
    while True:
        alive = [w for w in survey.workers if is_alive(w)]
        if not alive:
            break
        beats = _beat_contents(run_dir)
        stopped = sum(1 for w in alive if is_stopped(w))
        silent = sum(1 for w in alive if w.pid not in beats or beats[w.pid] == before.get(w.pid))
        forced = orphan_stop_verdict(
            time.monotonic() - started, kill_grace_s=kill_grace_s, stop_timeout_s=stop_timeout_s,
            stop_forced=stop_forced(), silent=silent, stopped=stopped,
        )
        if forced is not None:
            break
        wait(POLL_S)
    # Graceful: the ranks are gone and torchrun follows them; forced: SIGCONT + SIGKILL now.
    report = kill_tree(survey.orphans, grace_s=0.0 if forced else kill_grace_s)
    return OrphanStopReport(pids, forced, report.survivors, time.monotonic() - started)


@dataclass
class ForeignTrainers:
    """Live trainers of this run directory that are not ours: a reason to refuse to launch."""

    run_dir: Path
    processes: dict[int, str]  # pid -> role
    lock_holder: int | None  # pid holding worker.lock (0: unnamed holder), None: not held

    def describe(self) -> str:
        named = dict(self.processes)
        if self.lock_holder:
            named[self.lock_holder] = named.get(self.lock_holder, "worker") + ", holds worker.lock"
        parts = [f"pid {pid} ({role})" for pid, role in sorted(named.items())]
        if self.lock_holder == 0:
            parts.append("an unnamed process holding worker.lock")
        pids = " ".join(str(pid) for pid in sorted(named))
        hint = f"stop it first (`kill {pids}`) or choose another --log-dir" if pids else "stop it first"
        return f"another trainer is using {self.run_dir}: {', '.join(parts)}; {hint}"


def _role(proc: psutil.Process) -> str:
    try:
        argv = " ".join(proc.cmdline())
    except psutil.Error:
        return "process"
    return "torchrun" if "torch.distributed.run" in argv or "torchrun" in argv else "worker"


def another_nodes(proc: psutil.Process | int, node: int) -> bool:
    """True when ``proc`` was launched by the supervisor of another node of this multi-node run
    (``gpt2sup run`` exports its ``--node-rank`` to torchrun and the ranks as GPT2SUP_NODE_RANK).

    Several nodes share one run directory (shared storage; on one machine, all their processes
    are local): another node's torchrun and ranks train this directory too, but they are that
    node's supervisor's to watch and stop, never ours. Unreadable: not provably another node's.
    """
    try:
        process = proc if isinstance(proc, psutil.Process) else psutil.Process(proc)
        value = process.environ().get(NODE_RANK_ENV)
    except (psutil.Error, OSError):
        return False
    return value is not None and value != str(node)


def find_foreign_trainers(run_dir: Path, own: Iterable[int] = (), node: int | None = None) -> ForeignTrainers | None:
    """Trainers of ``run_dir`` outside our own tree (``own``), or None when there are none.

    ``node``: this supervisor's node rank in a multi-node run; other nodes' torchrun and ranks
    are not foreign, and ``worker.lock`` (held by node 0's writer) is only node 0's business.
    """
    procs = processes_with_log_dir(run_dir, exclude=own)
    holder = worker_lock_holder(RunDir.at(run_dir).worker_lock)
    if node is not None:
        procs = [p for p in procs if not another_nodes(p, node)]
        if holder is not None and (node != 0 or (holder and another_nodes(holder, node))):
            holder = None
    if not procs and holder is None:
        return None
    return ForeignTrainers(Path(run_dir), {p.pid: _role(p) for p in procs}, holder)
