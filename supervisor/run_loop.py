"""The Supervisor: validate -> launch -> watch -> dispatch on the outcome -> decide -> back off.

This is the only stateful, time-driven piece of ``gpt2sup run``, and it only sequences: the
decisions are ``policy``'s, launching and watching one attempt is ``torchrun_attempts.TorchrunAttempts``'s
(injectable, so the cycle is unit-tested with scripted attempts), judging checkpoints is
``checkpoint_selection``'s, disk space is ``DiskGuard``'s, the wording is ``messages``'s, and
every record of what happened goes through ``self.journal``.
"""
from __future__ import annotations

import time
from collections.abc import Callable

from shared.exit_codes import SupervisorExit, WorkerExit
from shared.run_dir import RunDir
from shared.supervisor_state import (
    FailureRecord,
)
from shared.vocabulary import EventKind, OutcomeKind, SupervisorStateName
from supervisor import messages, policy
from supervisor.attempts.attempt import AttemptResult, Attempts
from supervisor.attempts.orphans import (
    find_foreign_trainers,
)
from supervisor.checkpoints.checkpoint_validation import probe_command_for
from supervisor.checkpoints.disk_guard import DiskGuard
from supervisor.checkpoints.remote_checkpoints import RemoteCheckpoints
from supervisor.checkpoints.resume_choice import ResumeChoice, UnsupportedCheckpoint
from supervisor.journal import Console, Journal
from supervisor.multinode.endings import NodeEndings
from supervisor.run_config import (
    DEFAULT_WORKER,
    MultiNode,
    RunConfig,
)
from supervisor.run_lock import RunLock
from supervisor.run_start import RunStart
from supervisor.stop_signals import StopRequested, StopSignals
from supervisor.wiring import Wiring

__all__ = ["DEFAULT_WORKER", "MultiNode", "RunConfig", "Supervisor"]

class Supervisor:
    """One supervisor for one run directory; ``run()`` returns a ``SupervisorExit``."""

    def __init__(self, config: RunConfig, wire: Callable[[Supervisor], Wiring], reporter: Console | None = None) -> None:
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
        self.stops = StopSignals()
        self.disk = DiskGuard(self.run_dir, config, self.journal)
        self.progress = policy.ProgressTracker()
        wiring = wire(self)
        self.attempts: Attempts = wiring.attempts
        self.validator = wiring.validator  # one warm load-probe child, validating checkpoints as written
        # One directory per node shares nothing: node 0 hosts a TCPStore the nodes agree through.
        self.coordination = wiring.coordination
        # The pieces of the cycle, each in its own module: the store, the resume choice, the
        # start-up, and (multi-node) the endings the nodes share.
        self.remote_checkpoints = RemoteCheckpoints(config, self.run_dir, self.journal, self.stops, wiring.select)
        self.resume = ResumeChoice(config, self.run_dir, self.journal, self.disk, self.remote_checkpoints)
        self.start = RunStart(config, self.run_dir, self.journal, self.stops)
        self.endings = NodeEndings(config, self.run_dir, self.journal, self.stops, self.coordination)

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
                self.journal.event(EventKind.INTERNAL_ERROR, messages.internal_error(exc))
                self.journal.save_state(state=SupervisorStateName.ERROR, exit_code=int(SupervisorExit.INTERNAL_ERROR))
            raise
        finally:
            self.remote_checkpoints.close()
            if self.validator is not None:
                self.validator.close()
            if self.coordination is not None:  # node 0: until the other nodes have read an ending
                self.coordination.close(should_stop=lambda: self.stops.forced)
            self.journal.close()
            self.lock.release()

    # -- the cycle -------------------------------------------------------------------------------
    def _run_locked(self) -> SupervisorExit:
        self.remote_checkpoints.resolve_uri()
        self.start.begin()
        if self.validator is not None:  # the run's record may have named a script: its own format
            self.validator.use_probe(probe_command_for(self.config))
        refused = self.remote_checkpoints.open()
        if refused is not None:
            return self._end(SupervisorStateName.REFUSED, refused)
        self.progress.best_step = self.resume.choose()
        self.remote_checkpoints.start_uploads()
        if self.start.already_finished(self.progress.best_step):
            name = self.run_dir.checkpoint_of_step(self.progress.best_step).name  # type: ignore[arg-type]
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
                self.journal.event(EventKind.RESTARTED, messages.restarted(restarts_used, self.config.limits.max_restarts,
                                                                           relaunch), restarts_used=restarts_used)
            self.disk.check(force=True)
            foreign = find_foreign_trainers(self.run_dir.root, node=self.node)
            if foreign is not None:  # a bare torchrun, another copy of gpt2sup's workers: never two trainers
                return self._end(SupervisorStateName.REFUSED, messages.refusing_to_launch(foreign.describe()))
            result = self._attempt()
            peer = self.endings.peer()
            if peer is not None and result.outcome.kind not in (OutcomeKind.FINISHED,
                                                                  OutcomeKind.FINISHED_WITHOUT_CHECKPOINT):
                return self._follow(peer)
            if self.endings.stale_rendezvous(result):
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
        peer = self.endings.peer()
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
                newest_checkpoint_reason=messages.written_in_attempt(self.journal.attempt) if written else None,
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
            case _ if result.outcome.exit_code == WorkerExit.STOP_SAVE_FAILED and not self.config.runs_script:
                newest = self.run_dir.newest_checkpoint()
                return self._end(SupervisorStateName.STOPPED, messages.stopped_without_checkpoint(
                    result.step, result.cause, newest.path.name if newest else None, self._run_command()))
            case _:
                step, newest_name = self._stopped_at(result)
                newest = self.run_dir.newest_checkpoint()
                if policy.stop_checkpoint_missing(result.outcome.exit_code, step, newest.step if newest else None):
                    return self._end(SupervisorStateName.STOPPED, messages.stopped_without_checkpoint(
                        step, result.cause or result.reason, newest_name, self._run_command()))
                # A script's checkpoint is the newest on disk, not one a stop is known to have saved.
                saved = None if self.config.runs_script else result.last_checkpoint
                return self._end(SupervisorStateName.STOPPED, messages.stopped(
                    result.reason, step, saved, self._resume_command(), newest=None if saved else newest_name))

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
            self.resume.quarantine_rejected(result.bad_checkpoint, result.cause)
        return self.resume.choose()

    def _back_off(self, delay_s: float, already_waited_s: float = 0.0) -> None:
        """Wait ``delay_s`` from the end of the attempt: the ``already_waited_s`` spent validating
        overlaps the wait (the event's ``remaining_s`` is what is left of it)."""
        if delay_s <= 0:
            return
        remaining = policy.remaining_backoff(delay_s, already_waited_s)
        self.journal.event(EventKind.BACKOFF, messages.backing_off(remaining, delay_s), delay_s=delay_s,
                           remaining_s=round(remaining, 3))
        deadline = time.monotonic() + remaining
        while time.monotonic() < deadline and not self.stops.count and self.endings.peer() is None:
            self.stops.sleep(min(deadline - time.monotonic(), self.config.monitor_interval))

    def _give_up(self, decision: policy.Decision, result: AttemptResult) -> SupervisorExit:
        state = self.journal.state
        assert state is not None and state.last_failure is not None
        state.last_failure.reason = messages.last_failure(decision.reason, result.reason)
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
        if self.node is not None and self.endings.following is None and state in _ENDS_THE_RUN:
            # First, so the other nodes end now, not after this node's upload wait (--upload-timeout);
            # the wait never changes the code of an ending that other nodes follow.
            self.endings.record(state, line, code)
        line, code = self.remote_checkpoints.settle(state, line, code)
        self.journal.save_state(state=state, exit_code=int(code))
        self.journal.event(EventKind(str(state)), line, exit_code=int(code))
        self.journal.show_progress()
        return code

    # -- multi-node: one node's ending is every node's (supervisor.multinode.endings) ----------------
    def peer_ended_line(self) -> str | None:
        """Why another node ended the run, or None (the attempts' watch asks every poll)."""
        return self.endings.peer_line()

    def _follow(self, peer: policy.PeerEnding) -> SupervisorExit:
        """Another node ended the run: end this node the same way, with the same exit code."""
        self.endings.following = peer
        try:
            state = SupervisorStateName(peer.state)
            code = SupervisorExit(peer.exit_code)
        except ValueError:
            state, code = SupervisorStateName.GAVE_UP, SupervisorExit.GAVE_UP
        if state not in _ENDS_THE_RUN:
            state = SupervisorStateName.GAVE_UP
        return self._end(state, messages.following_node(peer.describe(), self.node), code)


_ENDS_THE_RUN = (SupervisorStateName.GAVE_UP, SupervisorStateName.REFUSED, SupervisorStateName.STOPPED)

_EXIT_OF = {
    SupervisorStateName.FINISHED: SupervisorExit.FINISHED,
    SupervisorStateName.FINISHED_WITHOUT_CHECKPOINT: SupervisorExit.FINISHED_WITHOUT_CHECKPOINT,
    SupervisorStateName.STOPPED: SupervisorExit.STOPPED,
    SupervisorStateName.GAVE_UP: SupervisorExit.GAVE_UP,
    SupervisorStateName.REFUSED: SupervisorExit.REFUSED,
}
