"""Before the first launch: the run a directory holds, and what an earlier supervisor left.

No worker arguments given: the last accepted ones are reused (paths made absolute); a
``supervisor.json`` that cannot be read is refused rather than guessed at; the journal begins;
processes proven to be an earlier (killed) supervisor's workers are stopped first; and a run the
previous supervisor finished is not launched again.
"""
from __future__ import annotations

import shlex
import socket
import time
from pathlib import Path

import psutil

from shared.run_dir import CheckpointNaming, RunDir, record_naming
from shared.supervisor_state import (
    SupervisorState,
    load_supervisor_state,
    read_supervisor_state,
)
from shared.vocabulary import EventKind, SupervisorStateName
from supervisor import messages, policy
from supervisor.attempts.orphans import lost_supervisor, stop_orphans, survey_orphans
from supervisor.journal import CycleState, Journal
from supervisor.run_config import (
    DEFAULT_WORKER,
    RunConfig,
    absolute_path_args,
    is_script,
)
from supervisor.stop_signals import StopSignals


class RecordUnreadable(Exception):
    """``supervisor.json`` exists but cannot be read, and the run's arguments were not given."""


class StartRefused(Exception):
    """The options cannot apply to the run this directory holds (one line for the user, exit 2)."""


def record_unreadable(path: Path) -> str | None:
    """Why ``path`` (present, yet read as nothing) is unreadable; None when it is absent or fine.
    The one rule of ``shared.supervisor_state.load_supervisor_state``, so `run` and `status` say the same."""
    return load_supervisor_state(path).unreadable


class RunStart:
    def __init__(self, config: RunConfig, run_dir: RunDir, journal: Journal, stops: StopSignals) -> None:
        self.config = config
        self.run_dir = run_dir
        self.journal = journal
        self.stops = stops
        self.previous: SupervisorState | None = None  # the supervisor.json found at start-up
        self.accepted: policy.RecordedRun | None = None  # the run it holds (policy.run_to_reuse)
        self.reused_line = ""  # "no worker arguments given: reusing ..."

    def begin(self) -> None:
        previous = read_supervisor_state(self.run_dir.supervisor_state)
        unreadable = record_unreadable(self.run_dir.supervisor_state) if previous is None else None
        if unreadable is not None and not self.config.worker_args:  # never the defaults: ask for the arguments
            raise RecordUnreadable(self._unreadable_line(unreadable))
        accepted = self._reuse_recorded_run(previous)
        self.previous, self.accepted = previous, accepted
        self._record_checkpoint_naming()
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
        self.journal.event(EventKind.SUPERVISOR_STARTED, messages.supervisor_started(me.pid, self.run_dir.root))
        if unreadable is not None:
            self.journal.event(EventKind.WARNING, messages.record_rewritten(unreadable))
        if self.reused_line:
            self.journal.event(EventKind.CONFIG_CHANGE, self.reused_line, worker_args=self.config.worker_args,
                               worker_module=self.config.worker_module)
        if self.config.runs_script and self.config.timeouts.hang_timeout is None:
            self.journal.event(EventKind.WARNING, messages.script_hang_detection_off(self.config.worker_module))
        if previous is not None:
            self._kill_orphans(previous)

    def _record_checkpoint_naming(self) -> None:
        """``--checkpoint-glob``: record the script's naming in the run directory (under the run's
        lock), where every reader of its checkpoints finds it; a plain rerun keeps the record."""
        if self.config.checkpoint_naming is None:
            return
        if not self.config.runs_script:
            raise StartRefused(f"--checkpoint-glob is for a script, and the run in {self.run_dir.root} is "
                               f"gpt2sup's worker ({self.config.worker_module}), which names its own model_NNNNN.pt")
        record_naming(self.run_dir.root, CheckpointNaming(self.config.checkpoint_naming))

    def already_finished(self, best_step: int | None) -> bool:
        """The previous supervisor finished this run and nothing asks for more: launch nothing."""
        previous, accepted = self.previous, self.accepted
        # Multi-node: every node must end alike, so each launches and its workers end at once.
        if previous is None or accepted is None or self.config.multi_node is not None or best_step is None:
            return False
        same_run = (list(accepted.worker_args) == self.config.worker_args
                    and accepted.worker_module == self.config.worker_module)
        chosen = self.run_dir.checkpoint_of_step(best_step).name
        return policy.already_finished(self.journal.state.finished_checkpoint if self.journal.state else None,
                                       chosen, same_run)

    def _reuse_recorded_run(self, previous: SupervisorState | None) -> policy.RecordedRun | None:
        """No worker arguments (no ``--worker``): the ones of the run this directory holds, i.e. the
        last accepted ones, relative paths made absolute against the directory they were given in."""
        self.reused_line = ""
        if previous is None:
            return None
        accepted = policy.run_to_reuse(previous.accepted_run, previous.run_config, previous.state, DEFAULT_WORKER)
        if accepted is None:
            return None
        recorded_cwd = previous.run_config.get("cwd")
        base = Path(recorded_cwd) if isinstance(recorded_cwd, str) and recorded_cwd else self.config.cwd
        if not self.config.resume_flag_given and "resume_flag" in previous.run_config:
            recorded_flag = previous.run_config.get("resume_flag")
            self.config.resume_flag = recorded_flag if isinstance(recorded_flag, str) and recorded_flag else None
        recorded_probe = previous.run_config.get("user_probe")
        if self.config.user_probe is None and isinstance(recorded_probe, str) and recorded_probe:
            self.config.user_probe = recorded_probe  # a script's --probe goes with its run
        if is_script(accepted.worker_module):
            return self._reuse_recorded_script(accepted, base)
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
            self.reused_line = f"{given}: reusing the previous run's {' '.join(said)}"
        return accepted

    def _reuse_recorded_script(self, accepted: policy.RecordedRun, recorded_cwd: Path) -> policy.RecordedRun:
        """The run is a script's (``-- SCRIPT.py``): a plain ``gpt2sup run`` relaunches that script
        with its arguments, from the directory it was started in (its relative paths, its own
        ``log/``, are relative to that), so its checkpoints land where they did."""
        if self.config.worker_module_given or self.config.worker_args:
            return accepted  # a script or arguments were given: those are the run now
        self.config.worker_module = accepted.worker_module
        self.config.worker_args = list(accepted.worker_args)
        if recorded_cwd.is_dir():
            self.config.cwd = recorded_cwd
        self.reused_line = (f"no script given: reusing the previous run's {shlex.join([accepted.worker_module, *accepted.worker_args])}"
                            f" (in {self.config.cwd})")
        return accepted

    def _unreadable_line(self, why: str) -> str:
        return messages.record_unreadable(self.run_dir.supervisor_state, why, self.run_dir.root,
                                          messages.run_command(self.run_dir.root, self.config.cwd))

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
            self.journal.event(EventKind.WARNING, messages.not_touching(survey.left_alone),
                               pids=sorted(survey.left_alone))
        if not survey.orphans:
            return
        report = stop_orphans(survey, self.run_dir.root, kill_grace_s=self.config.kill_grace,
                              stop_timeout_s=self._stop_timeout(), stop_forced=lambda: self.stops.forced,
                              wait=self.stops.sleep)
        self.journal.event(EventKind.ORPHANS_KILLED, messages.orphans_stopped(report.forced, report.pids, previous.pid),
                           pids=report.pids, forced=report.forced,
                           survivors=report.survivors, seconds=round(report.seconds, 2))

    def _stop_timeout(self) -> float:
        """``policy.stop_allowance`` before any attempt: only the newest checkpoint's size is known."""
        newest = self.run_dir.newest_checkpoint()
        seen = policy.Measurements(newest_checkpoint_bytes=newest.size if newest else None)
        return policy.stop_allowance(policy.phase_timeouts(self.config.timeouts, seen), self.config.stop_timeout)
