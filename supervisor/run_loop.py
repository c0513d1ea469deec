"""The Supervisor: validate -> launch -> watch -> dispatch on the outcome -> decide -> back off.

This is the only stateful, time-driven piece of ``gpt2sup run``, and it only sequences: the
decisions are ``policy``'s, launching and watching one attempt is ``watch.TorchrunAttempts``'s
(injectable, so the cycle is unit-tested with scripted attempts), judging checkpoints is
``checkpoint_selection``'s, disk space is ``DiskGuard``'s, the wording is ``messages``'s, and
every record of what happened goes through ``self.journal``.
"""
from __future__ import annotations

import dataclasses
import socket
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from shared.atomic_io import read_json, write_json_atomic
from shared.exit_codes import SupervisorExit, WorkerExit
from shared.remote.store import CheckpointStore
from shared.run_dir import RunDir
from shared.supervisor_state import (
    FailureRecord,
    SupervisorState,
    load_supervisor_state,
    read_supervisor_state,
)
from shared.vocabulary import EventKind, OutcomeKind, SupervisorStateName
from supervisor import messages, policy
from supervisor.attempts.attempt import AttemptResult, Attempts, StopRequests
from supervisor.attempts.orphans import (
    find_foreign_trainers,
    lost_supervisor,
    stop_orphans,
    survey_orphans,
)
from supervisor.checkpoints import remote_sync
from supervisor.checkpoints.checkpoint_selection import (
    Selection,
    quarantine,
)
from supervisor.checkpoints.disk_guard import DiskGuard
from supervisor.checkpoints.remote_sync import RemoteSync
from supervisor.journal import CycleState, Journal, Reporter
from supervisor.run_config import (
    DEFAULT_WORKER,
    MultiNode,
    RunConfig,
    absolute_path_args,
)
from supervisor.run_lock import RunLock
from supervisor.stop_signals import StopRequested
from supervisor.wiring import Wiring

__all__ = ["DEFAULT_WORKER", "MultiNode", "RecordUnreadable", "RunConfig", "Supervisor"]

class UnsupportedCheckpoint(Exception):
    """The newest checkpoint's format is newer than this install reads: the run ends at once."""


class RecordUnreadable(Exception):
    """``supervisor.json`` exists but cannot be read, and the run's arguments were not given."""


def record_unreadable(path: Path) -> str | None:
    """Why ``path`` (present, yet read as nothing) is unreadable; None when it is absent or fine.
    The one rule of ``shared.supervisor_state.load_supervisor_state``, so `run` and `status` say the same."""
    return load_supervisor_state(path).unreadable


class Supervisor:
    """One supervisor for one run directory; ``run()`` returns a ``SupervisorExit``."""

    def __init__(self, config: RunConfig, wire: Callable[[Supervisor], Wiring], reporter: Reporter | None = None) -> None:
        """``wire``: what the cycle is plugged into, built from this supervisor's parts
        (``supervisor.wiring.production_wiring`` from ``gpt2sup run``; scripted fakes in tests)."""
        if reporter is None:
            from supervisor.views.dashboard import make_reporter

            reporter = make_reporter()
        self.config = config
        # Multi-node: this node's rank. Node R >= 1 has its own lock, state, attempt logs and
        # incidents (RunDir), so the nodes can share one directory; every event names its node.
        self.node = config.node
        self.run_dir = RunDir.at(config.log_dir, self.node)
        self.journal = Journal(self.run_dir, reporter, node=self.node)
        self.lock = RunLock(self.run_dir.supervisor_lock)
        self.stops = StopRequests()
        self.disk = DiskGuard(self.run_dir, config, self.journal)
        self.started_at = time.time()
        # Multi-node: the ending another node recorded before this supervisor started ended an
        # earlier run; one that differs from it was written since (no clocks compared).
        self._endings_before = [read_json(self.run_dir.give_up_marker)]
        self._following: policy.PeerEnding | None = None
        self._reused_line = ""  # "no worker arguments given: reusing ..." (set by _begin)
        self._previous: SupervisorState | None = None  # the supervisor.json found at start-up
        self._accepted: policy.RecordedRun | None = None  # the run it holds (policy.run_to_reuse)
        self._peer_seen: policy.PeerEnding | None = None  # the first ending another node recorded
        self._closed_since: float | None = None  # first of the current run of closed-rendezvous launches
        self.progress = policy.ProgressTracker()
        wiring = wire(self)
        self.attempts: Attempts = wiring.attempts
        self._select = wiring.select
        self.validator = wiring.validator  # one warm load-probe child, validating checkpoints as written
        # One directory per node shares nothing: node 0 hosts a TCPStore the nodes agree through.
        self.coordination = wiring.coordination
        self.remote_store: CheckpointStore | None = None  # --checkpoint-uri, node 0 only (_open_remote)
        self.remote: RemoteSync | None = None  # its background uploader

    def install_signal_handlers(self) -> None:
        self.stops.install()  # SIGINT, SIGTERM, SIGHUP ask to stop; SIGCHLD wakes the loop

    def run(self) -> SupervisorExit:
        """Take the lock (RunLockHeld propagates), then supervise until a terminal state."""
        self.run_dir.root.mkdir(parents=True, exist_ok=True)
        self.lock.acquire()
        try:
            if self.coordination is not None:
                self.coordination.start()  # in the background: node 0 binds, node R connects when it can
            if self.validator is not None:
                self.validator.start()  # the probe child imports torch while we look at the directory
            return self._run_locked()
        except StopRequested as request:  # raised only out of a checkpoint validation
            return self._end(SupervisorStateName.STOPPED, messages.stopped(f"{request}, during checkpoint validation",
                                                                            resume_with=self._resume_command()))
        except UnsupportedCheckpoint as unsupported:  # raised only out of a checkpoint validation
            return self._end(SupervisorStateName.GAVE_UP, messages.unsupported_format(str(unsupported)),
                             SupervisorExit.UNSUPPORTED_FORMAT)
        except Exception as exc:
            if self.journal.state is not None:
                self.journal.event(EventKind.INTERNAL_ERROR, f"internal error: {type(exc).__name__}: {exc}")
                self.journal.save_state(state=SupervisorStateName.ERROR, exit_code=int(SupervisorExit.INTERNAL_ERROR))
            raise
        finally:
            if self.remote is not None:
                self.remote.close()
            if self.validator is not None:
                self.validator.close()
            if self.coordination is not None:  # node 0: until the other nodes have read an ending
                self.coordination.close(should_stop=lambda: self.stops.forced)
            self.journal.close()
            self.lock.release()

    # -- the cycle -------------------------------------------------------------------------------
    def _run_locked(self) -> SupervisorExit:
        self._resolve_checkpoint_uri()
        self._begin()
        refused = self._open_remote()
        if refused is not None:
            return self._end(SupervisorStateName.REFUSED, refused)
        self.progress.best_step = self._choose_checkpoint()
        self._start_uploads()
        if self._already_finished():
            name = self.run_dir.checkpoint(self.progress.best_step).name  # type: ignore[arg-type]
            return self._end(SupervisorStateName.FINISHED, messages.already_finished(self.progress.best_step, name))
        restarts_used = consecutive_failures = 0
        relaunch: OutcomeKind | None = None
        while True:
            ending = self._ending_before_launch()
            if ending is not None:
                return ending
            if relaunch is not None:
                restarts_used += 1
                self.journal.save_state(restarts_used=restarts_used)
                self.journal.event(EventKind.RESTARTED, f"restart {restarts_used}/{self.config.limits.max_restarts} "
                                   f"after {relaunch}", restarts_used=restarts_used)
            self.disk.check(force=True)
            foreign = find_foreign_trainers(self.run_dir.root, node=self.node)
            if foreign is not None:  # a bare torchrun, another copy of gpt2sup's workers: never two trainers
                return self._end(SupervisorStateName.REFUSED, f"refusing to launch: {foreign.describe()}")
            result = self._attempt()
            peer = self._peer_ending()
            if peer is not None and result.outcome.kind not in (OutcomeKind.FINISHED,
                                                                  OutcomeKind.FINISHED_WITHOUT_CHECKPOINT):
                return self._follow(peer)
            if self._stale_rendezvous(result):
                relaunch = None  # not a restart: the launch never reached a rendezvous
                continue
            if not result.outcome.is_failure:
                return self._end_of_training(result)
            validation_started = time.monotonic()
            stalled = self._recover_timed(result, validation_started)
            consecutive_failures = policy.next_consecutive_failures(consecutive_failures, result.duration_s,
                                                                    self.config.backoff)
            decision = policy.decide_after_failure(
                result.outcome, restarts_used=restarts_used, stalled_failures=stalled,
                consecutive_failures=consecutive_failures, limits=self.config.limits, backoff=self.config.backoff,
            )
            if not decision.restart:
                return self._give_up(decision, result)
            self._back_off_timed(decision.delay_s, validation_started)
            relaunch = result.outcome.kind

    def _ending_before_launch(self) -> SupervisorExit | None:
        """How the run ends before the next launch (a peer node's ending, a stop asked for), or None."""
        peer = self._peer_ending()
        if peer is not None:
            return self._follow(peer)
        if self.stops.count:
            return self._end(SupervisorStateName.STOPPED, messages.stopped("before launch",
                                                                            resume_with=self._resume_command()))
        return None

    def _recover_timed(self, result: AttemptResult, validation_started: float) -> int:
        """Recover from a failed attempt (the stalled-failure count), timing it for restart_breakdown."""
        stalled = self.progress.record_failure(self._recover_from(result))
        self.attempts.time_recovery(validation_s=time.monotonic() - validation_started)  # restart_breakdown
        return stalled

    def _back_off_timed(self, delay_s: float, validation_started: float) -> None:
        """Wait out the backoff, timing it for restart_breakdown."""
        backoff_started = time.monotonic()
        # The backoff counts from the end of the attempt: validation already waited part of it.
        self._back_off(delay_s, already_waited_s=backoff_started - validation_started)
        self.attempts.time_recovery(backoff_s=time.monotonic() - backoff_started)

    def _attempt(self) -> AttemptResult:
        """Run the next attempt, then make supervisor.json name the newest checkpoint on disk."""
        self.journal.attempt += 1
        result = self.attempts.run(self.journal.attempt)
        if policy.arguments_accepted(result.outcome.kind, result.step):  # the run's arguments now
            self.journal.save_state(accepted_run=policy.RecordedRun(
                tuple(self.config.worker_args), self.config.worker_module).to_dict(), finished_checkpoint=None)
        newest = self.run_dir.newest_checkpoint()
        if newest is not None and newest.path.name != (self.journal.state.newest_checkpoint if self.journal.state
                                                        else None):
            written = newest.path.name == result.last_checkpoint
            self.journal.save_state(
                newest_checkpoint=newest.path.name,
                newest_checkpoint_valid=True if written else None,
                newest_checkpoint_reason=f"written by the worker in attempt {self.journal.attempt}" if written else None,
            )
        return result

    def _end_of_training(self, result: AttemptResult) -> SupervisorExit:
        match result.outcome.kind:
            case OutcomeKind.FINISHED:
                self.journal.save_state(finished_checkpoint=result.last_checkpoint)
                return self._end(SupervisorStateName.FINISHED, messages.finished(result.step, result.last_checkpoint))
            case OutcomeKind.FINISHED_WITHOUT_CHECKPOINT:
                return self._end(SupervisorStateName.FINISHED_WITHOUT_CHECKPOINT,
                                 messages.finished_without_checkpoint(result.step, result.cause))
            case _ if result.outcome.exit_code == WorkerExit.STOP_SAVE_FAILED:
                newest = self.run_dir.newest_checkpoint()
                return self._end(SupervisorStateName.STOPPED, messages.stopped_without_checkpoint(
                    result.step, result.cause, newest.path.name if newest else None, self._run_command()))
            case _:
                step, newest_name = self._stopped_at(result)
                newest = self.run_dir.newest_checkpoint()
                if policy.stop_checkpoint_missing(result.outcome.exit_code, step, newest.step if newest else None):
                    return self._end(SupervisorStateName.STOPPED, messages.stopped_without_checkpoint(
                        step, result.cause or result.reason, newest_name, self._run_command()))
                return self._end(SupervisorStateName.STOPPED, messages.stopped(
                    result.reason, step, result.last_checkpoint, self._resume_command(),
                    newest=None if result.last_checkpoint else newest_name))

    def _stopped_at(self, result: AttemptResult) -> tuple[int | None, str | None]:
        """The step a stop ended after, and the newest checkpoint on disk, read now.

        Why: a forced stop's step is the one the watcher last polled, which the ranks may have
        passed before the kill (it said "after step 92" beside model_00093.pt and a panel at
        94/300). Rank 0's heartbeat and the newest file on disk, read after the tree is gone, name
        the step actually finished; the line and the panel then agree.
        """
        from shared.heartbeat import read_heartbeat

        newest = self.run_dir.newest_checkpoint()
        beat = read_heartbeat(self.run_dir.heartbeat(0))
        if beat is not None and beat.attempt_id and result.attempt_id and beat.attempt_id != result.attempt_id:
            beat = None  # an earlier attempt's beat (this one was killed in its start-up): its steps were lost
        seen = [s for s in (result.step, newest.step if newest is not None else None,
                            beat.step if beat is not None else None)
                if s is not None and s >= 0]
        return (max(seen) if seen else result.step), (newest.path.name if newest is not None else None)

    def _run_command(self) -> str:
        """The command that acts on this run directory, from where this supervisor was started."""
        return messages.run_command(self.config.log_dir, self.config.cwd, self.config.worker_module)

    def _resume_command(self) -> str | None:
        """``_run_command()`` when there is a checkpoint to resume from, else None."""
        return self._run_command() if self.run_dir.newest_checkpoint() is not None else None

    def _recover_from(self, result: AttemptResult) -> int | None:
        """Record the failure, quarantine a checkpoint the worker rejected, choose where to resume."""
        outcome = result.outcome
        failure = FailureRecord(
            kind=str(outcome.kind), reason=result.reason, attempt=self.journal.attempt, time=time.time(),
            exit_code=outcome.exit_code, signal=messages.signal_name(outcome.signal) if outcome.signal else None,
            rank=outcome.rank, step=result.step,
        )
        self.journal.save_state(state=SupervisorStateName.RESTARTING, last_failure=failure)
        if outcome.kind == OutcomeKind.PERMANENT:
            return None  # nothing will be relaunched: leave the checkpoints alone
        if outcome.kind == OutcomeKind.BAD_CHECKPOINT:
            self._quarantine_rejected(result)
        return self._choose_checkpoint()

    def _back_off(self, delay_s: float, already_waited_s: float = 0.0) -> None:
        """Wait ``delay_s`` from the end of the attempt: the ``already_waited_s`` spent validating
        overlaps the wait (the event's ``remaining_s`` is what is left of it)."""
        if delay_s <= 0:
            return
        remaining = policy.remaining_backoff(delay_s, already_waited_s)
        self.journal.event(EventKind.BACKOFF, f"waiting {remaining:.1f}s more before restarting (backoff "
                           f"{delay_s:.1f}s from the failure)", delay_s=delay_s, remaining_s=round(remaining, 3))
        deadline = time.monotonic() + remaining
        while time.monotonic() < deadline and not self.stops.count and self._peer_ending() is None:
            self.stops.sleep(min(deadline - time.monotonic(), self.config.monitor_interval))

    def _give_up(self, decision: policy.Decision, result: AttemptResult) -> SupervisorExit:
        state = self.journal.state
        assert state is not None and state.last_failure is not None
        state.last_failure.reason = f"{decision.reason}; last failure: {result.reason}"
        self.journal.save_state(last_failure=state.last_failure)
        log_name = str(self.run_dir.attempt_log(self.journal.attempt).relative_to(self.run_dir.root))
        if decision.end_state == SupervisorStateName.REFUSED:
            line = messages.refused(result.message, result.reason)
        elif result.outcome.kind == OutcomeKind.PERMANENT:
            line = messages.permanent(result.cause, result.reason, result.outcome.exit_code, log_name)
        else:
            line = messages.gave_up(decision.reason, result.reason)
        return self._end(decision.end_state, line, decision.exit_code)

    def _end(self, state: SupervisorStateName, line: str, code: SupervisorExit | None = None) -> SupervisorExit:
        code = code if code is not None else _EXIT_OF[state]
        if self.node is not None and self._following is None and state in _ENDS_THE_RUN:
            # First, so the other nodes end now, not after this node's upload wait (--upload-timeout);
            # the wait never changes the code of an ending that other nodes follow.
            self._record_ending(state, line, code)
        line, code = self._settle_uploads(state, line, code)
        self.journal.save_state(state=state, exit_code=int(code))
        self.journal.event(EventKind(str(state)), line, exit_code=int(code))
        self.journal.show_progress()
        return code

    # -- multi-node: one node's ending is every node's ---------------------------------------------
    def _record_ending(self, state: SupervisorStateName, line: str, code: SupervisorExit) -> None:
        """``give_up.json`` and node 0's coordination store: the other nodes' supervisors, sharing this
        directory or not, end the same way."""
        record = {"node": self.node, "state": str(state), "exit_code": int(code), "reason": line,
                  "time": time.time(), "attempt": self.journal.attempt, "hostname": socket.gethostname(),
                  "pid": psutil.Process().pid}
        try:
            write_json_atomic(self.run_dir.give_up_marker, record, create_parent=False)
        except OSError as exc:
            self.journal.event(EventKind.WARNING, f"could not record this node's ending for the other nodes in "
                               f"{self.run_dir.give_up_marker.name}: {exc.strerror or exc}")
        if self.coordination is not None and not self.coordination.publish(record):
            self.journal.event(EventKind.WARNING, "could not tell the other nodes through the coordination store "
                               f"at {self.coordination.where()} (not reachable): only a shared run directory does")

    def _peer_ending(self) -> policy.PeerEnding | None:
        """Another node's ending, from ``give_up.json`` or the coordination store; once seen, kept."""
        if self.node is None or self._peer_seen is not None:
            return self._peer_seen
        self._peer_seen = policy.peer_ending(read_json(self.run_dir.give_up_marker), self.node, self._endings_before)
        if self._peer_seen is None and self.coordination is not None:
            self._peer_seen = policy.peer_ending(self.coordination.ending(), self.node, started_at=self.started_at)
        if self._peer_seen is not None:
            if self.coordination is not None:
                self.coordination.acknowledge()  # node 0 keeps its store up until every node has read it
            return self._peer_seen
        return None

    def peer_ended_line(self) -> str | None:
        peer = self._peer_ending()
        return peer.describe() if peer is not None else None

    def _stale_rendezvous(self, result: AttemptResult) -> bool:
        """torchrun found the rendezvous closed: relaunch after a short wait, not counted as a restart.

        Every torchrun whose workers failed closes the rendezvous of its ``--rdzv-id`` in the c10d
        store as it exits (torch/distributed/launcher/api.py: ``rdzv_handler.shutdown()``), and
        the store lives in whichever torchrun bound the endpoint's port. While a torchrun of the
        previous attempt still hosts it (another node's, its ranks not yet failed or killed), a
        new join under the same id fails at once with RendezvousClosedError. Once that torchrun
        exits, the next one hosts a new store and the rendezvous forms in a fresh round. That
        takes at most the other node's hang timeout; past ``--startup-timeout`` of such launches
        in a row it is a failure like any other.
        """
        if not result.rendezvous_closed or self.config.multi_node is None:
            self._closed_since = None
            return False
        now = time.monotonic()
        self._closed_since = self._closed_since if self._closed_since is not None else now
        if now - self._closed_since > self.config.timeouts.startup_timeout:
            return False
        wait = CLOSED_RENDEZVOUS_WAIT_S
        self.journal.event(EventKind.WARNING, f"the rendezvous '{self.config.multi_node.rdzv_id}' is still closed by "
                           "the previous attempt (a torchrun of it, on some node, still hosts the c10d store): "
                           f"relaunching in {wait:g}s, not counted as a restart", rendezvous_closed=True, delay_s=wait)
        deadline = now + wait
        while time.monotonic() < deadline and not self.stops.count and self._peer_ending() is None:
            self.stops.sleep(min(deadline - time.monotonic(), self.config.monitor_interval))
        return True

    def _follow(self, peer: policy.PeerEnding) -> SupervisorExit:
        """Another node ended the run: end this node the same way, with the same exit code."""
        self._following = peer
        try:
            state = SupervisorStateName(peer.state)
            code = SupervisorExit(peer.exit_code)
        except ValueError:
            state, code = SupervisorStateName.GAVE_UP, SupervisorExit.GAVE_UP
        if state not in _ENDS_THE_RUN:
            state = SupervisorStateName.GAVE_UP
        return self._end(state, f"{peer.describe()} -- node {self.node} ends too", code)

    # -- before the first launch -------------------------------------------------------------------
    def _begin(self) -> None:
        previous = read_supervisor_state(self.run_dir.supervisor_state)
        unreadable = record_unreadable(self.run_dir.supervisor_state) if previous is None else None
        if unreadable is not None and not self.config.worker_args:  # never the defaults: ask for the arguments
            raise RecordUnreadable(self._unreadable_line(unreadable))
        accepted = self._reuse_recorded_run(previous)
        self._previous, self._accepted = previous, accepted
        me = psutil.Process()
        self.journal.attempt = self.run_dir.highest_attempt()
        self.journal.begin(CycleState(
            state=SupervisorStateName.STARTING, pid=me.pid, pid_create_time=me.create_time(),
            hostname=socket.gethostname(), log_dir=str(self.run_dir.root), started_at=time.time(),
            max_restarts=self.config.limits.max_restarts, run_config=self.config.describe(),
            accepted_run=accepted.to_dict() if accepted is not None else None,
            finished_checkpoint=policy.finished_checkpoint(previous.state, previous.newest_checkpoint,
                                                           previous.finished_checkpoint) if previous else None,
        ))
        self.journal.event(EventKind.SUPERVISOR_STARTED, f"supervisor {me.pid} watching {self.run_dir.root}")
        if unreadable is not None:
            self.journal.event(EventKind.WARNING, f"the previous supervisor.json was unreadable ({unreadable}); "
                               "rewritten with this run's arguments")
        if self._reused_line:
            self.journal.event(EventKind.CONFIG_CHANGE, self._reused_line, worker_args=self.config.worker_args,
                               worker_module=self.config.worker_module)
        if previous is not None:
            self._kill_orphans(previous)

    def _already_finished(self) -> bool:
        """The previous supervisor finished this run and nothing asks for more: launch nothing."""
        previous, accepted = self._previous, self._accepted
        # Multi-node: every node must end alike, so each launches and its workers end at once.
        if previous is None or accepted is None or self.config.multi_node is not None or self.progress.best_step is None:
            return False
        same_run = (list(accepted.worker_args) == self.config.worker_args
                    and accepted.worker_module == self.config.worker_module)
        chosen = self.run_dir.checkpoint(self.progress.best_step).name
        return policy.already_finished(self.journal.state.finished_checkpoint if self.journal.state else None,
                                       chosen, same_run)

    def _reuse_recorded_run(self, previous: SupervisorState | None) -> policy.RecordedRun | None:
        """No worker arguments (no ``--worker``): the ones of the run this directory holds, i.e. the
        last accepted ones, relative paths made absolute against the directory they were given in."""
        self._reused_line = ""
        if previous is None:
            return None
        accepted = policy.run_to_reuse(previous.accepted_run, previous.run_config, previous.state, DEFAULT_WORKER)
        if accepted is None:
            return None
        recorded_cwd = previous.run_config.get("cwd")
        base = Path(recorded_cwd) if isinstance(recorded_cwd, str) and recorded_cwd else self.config.cwd
        accepted = policy.RecordedRun(tuple(absolute_path_args(list(accepted.worker_args), base)),
                                      accepted.worker_module)
        said = []
        if not self.config.worker_module_given and self.config.worker_module != accepted.worker_module:
            self.config.worker_module = accepted.worker_module
            said.append(f"--worker {accepted.worker_module}")
        if not self.config.worker_args and accepted.worker_args:
            self.config.worker_args = list(accepted.worker_args)
            said.append(" ".join(accepted.worker_args))
        if said:
            given = "no worker arguments given" if "--worker" not in said[0] or len(said) > 1 else "no --worker given"
            self._reused_line = f"{given}: reusing the previous run's {' '.join(said)}"
        return accepted

    def _unreadable_line(self, why: str) -> str:
        return (f"refusing to start: {self.run_dir.supervisor_state} is unreadable ({why}), so the worker "
                f"arguments of the run in {self.run_dir.root} are unknown; give them after `--` "
                f"({messages.run_command(self.run_dir.root, self.config.cwd)} [--worker MODULE] -- ARGS), "
                "or use a new --log-dir")

    def _kill_orphans(self, previous: SupervisorState) -> None:
        """Processes an earlier (killed) supervisor of THIS directory left running: stop them first.

        Only processes proven to be this run's are signalled (``supervisor.attempts.orphans``); a stop
        request to us ends the wait (the second one at once).
        """
        lost = lost_supervisor(previous)
        if lost is not None:
            self.journal.event(EventKind.WARNING, lost, previous_supervisor=previous.pid)
        survey = survey_orphans(previous, self.run_dir.root)
        if survey.left_alone:
            self.journal.event(EventKind.WARNING, f"not touching {len(survey.left_alone)} live process(es) recorded "
                               "in supervisor.json: " + "; ".join(f"pid {pid}: {why}" for pid, why in
                                                                  sorted(survey.left_alone.items())),
                               pids=sorted(survey.left_alone))
        if not survey.orphans:
            return
        report = stop_orphans(survey, self.run_dir.root, kill_grace_s=self.config.kill_grace,
                              stop_timeout_s=self._stop_timeout(), stop_forced=lambda: self.stops.forced,
                              wait=self.stops.sleep)
        how = f"killed ({report.forced})" if report.forced else "saved and stopped"
        self.journal.event(EventKind.ORPHANS_KILLED, f"{how}: {len(report.pids)} process(es) left by supervisor "
                           f"{previous.pid}: {report.pids}", pids=report.pids, forced=report.forced,
                           survivors=report.survivors, seconds=round(report.seconds, 2))

    def _stop_timeout(self) -> float:
        """``policy.stop_allowance`` before any attempt: only the newest checkpoint's size is known."""
        newest = self.run_dir.newest_checkpoint()
        seen = policy.Measurements(newest_checkpoint_bytes=newest.size if newest else None)
        return policy.stop_allowance(policy.phase_timeouts(self.config.timeouts, seen), self.config.stop_timeout)

    # -- checkpoints -------------------------------------------------------------------------------
    def _quarantine_rejected(self, result: AttemptResult) -> None:
        """Worker exit 4 is a verdict on the file it was given: set it aside, as a failed validation."""
        if not self.config.is_node_zero:
            return  # node 0's supervisor judges the run's checkpoints (its writer read the file)
        state = self.journal.state
        name = result.bad_checkpoint or (state.newest_checkpoint if state is not None else None)
        path = self.run_dir.root / Path(name).name if name else None
        if path is None or not path.is_file():
            self.journal.event(EventKind.WARNING, f"the worker rejected its checkpoint ({result.cause}) but "
                               f"{'did not name it' if not name else name + ' is gone'}; validating again")
            return
        reason = result.cause or f"the worker could not use it (exit {int(WorkerExit.CHECKPOINT_ERROR)})"
        try:
            new_path = quarantine(path, reason)
        except OSError as exc:
            self.journal.event(EventKind.WARNING, f"could not quarantine {path.name}: {exc.strerror or exc}")
            return
        self.journal.event(EventKind.QUARANTINED, f"checkpoint {path.name} rejected by the worker ({reason}); "
                           f"renamed to {new_path.name}", checkpoint=path.name, reason=reason,
                           renamed_to=new_path.name, source="worker")

    def _node_0_decides(self) -> int | None:
        """Node R >= 1 never validates, quarantines or re-points the link: node 0's supervisor does,
        before each of its launches, and node 0's writer tells every rank (the absolute path, by
        broadcast) which file to resume from. So a shared directory has one judge, and a node-local
        directory (no checkpoints at all) needs none. The step returned only measures progress."""
        newest = self.run_dir.newest_checkpoint()
        return newest.step if newest is not None else None

    def _choose_checkpoint(self) -> int | None:
        """Validate newest-first, quarantine, re-point the link. Returns the step to resume from."""
        if not self.config.is_node_zero:
            return self._node_0_decides()
        selection = self._select_with_remote()
        unsupported = selection.unsupported
        if unsupported is not None:  # not damage: never renamed, never skipped for an older file or scratch
            self.journal.save_state(newest_checkpoint=unsupported.path.name, newest_checkpoint_valid=None,
                                    newest_checkpoint_reason=unsupported.reason)
            raise UnsupportedCheckpoint(unsupported.reason or f"{unsupported.path.name}: unsupported format_version")
        for verdict, new_path in selection.quarantined:
            self.journal.event(EventKind.QUARANTINED, f"checkpoint {verdict.path.name} failed validation "
                               f"({verdict.reason}); renamed to {new_path.name}", checkpoint=verdict.path.name,
                               reason=verdict.reason, renamed_to=new_path.name)
        for skipped in selection.skipped_inconclusive:
            self.journal.event(EventKind.WARNING, f"could not judge {skipped.path.name} ({skipped.reason}); kept it, "
                               "resuming from an older file that passed", checkpoint=skipped.path.name)
        chosen = selection.chosen
        remaining = self.run_dir.newest_checkpoint()
        if chosen is None and remaining is not None:
            # Never start from scratch while checkpoints exist (e.g. one could not be renamed).
            self.run_dir.point_latest_link(remaining.path)
            self.journal.event(EventKind.WARNING, f"NO CHECKPOINT PASSED VALIDATION, but {remaining.path.name} is "
                               "still on disk: resuming from it UNVERIFIED rather than from scratch",
                               checkpoint=remaining.path.name)
            self.disk.newest_valid_step = None
            self.journal.save_state(newest_checkpoint=remaining.path.name, newest_checkpoint_valid=None,
                                    newest_checkpoint_reason="resumed unverified")
            return remaining.step
        if chosen is None:
            if selection.checked:
                self.journal.event(EventKind.CHECKPOINT_VALID, "NO VALID CHECKPOINT: every checkpoint failed "
                                   "validation; starting from scratch", checkpoint=None)
            last = selection.checked[-1] if selection.checked else None
            self.disk.newest_valid_step = None
            self.journal.save_state(newest_checkpoint=last.path.name if last else None,
                                    newest_checkpoint_valid=False if last else None,
                                    newest_checkpoint_reason=last.reason if last else None)
            return None
        if chosen.inconclusive:
            self.journal.event(EventKind.WARNING, f"COULD NOT JUDGE {chosen.path.name} ({chosen.reason}): resuming "
                               "from it UNVERIFIED; the worker's own checks are the last line", checkpoint=chosen.path.name)
            line = f"resuming from {chosen.path.name} UNVERIFIED: validation inconclusive ({chosen.reason})"
        else:
            line = f"resuming from {chosen.path.name} (validated in {chosen.seconds or 0:.2f}s)"
        self.journal.event(EventKind.CHECKPOINT_VALID, line, checkpoint=chosen.path.name, step=chosen.step,
                           seconds=chosen.seconds, inconclusive=chosen.inconclusive)
        self.disk.newest_valid_step = None if chosen.inconclusive else chosen.step
        self.journal.save_state(newest_checkpoint=chosen.path.name,
                                newest_checkpoint_valid=None if chosen.inconclusive else True,
                                newest_checkpoint_reason=chosen.reason if chosen.inconclusive else None)
        return chosen.step


    # -- the checkpoint store (--checkpoint-uri; supervisor.checkpoints.remote_sync) ----------------------------
    def _resolve_checkpoint_uri(self) -> None:
        """No --checkpoint-uri given: the one this run directory's previous supervisor recorded."""
        if self.config.checkpoint_uri is not None:
            return
        previous = read_supervisor_state(self.run_dir.supervisor_state)
        recorded = previous.run_config.get("checkpoint_uri") if previous is not None else None
        if isinstance(recorded, str) and recorded:
            self.config.checkpoint_uri = recorded

    def _open_remote(self) -> str | None:
        """Open and check the store before anything trains; the refusal's one line, or None.

        On a new machine (no run_identity.json) the identity is restored from the store first,
        so the worker's identity check applies to the resumed run."""
        uri = self.config.checkpoint_uri
        if uri is None or not self.config.is_node_zero:
            return None  # node R >= 1 writes no checkpoints: node 0's supervisor syncs the run
        from shared.remote import CheckpointUriError, ObjectStoreError

        try:
            self.remote_store = remote_sync.open_checked(uri)
            restored = remote_sync.restore_identity(self.remote_store, self.run_dir)
        except (CheckpointUriError, ObjectStoreError) as exc:
            return f"refusing to start: checkpoint store: {exc}"
        except OSError as exc:
            return f"refusing to start: cannot restore run_identity.json: {exc.strerror or exc}"
        if restored:
            self.journal.event(EventKind.DOWNLOADED, f"restored run_identity.json from {self.remote_store.uri} "
                               "(a new machine: the run continues from the store)", uri=self.remote_store.uri)
        return None

    def _start_uploads(self) -> None:
        if self.remote_store is None or self.config.checkpoint_uri is None:
            return
        from shared.remote import open_store

        # Its own store (its own client): the uploader thread and the launches never share one.
        store = open_store(self.config.checkpoint_uri, **remote_sync.SYNC_S3_OPTIONS)
        self.remote = RemoteSync(store, self.run_dir, self.journal.event,
                                 keep_last=policy.keep_last_from_worker_args(self.config.worker_args),
                                 interval_s=self.config.monitor_interval)
        self.remote.start()

    def _select_with_remote(self) -> Selection:
        """Checkpoint selection over local and remote checkpoints together.

        Local files are validated first; then a committed remote checkpoint newer than the one
        chosen is downloaded (SHA-256 checked against its commit, installed atomically) and the
        selection runs again, so the download is validated like any local file. A download that
        fails (bytes or validation) is marked bad in the store and the next older one is tried.
        """
        from shared.remote import ObjectStoreError

        tried: set[int] = set()
        fetched: set[str] = set()
        quarantined: list = []
        while True:
            with self.stops.interruptible():  # a load-probe can take minutes: Ctrl-C must not wait for it
                selection = self._select(self.run_dir.root, probe_timeout=self.config.probe_timeout)
            for verdict, _ in selection.quarantined:
                if verdict.path.name in fetched and self.remote_store is not None:
                    step = self.run_dir_step(verdict.path.name)
                    remote_sync.mark_bad(self.remote_store, step, f"failed validation: {verdict.reason}",
                                         self.journal.event)
                    if self.remote is not None:
                        self.remote.resync()
            quarantined.extend(selection.quarantined)
            selection = dataclasses.replace(selection, quarantined=list(quarantined))
            if self.remote_store is None or selection.unsupported is not None:
                return selection
            chosen = selection.chosen.step if selection.chosen is not None else None
            try:
                path = remote_sync.fetch_newer(self.remote_store, self.run_dir, chosen, tried, self.journal.event)
            except (ObjectStoreError, OSError) as exc:
                self.journal.event(EventKind.WARNING, f"could not look at the remote checkpoints ({exc}); "
                                   "resuming from the local ones", uri=self.remote_store.uri)
                return selection
            if path is None:
                if tried and self.remote is not None:
                    self.remote.resync()  # a download may have been marked bad
                return selection
            fetched.add(path.name)

    @staticmethod
    def run_dir_step(name: str) -> int:
        from shared.run_dir import step_from_checkpoint_name

        step = step_from_checkpoint_name(name)
        assert step is not None, name
        return step

    def _settle_uploads(self, state: SupervisorStateName, line: str,
                        code: SupervisorExit) -> tuple[str, SupervisorExit]:
        """Before an ending: the newest checkpoint committed to the store, or the ending says it is not.

        ``finished`` never claims an upload that did not happen: when the last checkpoint could
        not be committed within --upload-timeout, the line says so and a finished run exits 7."""
        if self.remote is None or state == SupervisorStateName.REFUSED:
            return line, code
        result = self.remote.flush(self.config.upload_timeout, give_up=lambda: self.stops.forced)
        uri = self.remote.record.uri
        if result.uploaded:
            if result.newest_local is not None:
                line = f"{line} [model_{result.newest_local:05d}.pt committed to {uri}]"
            return line, code
        remote = f"step {result.newest_committed}" if result.newest_committed is not None else "nothing"
        why = f": {result.error}" if result.error else ""
        note = (f"model_{result.newest_local:05d}.pt is on local disk but NOT uploaded to {uri} within "
                f"{self.config.upload_timeout:g}s (the store holds {remote}{why})")
        self.journal.event(EventKind.WARNING, note, uri=uri, newest_local_step=result.newest_local,
                           newest_committed_step=result.newest_committed, not_uploaded=True)
        if state == SupervisorStateName.FINISHED:
            line = line.replace(f"(exit {int(code)})", f"(exit {int(SupervisorExit.FINISHED_NOT_UPLOADED)})")
            code = SupervisorExit.FINISHED_NOT_UPLOADED
        return f"{line}; {note}", code


# Between launches that found the rendezvous closed (see Supervisor._stale_rendezvous).
CLOSED_RENDEZVOUS_WAIT_S = 2.0

_ENDS_THE_RUN = (SupervisorStateName.GAVE_UP, SupervisorStateName.REFUSED, SupervisorStateName.STOPPED)

_EXIT_OF = {
    SupervisorStateName.FINISHED: SupervisorExit.FINISHED,
    SupervisorStateName.FINISHED_WITHOUT_CHECKPOINT: SupervisorExit.FINISHED_WITHOUT_CHECKPOINT,
    SupervisorStateName.STOPPED: SupervisorExit.STOPPED,
    SupervisorStateName.GAVE_UP: SupervisorExit.GAVE_UP,
    SupervisorStateName.REFUSED: SupervisorExit.REFUSED,
}
