"""``gpt2sup stop``: ask a run to save at its next step boundary and exit.

A stop is a *request*, never a kill: the supervisor forwards it to the worker, which finishes the
step, writes a checkpoint and exits 0, so ``gpt2sup run`` can continue later from that step.
Plain requests are idempotent (two operators, or a script that retries, ask once); only
``--force`` (SIGQUIT to the supervisor, ``policy.stop_is_forced``) stops without the save.
We only signal processes whose identity we can confirm (pid *and* start time), because a pid
read from a stale file may by now belong to something else entirely.
"""
from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click

from shared.exit_codes import StopExit, exit_status_epilog
from shared.run_dir import RunDir
from shared.supervisor_state import read_supervisor_state
from shared.vocabulary import RankStatus, SupervisorStateName
from supervisor import messages
from supervisor.views.snapshot import (
    RunVerdict,
    collect_snapshot,
    heartbeat_pid_alive,
    process_matches,
)

POLL_INTERVAL_S = 0.2
FORCE_SIGNAL = signal.SIGQUIT  # the supervisor's "stop now" (policy.FORCE_SIGNAL_NAME)


@dataclass(frozen=True)
class Target:
    pid: int
    label: str  # "supervisor" or "worker rank N"
    create_time: float | None  # for the supervisor: recorded start time
    heartbeat_time: float | None  # for a worker: when its heartbeat was written

    def alive(self) -> bool:
        if self.create_time is not None:
            return process_matches(self.pid, self.create_time)
        return heartbeat_pid_alive(self.pid, self.heartbeat_time or time.time())


def find_targets(log_dir: str | Path) -> tuple[list[Target], str]:
    """What to signal, and a short description of what was found (for the "nothing" line)."""
    run = RunDir.at(log_dir)
    # Multi-node: node 0's supervisor.json, else another node's supervisor.nodeR.json (a node-local
    # directory, or node 0's supervisor not on this machine): stopping one node stops the run.
    for path in run.list_node_states().values():
        state = read_supervisor_state(path)
        if state is not None and process_matches(state.pid, state.pid_create_time):
            return [Target(state.pid, "supervisor", state.pid_create_time, None)], state.state
    snapshot = collect_snapshot(run.root)
    workers = [
        Target(r.pid, f"worker rank {r.rank}", None, snapshot.time - r.age_s)
        for r in snapshot.ranks
        if r.pid_alive and r.status == RankStatus.RUNNING and r.pid != os.getpid()
    ]
    return workers, snapshot.verdict


def _send(target: Target, signum: int) -> bool:
    # Re-check identity right before signalling: the process may have exited meanwhile.
    if target.pid <= 1 or not target.alive():
        return False
    try:
        os.kill(target.pid, signum)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        click.echo(f"gpt2sup stop: not allowed to signal {target.label} (pid {target.pid})", err=True)
        return False


def _wait_until_gone(targets: list[Target], timeout_s: float) -> list[Target]:
    deadline = time.monotonic() + timeout_s
    remaining = [t for t in targets if t.alive()]
    while remaining and time.monotonic() < deadline:
        time.sleep(POLL_INTERVAL_S)
        remaining = [t for t in remaining if t.alive()]
    return remaining


def _final_line(log_dir: str) -> str:
    """How the run ended, in the words and exit code ``gpt2sup run`` itself used."""
    snapshot = collect_snapshot(log_dir)
    parts = [f"run {snapshot.log_dir}: {snapshot.verdict_text()}"]
    progress = snapshot.progress
    if progress is not None and progress.completed_steps is not None:
        of = f"/{progress.max_steps}" if progress.max_steps else ""
        parts.append(f"{progress.completed_steps}{of} steps done")
    if snapshot.checkpoints.newest_name:
        parts.append(f"newest checkpoint {snapshot.checkpoints.newest_name}")
    line = ", ".join(parts)
    if snapshot.verdict == RunVerdict.STOPPED:
        line += _resume_hint(log_dir, snapshot.checkpoints.newest_name is not None)
    return line


def _resume_hint(log_dir: str, has_checkpoint: bool) -> str:
    """The command that resumes THIS run (a bare `gpt2sup run` acts on ./log), with its --worker."""
    if not has_checkpoint:
        return "; no checkpoint was written, so there is nothing to resume"
    state = read_supervisor_state(Path(log_dir) / "supervisor.json")
    record = (state.accepted_run or state.run_config) if state is not None else {}
    module = record.get("worker_module")
    command = messages.run_command(log_dir, Path.cwd(), module if isinstance(module, str) else None)
    return f"; `{command}` resumes it"


def _requested_line(signalled: list[Target], force: bool, already_stopping: bool) -> str:
    """What this command really caused, in one line."""
    names = ", ".join(f"{t.label} (pid {t.pid})" for t in signalled)
    to_supervisor = signalled[0].label == "supervisor"
    if force and to_supervisor:
        return (f"forced stop: {names}: the process tree is killed without waiting for the save; "
                "steps since the newest checkpoint are lost")
    if force:  # bare ranks know no forced stop: SIGTERM is all they get
        return (f"stop requested: {names}: each rank saves at its next step boundary and exits "
                "(workers without a supervisor have no forced stop)")
    if already_stopping:
        return (f"a stop is already under way: {names}: the worker saves at its next step boundary; this "
                "request changes nothing (`gpt2sup stop --force` stops without the save)")
    # The request came from here, not from a terminal: the way to force it is this command.
    what = "the worker saves at its next step boundary, then everything exits" if to_supervisor else (
        "each rank saves at its next step boundary and exits")
    return f"stop requested: {names}: {what} (`gpt2sup stop --force` stops without the save)"


@click.command("stop", epilog=exit_status_epilog(StopExit, "Exit codes:"))
@click.option(
    "--log-dir", default="log", show_default=True, type=click.Path(file_okay=False),
    help="Run directory whose supervisor (or bare workers) to stop.",
)
@click.option(
    "--force", is_flag=True,
    help="Stop now without the save (SIGQUIT to the supervisor: it kills the process tree; steps since "
    "the newest checkpoint are lost). Plain requests, repeated or not, always wait for the save.",
)
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait until the run has exited.")
@click.option(
    "--timeout", "timeout_s", default=600.0, show_default=True, type=click.FloatRange(min=0),
    help="Seconds to wait with --wait before giving up (the run keeps stopping).",
)
def stop(log_dir: str, force: bool, wait: bool, timeout_s: float) -> None:
    """Ask a running supervisor to stop cleanly: the worker saves at its next step boundary and
    everything exits; `gpt2sup run` later resumes from that checkpoint.

    Without a live supervisor but with live workers (a bare `torchrun` run, or workers orphaned
    by a killed supervisor) each worker rank gets SIGTERM instead. Repeating a plain stop changes
    nothing; only --force (or a second Ctrl-C at the supervisor's terminal) skips the save.
    Processes are identified by pid and start time, so a reused pid is never signalled.
    """
    targets, found = find_targets(log_dir)
    if not targets:
        where = str(log_dir).rstrip("/") + "/"
        click.echo(f"nothing to stop in {where}: no live supervisor or worker (run: {found})", err=True)
        sys.exit(StopExit.NOTHING_OR_TIMEOUT)

    to_supervisor = targets[0].label == "supervisor"
    already_stopping = to_supervisor and found == SupervisorStateName.STOPPING
    signum = FORCE_SIGNAL if force and to_supervisor else signal.SIGTERM
    signalled = [t for t in targets if _send(t, signum)]
    if not signalled:
        click.echo(f"nothing to stop in {log_dir}: the processes exited before the signal", err=True)
        sys.exit(StopExit.NOTHING_OR_TIMEOUT)
    click.echo(_requested_line(signalled, force, already_stopping))
    if not wait:
        sys.exit(StopExit.DELIVERED)

    left = _wait_until_gone(signalled, timeout_s)
    if left:
        names = ", ".join(f"{t.label} (pid {t.pid})" for t in left)
        click.echo(f"still running after {timeout_s:g}s: {names}; try `gpt2sup stop --force`", err=True)
        sys.exit(StopExit.NOTHING_OR_TIMEOUT)
    click.echo(_final_line(log_dir))
    sys.exit(StopExit.DELIVERED)
