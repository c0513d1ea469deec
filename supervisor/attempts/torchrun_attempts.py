"""``TorchrunAttempts``: launch one torchrun attempt and watch it until it ends, however it ends.

Watching means: read every rank's heartbeat each interval (keeping the last good one when a read
fails), name a hung rank when its heartbeat is older than its phase's timeout, capture evidence
and kill the tree, forward a stop request, and when torchrun exits, classify the exit and word
the reason. What to do next is the cycle's business (``run_loop``), decided by ``policy``.
"""
from __future__ import annotations

import dataclasses
import os
import secrets
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import psutil

from shared.heartbeat import Heartbeat
from shared.run_dir import CheckpointNaming, RunDir
from shared.supervisor_state import ProcessRecord
from shared.vocabulary import EventKind, OutcomeKind, RankStatus, SupervisorStateName
from supervisor import messages, policy
from supervisor.attempts import torchrun
from supervisor.attempts.attempt import AttemptResult
from supervisor.attempts.evidence import capture_hang_evidence
from supervisor.attempts.heartbeat_reader import HeartbeatReader
from supervisor.attempts.memory_cgroup import OomWatch
from supervisor.attempts.process_tree import (
    DeathWatch,
    KillReport,
    LaunchedTree,
    is_alive,
    kill_tree,
    launch,
    send_signal,
)
from supervisor.attempts.process_tree import is_stopped as process_stopped
from supervisor.attempts.restart_timing import (
    RestartTimeline,
    breakdown,
    describe,
    first_step_reached,
    latest_milestones,
    on_supervisor_clock,
)
from supervisor.attempts.silence import SilenceWatch
from supervisor.checkpoints.disk_guard import DiskGuard
from supervisor.journal import Journal
from supervisor.run_config import RunConfig
from supervisor.stop_signals import StopSignals, clear_stop_request, mark_stop_request

# After torchrun exits, how long stray descendants get before the tree is killed.
EXIT_STRAGGLER_GRACE_S = 2.0
REPORT_EVERY_S = 2.0
MEMORY_TIGHT_FRACTION = 0.03
MEMORY_TIGHT_MEMORY_S = 15.0
# A poll this late (and at least 10 monitor intervals late) means the supervisor itself was not
# running: SIGSTOPped, a suspended VM, a starved host. Worth a line: everything it times jumped.
SCHEDULING_GAP_S = 5.0
# After a rank died, torchrun stops the others, prints its failure summary ("Root Cause") and then
# spends seconds tearing down its own interpreter. The summary is all we need from it: once it is
# in the log, the tree is killed. Until then the loop polls this often instead of every interval.
TEARDOWN_POLL_S = 0.05
TORCHRUN_SUMMARY_MARK = "Root Cause"
# Two wall clocks this close count as agreeing (a beat is first seen up to a poll after it was written).
CLOCKS_AGREE_S = 2.0
TORCHRUN_FAILED_EXIT = 1  # what torchrun exits with after a rank failed (ChildFailedError)


def process_running(pid: int) -> bool:
    """Alive and not a zombie (an exited child torchrun has not reaped yet)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def process_records(tree: LaunchedTree | None) -> list[ProcessRecord]:
    if tree is None:
        return []
    return [ProcessRecord(pid=ident.pid, create_time=ident.create_time, role=role) for ident, role in tree.identities()]


def new_attempt_id(number: int) -> str:
    """Unique per launch: this supervisor, the attempt number, and a random part (a supervisor
    restarted on the same directory counts its attempts again)."""
    return f"{os.getpid()}-{number}-{secrets.token_hex(4)}"


@dataclass
class _Live:
    """What is known about the attempt being watched."""

    tree: LaunchedTree
    heartbeats: HeartbeatReader  # the ranks' beats as this attempt sees them
    oom: OomWatch | None = None  # the OOM counters of the ranks' (and our) memory cgroups
    stop_sent_at: float | None = None
    stop_requests_noted: int = 0  # plain stop requests already acknowledged in the journal
    workers_started_at: float | None = None  # when torchrun's ranks were first seen
    stragglers: set[int] = field(default_factory=set)  # ranks announced as stragglers, until they recover
    deaths: DeathWatch | None = None  # wakes the loop the moment a rank process exits
    ranks: list[psutil.Process] = field(default_factory=list)  # torchrun's children, as last seen
    died_at: float | None = None  # the first rank's death (or a hung rank's last beat): restart_breakdown
    noticed_at: float | None = None  # when this supervisor knew
    slow_hosts: set[str] = field(default_factory=set)  # hosts announced as slow nodes
    silence: SilenceWatch | None = None  # a script without heartbeats: when its output or files last changed

    @property
    def reader(self) -> HeartbeatReader:
        return self.heartbeats

    @property
    def attempt_id(self) -> str:
        return self.reader.attempt_id

    @property
    def beats(self) -> dict[int, Heartbeat]:
        """The last GOOD heartbeat per rank of this attempt."""
        return self.reader.beats

    @property
    def peers(self) -> dict[int, Heartbeat]:
        """Multi-node, one shared directory: the other nodes' ranks' last beats (theirs to judge;
        compared with ours only to find stragglers)."""
        return self.reader.peers

    @property
    def last_step(self) -> int | None:
        return self.reader.last_step

    def silent_s(self, rank: int, now: float | None = None) -> float:
        return self.reader.silent_s(rank, now)

    def beat_wall_time(self, rank: int) -> float:
        return self.reader.beat_wall_time(rank)

    def elapsed_s(self) -> float:
        return max(0.0, time.monotonic() - self.tree.launched_mono)


class NewCheckpoints(Protocol):
    """Told of each new checkpoint as the ranks write it (the warm validator of
    ``supervisor.checkpoints.background_validation``)."""

    def offer(self, newest: str | None, in_flight: set[str]) -> None: ...


class TorchrunAttempts:
    """The real ``Attempts``: one torchrun per call to ``run``."""

    def __init__(self, config: RunConfig, run_dir: RunDir, journal: Journal, stops: StopSignals,
                 disk: DiskGuard, peer_ended: Callable[[], str | None] | None = None,
                 validator: NewCheckpoints | None = None) -> None:
        self.config = config
        # Multi-node: why another node ended the run (its give_up.json), checked every poll.
        self.peer_ended = peer_ended
        self.run_dir = run_dir
        self.journal = journal
        self.stops = stops
        self.disk = disk
        self.pace = policy.StepPaceTracker()
        self.slowest_save_s: float | None = None
        self.slowest_eval_s: float | None = None
        self.timeouts = policy.phase_timeouts(config.timeouts, policy.Measurements())
        self._memory_tight_at: float | None = None
        self._last_report = 0.0
        # The restart being timed (run_loop fills validation and backoff); its restart_breakdown
        # event is written once every relaunched rank has done its first step.
        self.timeline: RestartTimeline | None = None
        self.validator = validator  # offered each new checkpoint while training goes on
        self._pending_breakdown: RestartTimeline | None = None

    # -- timeouts --------------------------------------------------------------------------------
    def refresh_timeouts(self) -> dict[str, float]:
        """Recompute the timeouts in force from what was measured; record them when they change."""
        seen = policy.Measurements(self.pace.slowest_step_s, self.slowest_save_s, self.slowest_eval_s,
                                   self.disk.newest_size)
        timeouts = policy.phase_timeouts(self.config.timeouts, seen)
        if timeouts != self.timeouts or not self.journal.state or not self.journal.state.phase_timeouts:
            self.timeouts = timeouts
            if self.journal.state is not None:
                self.journal.save_state(phase_timeouts={str(k): round(v, 1) for k, v in timeouts.items()})
        return {str(k): v for k, v in timeouts.items()}

    def stop_timeout(self) -> float:
        """``policy.stop_allowance`` with the timeouts in force (measured so far)."""
        return policy.stop_allowance(self.timeouts, self.config.stop_timeout)

    # -- one attempt -----------------------------------------------------------------------------
    def time_recovery(self, *, validation_s: float | None = None, backoff_s: float | None = None) -> None:
        if self.timeline is None:
            return
        if validation_s is not None:
            self.timeline.validation_s = validation_s
        if backoff_s is not None:
            self.timeline.backoff_s = backoff_s

    def run(self, number: int) -> AttemptResult:
        log_path = self.run_dir.attempt_log(number)
        # A script's resume flag only when there is something to resume (a script may refuse it
        # on an empty directory); gpt2sup's worker always gets --auto_resume.
        argv = torchrun.build_command(self.config, resume=self.run_dir.newest_checkpoint() is not None)
        clear_stop_request(self.run_dir.stop_request)
        oom = OomWatch()
        oom.learn([os.getpid()])  # our own cgroup (a SLURM job's, a pod's): the ranks start in it
        attempt_id = new_attempt_id(number)
        at_launch = HeartbeatReader.on_disk(self.run_dir)
        try:
            tree = launch(argv, cwd=self.config.cwd, env=torchrun.build_env(self.config, attempt_id=attempt_id),
                          log_path=log_path)
        except OSError as exc:
            reason = messages.could_not_launch(argv[0], str(exc.strerror or exc))
            self.journal.event(EventKind.CRASHED, reason)
            return AttemptResult(policy.Outcome(OutcomeKind.PERMANENT), reason, 0.0, cause=reason)
        self.pace.reset_attempt()
        self.journal.save_state(state=SupervisorStateName.RUNNING, processes=process_records(tree))
        self.journal.event(
            EventKind.LAUNCHED,
            messages.launched(number, tree.pid, self.config.nproc_per_node, str(log_path.relative_to(self.run_dir.root))),
            pid=tree.pid, argv=argv,
        )
        live = _Live(tree, HeartbeatReader(self.run_dir, attempt_id, at_launch), oom,
                     deaths=DeathWatch(self.stops.wake))
        if self.config.runs_script:
            # Measured against what is there now: launch() just created the console log, and
            # torchrun needs seconds (import torch) before anything of the script's can appear.
            live.silence = SilenceWatch.at_launch(log_path, self.run_dir.root)
        if self.timeline is not None:
            self.timeline.launched_at = tree.launched_at
            self._pending_breakdown, self.timeline = self.timeline, None
        try:
            result = self._watch(live)
        except BaseException:
            # The supervisor itself failed: never leave the workers running without a watcher.
            kill_tree(tree.live_processes(), grace_s=self.config.kill_grace, reap=tree.popen)
            raise
        finally:
            live.deaths.close()
            self.journal.save_state(processes=[])
        self._pending_breakdown = None  # the relaunch ended before its first step: nothing to break down
        if result.outcome.is_failure:
            now = time.time()
            noticed = live.noticed_at if live.noticed_at is not None else now
            self.timeline = RestartTimeline(died_at=min(live.died_at, noticed) if live.died_at is not None else noticed,
                                            noticed_at=noticed, stopped_at=now)
        return result

    def _watch(self, live: _Live) -> AttemptResult:
        last_poll = time.monotonic()
        while True:
            gap, last_poll = time.monotonic() - last_poll, time.monotonic()
            if gap > max(10 * self.config.monitor_interval, SCHEDULING_GAP_S):
                self.journal.event(EventKind.WARNING, messages.not_scheduled(gap), gap_s=round(gap, 1))
            code = self._observe_tree(live)
            self._read_heartbeats(live)
            if code is None and self._agent_unresponsive(live, hang_found=False):
                return self._end_for_agent(live)
            self._watch_memory()
            self.refresh_timeouts()
            if code is not None:
                return self._on_exit(live, code)
            ended = self._end_while_running(live)
            if ended is not None:
                return ended
            self._between_polls(live)
            self.stops.sleep(TEARDOWN_POLL_S if live.noticed_at is not None else self.config.monitor_interval)

    def _observe_tree(self, live: _Live) -> int | None:
        """One poll of the process tree: torchrun's exit code (or, once a rank died and torchrun's
        summary is out, the code to classify), else None; refreshes the ranks and OOM bookkeeping."""
        code = live.tree.poll()
        if live.tree.refresh():
            self.journal.save_state(processes=process_records(live.tree))
            # torchrun's children, the ranks (not their helpers: a compile worker that ends is no death)
            live.ranks = live.tree.worker_processes()
            if live.deaths is not None:
                live.deaths.track(live.ranks)
        if live.oom is not None:  # each poll, while they live: a killed rank's /proc entry is gone
            live.oom.learn([p.pid for p in live.ranks])
        if code is None:
            code = self._cut_teardown(live)
        return code

    def _end_while_running(self, live: _Live) -> AttemptResult | None:
        """How a running attempt ends now: a peer node ended, a stop forced, or a hang; else None."""
        ended = self.peer_ended() if self.peer_ended is not None else None
        if ended is not None:
            return self._stop_for_peer(live, ended)
        if self.stops.count:
            return self._forward_stop(live)
        return self._detect_hang(live)

    def _between_polls(self, live: _Live) -> None:
        """Disk check, journal flush (space may be back), the periodic progress line, the breakdown."""
        self.disk.check()
        self.journal.flush()  # space may be back: what waits in memory goes out now
        if time.monotonic() - self._last_report >= REPORT_EVERY_S:
            self._last_report = time.monotonic()
            self.journal.show_progress()
        self._maybe_write_breakdown(live)

    # -- a rank died: torchrun tears the group down --------------------------------------------------
    def _cut_teardown(self, live: _Live) -> int | None:
        """A rank is gone while torchrun still runs: note when, and once torchrun's failure summary
        is in the log, kill the tree instead of waiting seconds for torchrun's own exit.

        Returns the exit code to classify (torchrun's, as if it had exited) or None to keep
        watching. Ranks that exit 0 (finished, stopped) print no summary: torchrun ends them as
        always. The summary names every rank's exit, so the classification is unchanged.
        """
        if live.noticed_at is None:
            first = live.deaths.first_death if live.deaths is not None else None
            if first is None:
                if not live.ranks or all(is_alive(p) for p in live.ranks):
                    return None
                live.noticed_at = time.time()  # no pidfd: seen by this poll
                live.died_at = live.noticed_at
            else:
                live.died_at, live.noticed_at = first[1], time.time()
        if TORCHRUN_SUMMARY_MARK not in torchrun.read_log_tail(live.tree.log_path, 16 * 1024):
            return None
        code = live.tree.poll()
        if code is not None:
            return code
        self._check_survivors(kill_tree(live.tree.live_processes(), grace_s=0.0, reap=live.tree.popen))
        return TORCHRUN_FAILED_EXIT

    def _maybe_write_breakdown(self, live: _Live) -> None:
        """One ``restart_breakdown`` event once every relaunched rank has done its first step."""
        pending = self._pending_breakdown
        if pending is None or pending.launched_at is None or not live.beats:
            return
        if len(live.beats) < self.config.nproc_per_node:
            return
        startups = [on_supervisor_clock(beat.startup, self._clock_offset(live, rank, beat))
                    for rank, beat in live.beats.items()]
        if not first_step_reached(startups, pending.launched_at):
            return
        self._pending_breakdown = None
        phases = breakdown(pending, latest_milestones(startups, pending.launched_at))
        self.journal.event(EventKind.RESTART_BREAKDOWN, describe(phases), phases=phases)

    def _clock_offset(self, live: _Live, rank: int, beat: Heartbeat) -> float:
        """How far rank's wall clock runs ahead of this supervisor's, measured by its newest beat
        (its own time against when it was first seen here); 0 while the two agree within a poll
        and a little (the measure itself is late by up to a poll), so agreeing clocks are never
        "corrected"."""
        offset = beat.time - live.beat_wall_time(rank)
        return offset if abs(offset) > self.config.monitor_interval + CLOCKS_AGREE_S else 0.0

    def _read_heartbeats(self, live: _Live) -> None:
        """Read the ranks' beats (``HeartbeatReader.read``: the last good one kept per rank, tied
        to this attempt by its id, aged on this supervisor's own clock), then what the beats tell:
        the slowest save and eval, the step pace, a new checkpoint to validate, stragglers."""
        for rank in live.reader.read(lambda hb: self._another_nodes(hb, live)):
            self.journal.event(EventKind.WARNING, messages.heartbeat_unreadable(rank), rank=rank)
        for hb in live.beats.values():
            self.slowest_save_s = policy.slowest(self.slowest_save_s, hb.save_seconds)
            self.slowest_eval_s = policy.slowest(self.slowest_eval_s, hb.eval_seconds)
        if live.beats:
            lead = live.beats[min(live.beats)]
            # The rank's own monotonic clock times its steps (differences within one process only).
            own_clock = lead.mono if lead.mono is not None else lead.time
            self.pace.observe(lead.step, own_clock, lead.phase)
            if self.validator is not None:  # validate each new checkpoint while training goes on
                named = [b.last_checkpoint for b in live.beats.values() if b.last_checkpoint]
                writing = {b.save_in_flight or "" for b in live.beats.values()}
                newest = _newest_by_step(named, self.run_dir.naming())
                self.validator.offer(newest, writing)
        elif self.validator is not None and self.config.runs_script:
            # No heartbeat names a checkpoint: the newest one on disk is offered (the validator
            # waits until its size and mtime hold still, so a file being written is not read).
            newest = self.run_dir.newest_checkpoint()
            self.validator.offer(newest.path.name if newest is not None else None)
        self._note_stragglers(live)

    def _another_nodes(self, hb: Heartbeat, live: _Live) -> bool:
        """Multi-node, the directory shared by the nodes: a rank not in our torchrun's tree (global
        ranks are per run, not per node, and c10d can move them between nodes at every attempt)."""
        if self.config.multi_node is None:
            return False
        if hb.hostname is not None and hb.hostname != socket.gethostname():
            return True
        return hb.pid not in live.tree.known

    def _note_stragglers(self, live: _Live) -> None:
        """One ``straggler`` event when a rank becomes one; another only after it recovered.

        Detection only: a slow rank is not a hang and nothing is killed for it. With the nodes'
        ranks in one shared directory every rank is compared with every other; node 0 announces
        another node's ranks and whole slow hosts, the others only their own ranks.
        """
        every = {**live.peers, **live.beats}
        samples = {rank: beat.compute_s for rank, beat in every.items()
                   if beat.compute_s is not None and beat.status == RankStatus.RUNNING}
        found = policy.find_stragglers(samples, flagged=live.stragglers)
        announces_all = self.config.is_node_zero
        if announces_all and live.peers:
            self._note_slow_hosts(live, samples, every)
        for straggler in found:
            if straggler.rank not in live.stragglers and (announces_all or straggler.rank in live.beats):
                host = every[straggler.rank].hostname
                self.journal.event(EventKind.STRAGGLER, straggler.describe(host), rank=straggler.rank,
                                   hostname=host, median_s=round(straggler.median_s, 6),
                                   others_median_s=round(straggler.others_median_s, 6),
                                   ratio=round(straggler.ratio, 3), step=every[straggler.rank].step)
        live.stragglers = {straggler.rank for straggler in found}

    def _note_slow_hosts(self, live: _Live, samples: dict[int, list[float]], every: dict[int, Heartbeat]) -> None:
        """A whole node slower than the others (every rank of it): one ``straggler`` event per host."""
        slow = policy.find_slow_hosts(samples, {rank: beat.hostname for rank, beat in every.items()})
        for host, (own, others) in slow.items():
            if host not in live.slow_hosts:
                self.journal.event(EventKind.STRAGGLER, messages.slow_node(host, own, others), hostname=host, median_s=round(own, 6), others_median_s=round(others, 6),
                                   ratio=round(own / others, 3), whole_node=True)
        live.slow_hosts = set(slow)

    def _watch_memory(self) -> None:
        vm = psutil.virtual_memory()
        if vm.total and vm.available / vm.total < MEMORY_TIGHT_FRACTION:
            self._memory_tight_at = time.monotonic()

    # -- a stop request ----------------------------------------------------------------------------
    def _forward_stop(self, live: _Live) -> AttemptResult | None:
        """First request: ask the workers to save and exit. A repeated plain request is noted and
        changes nothing; a forced one (``policy.stop_is_forced``) or the stop timeout: kill."""
        tree = live.tree
        if live.stop_sent_at is None:
            live.stop_sent_at = time.monotonic()
            workers = tree.worker_processes()
            self.journal.save_state(state=SupervisorStateName.STOPPING)
            asked_by = self.stops.names[0] if self.stops.names else None  # SIGINT, SIGTERM or SIGHUP
            if workers:
                # ours, not torchrun's teardown; for this attempt (its ranks match the id, not a time)
                mark_stop_request(self.run_dir.stop_request, asked_by, live.attempt_id)
                send_signal(workers, signal.SIGTERM)
                self.journal.event(EventKind.STOP_REQUESTED,
                                   messages.stop_forwarded(asked_by, len(workers), self.config.runs_script),
                                   pids=[p.pid for p in workers], signal=asked_by)
            else:
                self.journal.event(EventKind.STOP_REQUESTED, messages.stop_before_workers(asked_by), signal=asked_by)
                kill_tree(tree.live_processes(), grace_s=self.config.kill_grace, reap=tree.popen)
            live.stop_requests_noted = self.stops.count
            if not self.stops.forced:
                return None
        forced = self.stops.forced
        if not forced and self.stops.count > live.stop_requests_noted:
            live.stop_requests_noted = self.stops.count
            self.journal.event(EventKind.STOP_REQUESTED, messages.stop_repeated(self.stops.names[-1]),
                               signal=self.stops.names[-1])
        if not forced and time.monotonic() - live.stop_sent_at <= self.stop_timeout():
            return None  # repeated plain requests change nothing: the save is under way
        why = policy.forced_stop_reason(self.stops.names) if forced else "stop timeout"
        self.journal.event(EventKind.STOP_REQUESTED, messages.killing_tree(why))
        self._check_survivors(kill_tree(tree.live_processes(), grace_s=min(self.config.kill_grace, 2.0),
                                        reap=tree.popen))
        return AttemptResult(policy.Outcome(OutcomeKind.STOPPED), f"forced ({why})",
                             live.elapsed_s(), live.last_step, attempt_id=live.attempt_id)

    def _stop_for_peer(self, live: _Live, why: str) -> AttemptResult:
        """Another node ended the run: this attempt can never complete (its rendezvous or its
        collectives wait for that node), so kill it now rather than after a timeout."""
        self.journal.event(EventKind.STOP_REQUESTED, messages.killing_for_peer(why, self.journal.attempt))
        self._check_survivors(kill_tree(live.tree.live_processes(), grace_s=min(self.config.kill_grace, 2.0),
                                        reap=live.tree.popen))
        return AttemptResult(policy.Outcome(OutcomeKind.STOPPED), why, live.elapsed_s(), live.last_step)

    # -- a hang ----------------------------------------------------------------------------------
    def _detect_hang(self, live: _Live) -> AttemptResult | None:
        now = time.monotonic()  # every time here is this supervisor's own monotonic clock
        if not live.beats and live.silence is not None:
            return self._detect_silence(live, now)
        if not live.beats:
            if live.workers_started_at is None and live.tree.worker_processes():
                live.workers_started_at = now
            if policy.startup_timed_out(live.tree.launched_mono, live.workers_started_at, now, False,
                                        self.config.timeouts):
                reason = messages.startup_timeout(self.config.timeouts.startup_timeout,
                                                  live.workers_started_at is not None)
                return self._kill_hung(live, OutcomeKind.STARTUP_TIMEOUT, reason, rank=None, step=None)
            return None
        rank_beats = [policy.RankBeat(rank=r, phase=b.phase, time=live.reader.seen[r].at, status=b.status, step=b.step)
                      for r, b in live.beats.items()]
        hung = policy.find_hung_rank(rank_beats, now, self.timeouts)
        if hung is None:
            return None
        if live.tree.poll() is None and self._agent_unresponsive(live, hang_found=True):
            return self._end_for_agent(live)  # the ranks are gone: it is torchrun that does not end
        # Only now pay for process states: a stopped (SIGSTOP / T state) rank is the culprit, and
        # a rank that already exited is a crash torchrun is about to report.
        stopped = [r for r, b in live.beats.items() if process_stopped(b.pid)]
        exited = [r for r, b in live.beats.items() if not process_running(b.pid)]
        if stopped or exited:
            hung = policy.find_hung_rank(rank_beats, now, self.timeouts, stopped, exited)
            if hung is None:
                return None
        return self._kill_hung(live, OutcomeKind.HUNG, hung.describe(), rank=hung.rank, step=hung.step)

    def _detect_silence(self, live: _Live, now: float) -> AttemptResult | None:
        """A script that writes no heartbeats (none yet: one using gpt2sup's client is judged by
        its beats once they come), with an explicit ``--hang-timeout``: hung once its output and
        files (``attempts.silence``) are still that long after its first sign of life; before that,
        the start-up allowance, as for a worker's first heartbeat. No timeout given: never."""
        assert live.silence is not None
        timeouts = self.config.timeouts
        if timeouts.hang_timeout is None:
            return None
        if live.workers_started_at is None and live.tree.worker_processes():
            live.workers_started_at = now
        last_change = live.silence.observe(now)
        if last_change is None:
            if policy.startup_timed_out(live.tree.launched_mono, live.workers_started_at, now, False, timeouts):
                reason = messages.script_startup_timeout(timeouts.startup_timeout, live.workers_started_at is not None)
                return self._kill_hung(live, OutcomeKind.STARTUP_TIMEOUT, reason, rank=None, step=None)
            return None
        verdict = policy.silent_too_long(last_change, now, timeouts.hang_timeout)
        if verdict is None:
            return None
        if live.tree.poll() is None and self._agent_unresponsive(live, hang_found=True):
            return self._end_for_agent(live)
        return self._kill_hung(live, OutcomeKind.HUNG, verdict.describe(), rank=None, step=None)

    def _kill_hung(self, live: _Live, kind: OutcomeKind, reason: str, rank: int | None,
                   step: int | None) -> AttemptResult:
        tree = live.tree
        beat = live.beats.get(rank) if rank is not None else None
        live.noticed_at = time.time()
        last_beat = live.beat_wall_time(rank) if beat is not None and rank is not None else None
        live.died_at = last_beat if last_beat is not None else live.noticed_at
        self.journal.event(EventKind.HUNG, messages.in_attempt(self.journal.attempt, reason), rank=rank, step=step,
                           kind=kind, last_beat_time=last_beat)
        live_pids = {p.pid for p in tree.live_processes()}
        worker_pids = {r: b.pid for r, b in live.beats.items() if b.pid in live_pids}
        if not worker_pids:
            worker_pids = {i: p.pid for i, p in enumerate(tree.worker_processes())}
        incident = self.run_dir.incident_dir(self.run_dir.next_incident_number())
        evidence = capture_hang_evidence(
            incident, worker_pids=worker_pids, attempt_log=tree.log_path,
            summary={"attempt": self.journal.attempt, "kind": kind, "reason": reason, "rank": rank, "step": step,
                     "heartbeats": {str(r): b.to_dict() for r, b in live.beats.items()}},
        )
        where = str(incident.relative_to(self.run_dir.root))
        self.journal.event(EventKind.EVIDENCE_CAPTURED,
                           messages.evidence_captured(where, len(evidence.files), evidence.duration_s),
                           incident=where, files=sorted(evidence.files), errors=evidence.errors)
        self._check_survivors(kill_tree(tree.live_processes(), grace_s=self.config.kill_grace, reap=tree.popen))
        return AttemptResult(policy.Outcome(kind, rank=rank), reason, live.elapsed_s(),
                             step if step is None or step >= 0 else None)

    def _agent_unresponsive(self, live: _Live, hang_found: bool) -> bool:
        alive = sum(is_alive(p) for p in live.ranks)
        if not live.ranks or alive:  # the usual case, without asking for torchrun's state
            return False
        return policy.agent_unresponsive(len(live.ranks), alive, process_stopped(live.tree.pid), hang_found)

    def _end_for_agent(self, live: _Live) -> AttemptResult:
        """torchrun itself stopped responding after every rank it started had exited (SIGSTOPped,
        traced, wedged): it will never report or exit. Name it, kill the tree, and end by what the
        ranks said: a run whose ranks finished with a valid final checkpoint on disk is finished
        (no training restart is spent on it); anything else is torchrun's failure, restarted as a
        crash with torchrun named as the cause."""
        tree = live.tree
        stopped = process_stopped(tree.pid)
        why = messages.agent_unresponsive(tree.pid, stopped, live.elapsed_s())
        self.journal.event(EventKind.WARNING, messages.in_attempt(self.journal.attempt, f"{why}: killing it"), pid=tree.pid,
                           stopped=stopped)
        self._check_survivors(kill_tree(tree.live_processes(), grace_s=0.0, reap=tree.popen))
        self._read_heartbeats(live)
        ended = self._ranks_ended_cleanly(live.beats, _newest_named_checkpoint(live.beats, self.run_dir.naming()), len(live.ranks))
        return self._on_exit(live, 0 if ended else TORCHRUN_FAILED_EXIT, agent_cause=why)

    def _ranks_ended_cleanly(self, beats: dict[int, Heartbeat], final: str | None, ranks_known: int) -> bool:
        """Every rank's last heartbeat says it ended as it meant to: all ``finished`` with the
        final checkpoint they named valid (probed only then), or all ``stopped``."""
        statuses = [b.status for b in beats.values()]
        finished = bool(statuses) and all(s == RankStatus.FINISHED for s in statuses)
        saved = finished and final is not None and self._final_checkpoint_valid(final)
        return policy.ranks_ended_cleanly(statuses, ranks_known, saved)

    def _final_checkpoint_valid(self, name: str) -> bool:
        """The final checkpoint a finished rank named passes validation (node 0 only writes it)."""
        if not self.config.is_node_zero:
            return True
        from supervisor.checkpoints.checkpoint_validation import (
            probe_command_for,
            validate_checkpoint,
        )

        path = self.run_dir.root / name
        return path.is_file() and validate_checkpoint(path, probe_timeout=self.config.probe_timeout,
                                                      generic=self.config.runs_script,
                                                      command=probe_command_for(self.config)).ok

    def _check_survivors(self, report: KillReport) -> None:
        if report.survivors:
            self.journal.event(EventKind.INTERNAL_ERROR, messages.survived_sigkill(report.survivors),
                               pids=report.survivors)

    # -- an exit ---------------------------------------------------------------------------------
    def _on_exit(self, live: _Live, code: int, agent_cause: str | None = None) -> AttemptResult:
        read = self._read_exit(live, code)
        if code != 0 and agent_cause is None and self._ranks_ended_cleanly(read.beats, read.final_checkpoint,
                                                                          len(live.ranks)):
            # Every rank had finished (final checkpoint valid) or stopped, then one died on its
            # way out (gloo's teardown aborts now and then): the run's work is done and on disk.
            # A restart would only resume from that checkpoint and fail the same way.
            first = read.facts.rank_exits[0] if read.facts.rank_exits else None
            self.journal.event(EventKind.WARNING,
                               messages.in_attempt(self.journal.attempt, messages.died_in_teardown(first, code)),
                               teardown_exit=code, rank=first.rank if first else None)
            read, code = read.cleared(), 0
        outcome = policy.classify_exit(read.facts)
        failing = _failing_rank(read.beats, outcome, code)
        step = _last_completed_step(failing, live)
        step_known = step is not None or not self.config.runs_script
        if not step_known and read.final_checkpoint:  # a script: its newest checkpoint's step is what is known
            step = self.run_dir.naming().step_of(read.final_checkpoint)
        message = failing.message if failing is not None and failing.status != RankStatus.RUNNING else None
        evidence = policy.ExitEvidence(
            returncode=code, stop_requested=read.facts.stop_requested,
            failing_summary=messages.first_line(message),
            torchrun_error=torchrun.error_line(read.log_text) if code != 0 else None,
            rendezvous_closed=code != 0 and not read.beats and torchrun.rendezvous_closed(read.log_text),
            agent_cause=agent_cause,
            stop_summary=messages.first_line(next((b.message for b in read.beats.values()
                                                   if b.status == RankStatus.STOPPED and b.message), None)),
        )
        described = policy.describe_exit(outcome, evidence)
        result = AttemptResult(outcome, described.reason or "", live.elapsed_s(), step, message=message,
                               cause=described.cause,
                               bad_checkpoint=failing.bad_checkpoint if failing is not None else None,
                               last_checkpoint=read.final_checkpoint, rendezvous_closed=evidence.rendezvous_closed)
        if not outcome.is_failure:
            return result
        result.reason = messages.attempt_failure(outcome, step, described.cause, step_known)
        self.journal.event(
            EventKind.CRASHED, messages.in_attempt(self.journal.attempt, result.reason),
            kind=outcome.kind, exit_code=outcome.exit_code,
            signal=messages.signal_name(outcome.signal) if outcome.signal else None,
            rank=outcome.rank, step=step, torchrun_exit=code,
            last_beat_time=live.beat_wall_time(failing.rank) if failing is not None else None,
        )
        return result

    def _read_exit(self, live: _Live, code: int) -> _ExitRead:
        """The I/O after torchrun exited: end what is left of its tree, read the last heartbeats,
        torchrun's log and whether the final checkpoint is on disk, as ``policy.ExitFacts``."""
        tree = live.tree
        # torchrun is gone; anything left of its tree (a reparented worker) goes too.
        leftovers = tree.live_processes()
        if leftovers:
            psutil.wait_procs(leftovers, timeout=EXIT_STRAGGLER_GRACE_S)
            self._check_survivors(kill_tree(tree.live_processes(), grace_s=self.config.kill_grace, reap=tree.popen))
        self._read_heartbeats(live)
        log_text = torchrun.read_log_tail(tree.log_path)
        beats = live.beats
        # The writer's heartbeat names the final checkpoint: global rank 0, or node 0's local rank 0
        # in a multi-node run (the worker's choose_leader). Another node's directory holds no
        # checkpoint; its workers exit 7 on every rank if the writer's final save failed.
        final = _newest_named_checkpoint(beats, self.run_dir.naming())
        if final is None and self.config.runs_script:
            newest = self.run_dir.newest_checkpoint()  # no heartbeat names one: the newest on disk
            final = newest.path.name if newest is not None else None
        writes_checkpoints = self.config.is_node_zero
        facts = policy.ExitFacts(
            returncode=code,
            statuses=[b.status for b in beats.values()],
            rank_exits=torchrun.parse_rank_exits(log_text) if code != 0 else (),
            oom_kill_observed=live.oom is not None and live.oom.kills_since_start(),
            memory_was_tight=self._memory_tight_at is not None
            and time.monotonic() - self._memory_tight_at < MEMORY_TIGHT_MEMORY_S,
            stop_requested=live.stop_sent_at is not None or self.stops.count > 0,
            module_missing=code != 0 and not self.config.runs_script
            and torchrun.module_missing(log_text, self.config.worker_module),
            final_checkpoint_on_disk=not writes_checkpoints or self.config.runs_script
            or (bool(final) and (self.run_dir.root / str(final)).is_file()),
            worker_exit_codes=not self.config.runs_script,
            reports=[policy.RankReport(r, b.status, b.time, b.step) for r, b in beats.items()],
        )
        return _ExitRead(facts, beats, log_text, final)


@dataclass(frozen=True)
class _ExitRead:
    """What ``_read_exit`` gathered: the facts to classify, and what explains them."""
    facts: policy.ExitFacts
    beats: dict[int, Heartbeat]
    log_text: str
    final_checkpoint: str | None  # the newest checkpoint the writer's heartbeat names

    def cleared(self) -> _ExitRead:
        """The same read as a clean exit: what ended it was the workers' teardown, not the run."""
        facts = dataclasses.replace(self.facts, returncode=0, rank_exits=())
        return dataclasses.replace(self, facts=facts)


def _newest_named_checkpoint(beats: dict[int, Heartbeat], naming: CheckpointNaming) -> str | None:
    """The newest checkpoint a heartbeat names: the writer's (global rank 0, or node 0's local
    rank 0 in a multi-node run); another node's ranks name none."""
    return _newest_by_step([b.last_checkpoint for b in beats.values() if b.last_checkpoint], naming)


def _newest_by_step(names: list[str], naming: CheckpointNaming) -> str | None:
    """The name with the highest step (by the run directory's naming); ``None`` for none."""
    return max(names, key=lambda name: naming.step_of(name) or -1) if names else None


def _failing_rank(beats: dict[int, Heartbeat], outcome: policy.Outcome, code: int) -> Heartbeat | None:
    """The heartbeat of the rank the outcome names; torchrun named no rank: its report is lost
    (full disk) or there was no failure."""
    if outcome.rank is not None:
        return beats.get(outcome.rank)
    return _first_to_end(beats) if code != 0 else None


def _first_to_end(beats: dict[int, Heartbeat]) -> Heartbeat | None:
    """The rank whose last beat ended it first, when torchrun named none (its report on a full
    disk is lost): its message is the attempt's cause. Lowest rank on a tie."""
    ended = [b for b in beats.values() if b.status != RankStatus.RUNNING]
    return min(ended, key=lambda b: (b.time, b.rank)) if ended else None


def _last_completed_step(failing: Heartbeat | None, live: _Live) -> int | None:
    """The failing rank's own last completed step, else the furthest any rank got."""
    if failing is not None and failing.step >= 0:
        return failing.step
    return live.last_step
