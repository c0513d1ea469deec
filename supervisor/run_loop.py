"""The Supervisor: launch -> watch -> detect -> capture evidence -> kill -> decide -> validate -> relaunch.

This is the only stateful, time-driven piece of ``gpt2sup run``. It owns no policy (``policy``),
spawns nothing itself (``process_tree``) and judges no checkpoint itself
(``checkpoint_selection``); it sequences them and writes down what happened (supervisor.json,
events.jsonl) so that ``gpt2sup status`` and a human reading the run directory later can follow.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import psutil

from shared.exit_codes import SupervisorExit
from shared.atomic_io import read_file_tail
from shared.heartbeat import Heartbeat, read_heartbeat
from shared.run_dir import RunDir
from shared.supervisor_state import (
    FailureRecord,
    JournalWriter,
    ProcessRecord,
    SupervisorState,
    read_supervisor_state,
)
from supervisor import policy
from supervisor.checkpoint_selection import (
    newest_checkpoint,
    prune_oldest_checkpoints,
    select_checkpoint_for_restart,
)
from supervisor.evidence import capture_hang_evidence, next_incident_number
from supervisor.orphans import find_foreign_trainers, lost_supervisor, stop_orphans, survey_orphans
from supervisor.process_tree import LaunchedTree, is_stopped, kill_tree, launch, own_identity, send_signal
from supervisor.run_lock import RunLock
from supervisor.stop_signals import StopRequested, StopSignals

DEFAULT_WORKER = "worker.train_gpt2"
SUPERVISOR_ENV = "GPT2SUP_SUPERVISOR"
# Heartbeats older than our launch are leftovers of an earlier attempt. No slack: a relaunch can
# follow a crash within milliseconds, and a stale "train" heartbeat would look like a hang.
HEARTBEAT_SLACK_S = 0.0
# After torchrun exits, how long stray descendants get before the tree is killed.
EXIT_STRAGGLER_GRACE_S = 2.0
REPORT_EVERY_S = 2.0
MONITOR_GAP_S = 5.0
DISK_EVERY_S = 5.0
MEMORY_TIGHT_FRACTION = 0.03
MEMORY_TIGHT_MEMORY_S = 15.0
LOG_TAIL_BYTES = 64 * 1024
REASON_LOG_LINES = 3


# ------------------------------------------------------------------------------------------------
# configuration
# ------------------------------------------------------------------------------------------------


@dataclass
class MultiNode:
    nnodes: str
    node_rank: int | None
    rdzv_endpoint: str
    rdzv_id: str
    rdzv_backend: str = "c10d"


@dataclass
class RunConfig:
    log_dir: Path
    cwd: Path
    worker_args: list[str] = field(default_factory=list)
    worker_module: str = DEFAULT_WORKER
    nproc_per_node: int = 1
    multi_node: MultiNode | None = None
    timeouts: policy.TimeoutConfig = field(
        default_factory=lambda: policy.TimeoutConfig(None, 1800.0, 600.0, 1200.0)
    )
    monitor_interval: float = 2.0
    backoff: policy.BackoffConfig = field(default_factory=policy.BackoffConfig)
    limits: policy.RestartLimits = field(default_factory=policy.RestartLimits)
    min_free_disk: int | None = None  # None: derived from the newest checkpoint's size
    prune_on_low_disk: bool = False
    kill_grace: float = 10.0
    stop_timeout: float | None = None  # None: the checkpoint allowance
    probe_timeout: float = 60.0
    workers_outlive_supervisor: bool = False  # True: no GPT2SUP_SUPERVISOR, workers do not watch us
    launcher: list[str] = field(default_factory=lambda: [sys.executable, "-m", "torch.distributed.run"])

    def describe(self) -> dict[str, Any]:
        data = asdict(self)
        data["log_dir"] = str(self.log_dir)
        data["cwd"] = str(self.cwd)
        return data


def build_command(config: RunConfig) -> list[str]:
    """torchrun argv: its own restarts off, one supervisor per node, our worker with auto-resume."""
    argv = list(config.launcher)
    if config.multi_node is None:
        argv += ["--standalone"]
    else:
        mn = config.multi_node
        argv += ["--nnodes", mn.nnodes, "--rdzv-backend", mn.rdzv_backend, "--rdzv-endpoint", mn.rdzv_endpoint,
                 "--rdzv-id", mn.rdzv_id]
        if mn.node_rank is not None:
            argv += ["--node-rank", str(mn.node_rank)]
    argv += ["--nproc-per-node", str(config.nproc_per_node), "--max-restarts", "0"]
    argv += ["-m", config.worker_module, "--auto_resume", "--log_dir", str(config.log_dir)]
    argv += list(config.worker_args)
    return argv


def build_env(config: RunConfig, base: dict[str, str] | None = None) -> dict[str, str]:
    """torchrun forces OMP_NUM_THREADS=1 when unset; give each process its share of the cores."""
    env = dict(os.environ if base is None else base)
    if not env.get("OMP_NUM_THREADS"):
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // max(1, config.nproc_per_node)))
    env.setdefault("PYTHONUNBUFFERED", "1")
    # Workers stop (after saving) when the supervisor named here is gone, so a SIGKILLed
    # supervisor does not leave a trainer running unwatched; opting out removes the name.
    env.pop(SUPERVISOR_ENV, None)
    if not config.workers_outlive_supervisor:
        env[SUPERVISOR_ENV] = own_identity().token
    return env


# ------------------------------------------------------------------------------------------------
# small readers (pure-ish helpers kept here because only the loop uses them)
# ------------------------------------------------------------------------------------------------

_RANK_EXIT_RE = re.compile(r"rank\s*:\s*(\d+)[^\n]*\n\s*exitcode\s*:\s*(-?\d+)")
# torchrun's own chatter, and the worker's routine per-step progress lines: neither says why it died.
_NOISE_RE = re.compile(
    r"torch/distributed/elastic|torch\.distributed\.elastic|^\*+$|^=+$|^\s*$|^step\s+\d+ \| loss "
)


def read_log_tail(path: Path, max_bytes: int = LOG_TAIL_BYTES) -> str:
    return read_file_tail(path, max_bytes)[0].decode("utf-8", errors="replace")


def parse_rank_exits(log_text: str) -> list[policy.RankExit]:
    """(rank, exit code) from torchrun's failure summary, root cause first."""
    marker = log_text.rfind("Root Cause")
    ordered = _RANK_EXIT_RE.findall(log_text[marker:]) if marker >= 0 else []
    if marker >= 0:
        # "Other Failures" precede the root cause in torchrun's summary; add them after it.
        others = _RANK_EXIT_RE.findall(log_text[:marker])
        ordered += others
    else:
        ordered = _RANK_EXIT_RE.findall(log_text)
    seen: set[int] = set()
    out: list[policy.RankExit] = []
    for rank, code in ordered:
        if int(rank) not in seen:
            seen.add(int(rank))
            out.append(policy.RankExit(int(rank), int(code)))
    return out


def meaningful_log_lines(log_text: str, count: int = REASON_LOG_LINES) -> list[str]:
    """The last lines the *worker* printed: torchrun's own traceback and summary cut away."""
    lines = log_text.splitlines()
    cut = len(lines)
    for index in range(len(lines) - 1, -1, -1):
        if lines[index].startswith("Traceback (most recent call last)"):
            following = "\n".join(lines[index + 1 : index + 6])
            if "torch/distributed/run.py" in following or "runpy" in following or "torchrun" in following:
                cut = index
                break
    kept = [line.rstrip() for line in lines[:cut] if not _NOISE_RE.search(line)]
    return [line[:300] for line in kept[-count:]]


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def read_oom_kill_count() -> int | None:
    """The kernel's OOM-kill counter for our cgroup (v2 memory.events or v1 oom_control)."""
    for path in ("/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control"):
        try:
            for line in Path(path).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            continue
    return None


def fresh_heartbeats(run: RunDir, launched_at: float) -> dict[int, Heartbeat]:
    """Heartbeats written by this attempt (older files are leftovers of earlier attempts)."""
    beats: dict[int, Heartbeat] = {}
    for path in run.list_heartbeats():
        hb = read_heartbeat(path)
        if hb is not None and isinstance(hb.time, (int, float)) and hb.time >= launched_at - HEARTBEAT_SLACK_S:
            beats[int(hb.rank)] = hb
    return beats


# ------------------------------------------------------------------------------------------------
# reporting
# ------------------------------------------------------------------------------------------------


class _FallbackReporter:
    """Plain timestamped lines, used only if the dashboard module cannot be imported."""

    def update(self, snapshot: Any) -> None:  # progress is visible in events + status
        return

    def event(self, line: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        print(f"{stamp} {line}", flush=True)

    def close(self) -> None:
        return


def make_default_reporter(is_tty: bool | None = None) -> Any:
    try:
        from supervisor.dashboard import make_reporter

        return make_reporter(is_tty)
    except Exception:  # the panel is a nicety; supervising must go on without it
        return _FallbackReporter()


def _snapshot_or_none(run_dir: Path) -> Any:
    try:
        from supervisor.snapshot import collect_snapshot

        return collect_snapshot(run_dir)
    except Exception:
        return None


# ------------------------------------------------------------------------------------------------
# the loop
# ------------------------------------------------------------------------------------------------


@dataclass
class AttemptResult:
    outcome: policy.Outcome
    reason: str
    duration_s: float
    step: int | None = None


class Supervisor:
    """One supervisor for one run directory; ``run()`` returns a ``SupervisorExit``."""

    def __init__(self, config: RunConfig, reporter: Any | None = None) -> None:
        self.config = config
        self.run_dir = RunDir.at(config.log_dir)
        self.reporter = reporter if reporter is not None else make_default_reporter()
        self.lock = RunLock(self.run_dir.supervisor_lock)
        self._wake = threading.Event()
        self.signals = StopSignals(self._wake)
        self.journal = JournalWriter(self.run_dir.events, self.run_dir.supervisor_state, warn=self._console_line)
        self.pace = policy.StepPaceTracker()
        self.progress = policy.ProgressTracker()
        self.disk_watch = policy.DiskWatch()
        self.state: SupervisorState | None = None
        self.tree: LaunchedTree | None = None
        self.attempt = 0
        self.newest_valid_step: int | None = None
        self._last_report = 0.0
        self._last_disk_check = 0.0
        self._newest_size: int | None = None
        self._memory_tight_at: float | None = None
        self._pruned_validated: dict[str, bool] = {}

    # -- signals ---------------------------------------------------------------------------------
    @property
    def stop_requests(self) -> int:
        return self.signals.count

    def request_stop(self, *_: Any) -> None:
        """Signal-handler safe: count the request and wake the loop. A second one forces."""
        self.signals.request("request")

    def install_signal_handlers(self) -> None:
        self.signals.install()  # SIGINT, SIGTERM, SIGHUP
        # torchrun exiting wakes the loop at once instead of at the next poll: crash detection
        # latency is then torchrun's own, not our monitor interval.
        signal.signal(signal.SIGCHLD, lambda *_: self._wake.set())

    # -- bookkeeping -----------------------------------------------------------------------------
    def _console_line(self, line: str) -> None:
        try:
            self.reporter.event(line)
        except Exception:
            pass

    def event(self, event_name: str, line: str, **details: Any) -> None:
        record: dict[str, Any] = {"time": time.time(), "event": event_name, "attempt": self.attempt or None,
                                  "message": line}
        record.update(details)
        self.journal.append_event(record)
        try:
            self.reporter.event(line)
        except Exception:
            pass

    def save_state(self, **changes: Any) -> None:
        assert self.state is not None
        for key, value in changes.items():
            setattr(self.state, key, value)
        self.state.attempt = self.attempt
        if self.tree is not None:
            self.state.processes = [
                ProcessRecord(pid=ident.pid, create_time=ident.create_time, role=role)
                for ident, role in self.tree.identities()
            ]
        else:
            self.state.processes = []
        self.journal.write_state(self.state)

    def _report(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_report < REPORT_EVERY_S:
            return
        self._last_report = now
        snapshot = _snapshot_or_none(self.run_dir.root)
        if snapshot is not None:
            try:
                self.reporter.update(snapshot)
            except Exception:
                pass

    def _sleep(self, seconds: float) -> None:
        self._wake.wait(max(0.0, seconds))
        self._wake.clear()

    # -- entry point -----------------------------------------------------------------------------
    def run(self) -> SupervisorExit:
        """Take the lock (RunLockHeld propagates), then supervise until a terminal state."""
        self.run_dir.root.mkdir(parents=True, exist_ok=True)
        self.lock.acquire()
        try:
            return self._run_locked()
        except StopRequested as request:
            self.tree = None
            return self._finish("stopped", SupervisorExit.STOPPED,
                                f"stopped on request ({request}) during checkpoint validation")
        except BaseException as exc:
            if self.tree is not None:
                kill_tree(self.tree.live_processes(), grace_s=self.config.kill_grace, reap=self.tree.popen)
                self.tree = None
            if self.state is not None and not isinstance(exc, (SystemExit,)):
                try:
                    self.event("internal_error", f"internal error: {type(exc).__name__}: {exc}")
                    self.save_state(state="error", exit_code=int(SupervisorExit.INTERNAL_ERROR))
                except Exception:
                    pass
            raise
        finally:
            try:
                if not self.journal.flush():
                    self._console_line(f"{self.journal.pending_events} event(s) could not be written to "
                                       f"{self.run_dir.events} ({self.journal.error})")
                self.reporter.close()
            finally:
                self.lock.release()

    def _run_locked(self) -> SupervisorExit:
        previous = read_supervisor_state(self.run_dir.supervisor_state)
        me = psutil.Process()
        self.attempt = self._highest_attempt()
        self.state = SupervisorState(
            state="starting",
            pid=me.pid,
            pid_create_time=me.create_time(),
            hostname=socket.gethostname(),
            log_dir=str(self.run_dir.root),
            started_at=time.time(),
            attempt=self.attempt,
            max_restarts=self.config.limits.max_restarts,
            run_config=self.config.describe(),
        )
        self.save_state()
        self.event("supervisor_started", f"supervisor {me.pid} watching {self.run_dir.root}")
        if previous is not None:
            self._kill_orphans(previous)

        restarts_used = 0
        consecutive_failures = 0
        while True:
            if self.stop_requests:
                return self._finish("stopped", SupervisorExit.STOPPED, "stopped on request before launch")
            self._prepare_launch(first=restarts_used == 0 and consecutive_failures == 0)
            if self.stop_requests:
                return self._finish("stopped", SupervisorExit.STOPPED, "stopped on request before launch")
            foreign = find_foreign_trainers(self.run_dir.root)
            if foreign is not None:
                return self._finish("refused", SupervisorExit.REFUSED, f"refusing to launch: {foreign.describe()}")
            result = self._run_attempt()
            kind = result.outcome.kind
            if kind == policy.FINISHED:
                return self._finish("finished", SupervisorExit.FINISHED, f"training finished ({result.reason})")
            if kind == policy.STOPPED:
                return self._finish("stopped", SupervisorExit.STOPPED, f"stopped on request ({result.reason})")

            failure = FailureRecord(
                kind=kind,
                reason=result.reason,
                attempt=self.attempt,
                time=time.time(),
                exit_code=result.outcome.exit_code,
                signal=signal_name(result.outcome.signal) if result.outcome.signal else None,
                rank=result.outcome.rank,
                step=result.step,
            )
            self.save_state(state="restarting", last_failure=failure)
            selection_step = self._validate_checkpoints()
            stalled = self.progress.record_failure(selection_step)
            consecutive_failures = policy.next_consecutive_failures(
                consecutive_failures, result.duration_s, self.config.backoff
            )
            decision = policy.decide_after_failure(
                result.outcome,
                restarts_used=restarts_used,
                stalled_failures=stalled,
                consecutive_failures=consecutive_failures,
                limits=self.config.limits,
                backoff=self.config.backoff,
            )
            if not decision.restart:
                failure.reason = f"{decision.reason}; last failure: {result.reason}"
                self.save_state(last_failure=failure)
                return self._finish("gave_up", SupervisorExit.GAVE_UP, f"gave up: {failure.reason}")
            if decision.delay_s > 0:
                self.event("backoff", f"waiting {decision.delay_s:.1f}s before restarting", delay_s=decision.delay_s)
                deadline = time.monotonic() + decision.delay_s
                while time.monotonic() < deadline and not self.stop_requests:
                    self._sleep(deadline - time.monotonic())
                if self.stop_requests:
                    return self._finish("stopped", SupervisorExit.STOPPED, "stopped on request during backoff")
            restarts_used += 1
            self.save_state(restarts_used=restarts_used)
            self.event(
                "restarted",
                f"restart {restarts_used}/{self.config.limits.max_restarts} after {kind}",
                restarts_used=restarts_used,
            )

    def _finish(self, state: str, code: SupervisorExit, line: str) -> SupervisorExit:
        kind = {"finished": "finished", "stopped": "stopped", "gave_up": "gave_up", "refused": "refused"}[state]
        self.tree = None
        self.save_state(state=state, exit_code=int(code))
        self.event(kind, line, exit_code=int(code))
        self._report(force=True)
        return code

    def _highest_attempt(self) -> int:
        highest = 0
        try:
            for entry in self.run_dir.attempts_dir.iterdir():
                stem = entry.name.split(".")[0]
                if stem.isdigit():
                    highest = max(highest, int(stem))
        except OSError:
            pass
        return highest

    # -- orphans ---------------------------------------------------------------------------------
    def _kill_orphans(self, previous: SupervisorState) -> None:
        """Processes an earlier (killed) supervisor of THIS directory left running: stop them first."""
        lost = lost_supervisor(previous)
        if lost is not None:
            self.event("warning", lost, previous_supervisor=previous.pid)
        survey = survey_orphans(previous, self.run_dir.root)
        if survey.left_alone:
            self.event("warning", f"not touching {len(survey.left_alone)} live process(es) recorded in supervisor.json: "
                       + "; ".join(f"pid {pid}: {why}" for pid, why in sorted(survey.left_alone.items())),
                       pids=sorted(survey.left_alone))
        if not survey.orphans:
            return
        report = stop_orphans(survey, self.run_dir.root, kill_grace_s=self.config.kill_grace,
                              stop_timeout_s=self._stop_timeout(), stop_requests=lambda: self.stop_requests,
                              wait=self._sleep)
        how = f"killed ({report.forced})" if report.forced else "saved and stopped"
        self.event(
            "orphans_killed",
            f"{how}: {len(report.pids)} process(es) left by supervisor {previous.pid}: {report.pids}",
            pids=report.pids,
            forced=report.forced,
            survivors=report.survivors,
            seconds=round(report.seconds, 2),
        )

    def _stop_timeout(self) -> float:
        if self.config.stop_timeout is not None:
            return self.config.stop_timeout
        return self.config.timeouts.checkpoint_timeout

    # -- before a launch -------------------------------------------------------------------------
    def _validate_checkpoints(self) -> int | None:
        """Validate newest-first, quarantine, re-point the link. Returns the chosen step."""
        with self.signals.interruptible():  # a load-probe can take minutes; Ctrl-C must not wait
            selection = select_checkpoint_for_restart(self.run_dir.root, probe_timeout=self.config.probe_timeout)
        for verdict, new_path in selection.quarantined:
            self.event(
                "quarantined",
                f"checkpoint {verdict.path.name} failed validation ({verdict.reason}); renamed to {new_path.name}",
                checkpoint=verdict.path.name,
                reason=verdict.reason,
                renamed_to=new_path.name,
            )
        chosen = selection.chosen
        if chosen is not None:
            self.event(
                "checkpoint_valid",
                f"resuming from {chosen.path.name} (validated in {chosen.seconds or 0:.2f}s)"
                if not chosen.inconclusive else
                f"resuming from {chosen.path.name} UNVERIFIED: validation inconclusive ({chosen.reason})",
                checkpoint=chosen.path.name,
                step=chosen.step,
                seconds=chosen.seconds,
                inconclusive=chosen.inconclusive,
            )
            self.newest_valid_step = chosen.step
            self.save_state(newest_checkpoint=chosen.path.name,
                            newest_checkpoint_valid=None if chosen.inconclusive else True,
                            newest_checkpoint_reason=chosen.reason if chosen.inconclusive else None)
        else:
            if selection.checked:
                self.event("checkpoint_valid", "NO VALID CHECKPOINT: every checkpoint failed validation; "
                           "starting from scratch", checkpoint=None)
            self.newest_valid_step = None
            last = selection.checked[-1] if selection.checked else None
            self.save_state(
                newest_checkpoint=last.path.name if last else None,
                newest_checkpoint_valid=False if last else None,
                newest_checkpoint_reason=last.reason if last else None,
            )
        return chosen.step if chosen is not None else None

    def _prepare_launch(self, first: bool) -> None:
        if first:
            step = self._validate_checkpoints()
            self.progress.best_step = step
        self._check_disk(force=True)

    # -- disk ------------------------------------------------------------------------------------
    def _disk_threshold(self) -> int:
        if self.config.min_free_disk is not None:
            return self.config.min_free_disk
        return policy.default_min_free_disk(self._newest_size)

    def _check_disk(self, force: bool = False, after_attempt: bool = False) -> None:
        now = time.monotonic()
        if not force and not after_attempt and now - self._last_disk_check < min(DISK_EVERY_S, max(self.config.monitor_interval, 0.5) * 4):
            return
        self._last_disk_check = now
        newest = newest_checkpoint(self.run_dir.root)
        self._newest_size = newest[2] if newest else None
        try:
            free = shutil.disk_usage(self.run_dir.root).free
        except OSError:
            return
        threshold = self._disk_threshold()
        level = policy.disk_level(free, threshold, self._newest_size)
        if level != policy.DISK_OK:
            if self.disk_watch.update(level) or force:
                self.event(
                    "disk_warning",
                    f"low disk ({level}): {free / 1e6:.1f} MB free, threshold {threshold / 1e6:.1f} MB"
                    + ("" if self.config.prune_on_low_disk else " (pass --prune-on-low-disk to delete old checkpoints)"),
                    level=level,
                    free_bytes=free,
                    threshold_bytes=threshold,
                )
            if not self.config.prune_on_low_disk:
                return
            self._prune(threshold)
            try:
                free = shutil.disk_usage(self.run_dir.root).free
            except OSError:
                return
            level = policy.disk_level(free, threshold, self._newest_size)
        if level == policy.DISK_OK and self.disk_watch.update(level):
            self.event("disk_warning", f"disk space recovered: {free / 1e6:.1f} MB free", level=level,
                       free_bytes=free, threshold_bytes=threshold)
        else:
            self.disk_watch.update(level)

    def _prune(self, threshold: int) -> None:
        """Delete oldest checkpoints, keeping the newest *validated* one (validate it if needed)."""
        newest_valid = self.newest_valid_step
        newest = newest_checkpoint(self.run_dir.root)
        if newest is not None and (newest_valid is None or newest[0] > newest_valid):
            name = newest[1].name
            if name not in self._pruned_validated:
                from shared.checkpoint_validation import validate_checkpoint

                try:
                    result = validate_checkpoint(newest[1], probe_timeout=self.config.probe_timeout)
                    self._pruned_validated[name] = bool(getattr(result, "ok", False))
                except Exception:
                    self._pruned_validated[name] = False
            if self._pruned_validated[name]:
                newest_valid = newest[0]
        if newest_valid is None:
            return
        result = prune_oldest_checkpoints(self.run_dir.root, threshold, newest_valid)
        if result.deleted:
            names = [c.name for c in result.deleted]
            self.event(
                "pruned",
                f"low disk: deleted {len(names)} old checkpoint(s) {names}, kept newest valid step {newest_valid}",
                deleted=names,
                kept_step=newest_valid,
                free_before=result.free_before,
                free_after=result.free_after,
            )

    # -- one attempt -----------------------------------------------------------------------------
    def _run_attempt(self) -> AttemptResult:
        self.attempt += 1
        log_path = self.run_dir.attempt_log(self.attempt)
        argv = build_command(self.config)
        env = build_env(self.config)
        oom_before = read_oom_kill_count()
        try:
            self.tree = launch(argv, cwd=self.config.cwd, env=env, log_path=log_path)
        except OSError as exc:
            self.tree = None
            reason = f"could not launch {argv[0]}: {exc}"
            self.event("crashed", reason)
            return AttemptResult(policy.Outcome(policy.USAGE_ERROR), reason, 0.0)
        self.pace.reset_attempt()
        self.save_state(state="running")
        self.event(
            "launched",
            f"attempt {self.attempt}: launched torchrun pid {self.tree.pid} "
            f"({self.config.nproc_per_node} proc/node), log {log_path.relative_to(self.run_dir.root)}",
            pid=self.tree.pid,
            argv=argv,
        )
        try:
            return self._watch(self.tree, oom_before)
        finally:
            self.tree = None
            self.save_state()
            # The attempt's last checkpoints landed after our last poll: leave the disk judged.
            self._check_disk(force=False, after_attempt=True)

    def _watch(self, tree: LaunchedTree, oom_before: int | None) -> AttemptResult:
        cfg = self.config
        stop_sent_at: float | None = None
        last_step: int | None = None
        last_poll = time.monotonic()
        while True:
            now = time.time()
            gap = time.monotonic() - last_poll
            if gap > max(10 * cfg.monitor_interval, MONITOR_GAP_S):
                # SIGSTOP / a suspended VM / a starved host: say so, since everything we time just jumped.
                self.event("warning", f"the supervisor itself was not scheduled for {gap:.0f}s "
                           "(stopped, suspended or starved)", gap_s=round(gap, 1))
            last_poll = time.monotonic()
            code = tree.poll()
            if tree.refresh():
                self.save_state()
            beats = fresh_heartbeats(self.run_dir, tree.launched_at)
            if beats:
                lead = beats[min(beats)]
                self.pace.observe(int(lead.step), float(lead.time), str(lead.phase))
                last_step = max(int(b.step) for b in beats.values())
            self._watch_memory()

            if code is not None:
                return self._on_exit(tree, code, beats, oom_before, stop_sent_at is not None or self.stop_requests > 0,
                                     last_step)

            # stop requests: the first is forwarded, a second (or the stop timeout) forces
            if self.stop_requests and stop_sent_at is None:
                stop_sent_at = time.monotonic()
                workers = tree.worker_processes()
                self.save_state(state="stopping")
                if workers:
                    send_signal(workers, signal.SIGTERM)
                    self.event("stop_requested", f"stop requested ({self.signals.names[0]}): asked {len(workers)} "
                               f"worker(s) to save and exit (a second Ctrl-C forces)", pids=[p.pid for p in workers],
                               signal=self.signals.names[0])
                else:
                    self.event("stop_requested", "stop requested before workers started: stopping torchrun")
                    kill_tree(tree.live_processes(), grace_s=cfg.kill_grace, reap=tree.popen)
            if stop_sent_at is not None and (
                self.stop_requests >= 2 or time.monotonic() - stop_sent_at > self._stop_timeout()
            ):
                why = "second stop request" if self.stop_requests >= 2 else "stop timeout"
                self.event("stop_requested", f"{why}: killing the process tree")
                report = kill_tree(tree.live_processes(), grace_s=min(cfg.kill_grace, 2.0), reap=tree.popen)
                self._check_survivors(report)
                return AttemptResult(policy.Outcome(policy.STOPPED), f"forced ({why})",
                                     time.time() - tree.launched_at, last_step)

            if stop_sent_at is None:
                verdict = self._detect_hang(tree, beats, now)
                if verdict is not None:
                    return verdict

            self._check_disk()
            if self.journal.failing:
                self.journal.flush()  # space may be back: write out what waits in memory
            self._report()
            self._sleep(cfg.monitor_interval)

    def _watch_memory(self) -> None:
        try:
            vm = psutil.virtual_memory()
        except Exception:
            return
        if vm.total and vm.available / vm.total < MEMORY_TIGHT_FRACTION:
            self._memory_tight_at = time.time()

    def _detect_hang(self, tree: LaunchedTree, beats: dict[int, Heartbeat], now: float) -> AttemptResult | None:
        cfg = self.config
        if not beats:
            if policy.startup_timed_out(tree.launched_at, now, False, cfg.timeouts):
                reason = f"no heartbeat within the start-up timeout ({cfg.timeouts.startup_timeout:.0f}s)"
                return self._handle_hang(tree, beats, policy.STARTUP_TIMEOUT, reason, rank=None, step=None)
            return None
        rank_beats = [
            policy.RankBeat(rank=r, phase=str(b.phase), time=float(b.time), status=str(b.status), step=int(b.step))
            for r, b in beats.items()
        ]
        hung = policy.find_hung_rank(rank_beats, now, cfg.timeouts, self.pace.slowest_step_s)
        if hung is None:
            return None
        # Only now pay for process states: a stopped (SIGSTOP / T state) rank is the culprit.
        stopped = [r for r, b in beats.items() if is_stopped(int(b.pid))]
        if stopped:
            hung = policy.find_hung_rank(rank_beats, now, cfg.timeouts, self.pace.slowest_step_s, stopped) or hung
        return self._handle_hang(tree, beats, policy.HUNG, hung.describe(), rank=hung.rank, step=hung.step)

    def _handle_hang(
        self, tree: LaunchedTree, beats: dict[int, Heartbeat], kind: str, reason: str, rank: int | None, step: int | None
    ) -> AttemptResult:
        cfg = self.config
        self.event("hung", f"attempt {self.attempt}: {reason}", rank=rank, step=step, kind=kind)
        live_pids = {p.pid for p in tree.live_processes()}
        worker_pids = {r: int(b.pid) for r, b in beats.items() if int(b.pid) in live_pids}
        if not worker_pids:
            worker_pids = {i: p.pid for i, p in enumerate(tree.worker_processes())}
        number = next_incident_number(self.run_dir.incidents_dir)
        incident = self.run_dir.incident_dir(number)
        evidence = capture_hang_evidence(
            incident,
            worker_pids=worker_pids,
            attempt_log=tree.log_path,
            summary={"attempt": self.attempt, "kind": kind, "reason": reason, "rank": rank, "step": step,
                     "heartbeats": {str(r): b.to_dict() for r, b in beats.items()}},
        )
        self.event(
            "evidence_captured",
            f"evidence in {incident.relative_to(self.run_dir.root)} ({len(evidence.files)} files, "
            f"{evidence.duration_s:.1f}s)",
            incident=str(incident.relative_to(self.run_dir.root)),
            files=sorted(evidence.files),
            errors=evidence.errors,
        )
        report = kill_tree(tree.live_processes(), grace_s=cfg.kill_grace, reap=tree.popen)
        self._check_survivors(report)
        return AttemptResult(policy.Outcome(kind, rank=rank), reason, time.time() - tree.launched_at, step)

    def _check_survivors(self, report: Any) -> None:
        if report.survivors:
            self.event("internal_error", f"processes survived SIGKILL: {report.survivors}", pids=report.survivors)

    def _on_exit(
        self,
        tree: LaunchedTree,
        code: int,
        beats: dict[int, Heartbeat],
        oom_before: int | None,
        stop_requested: bool,
        last_step: int | None,
    ) -> AttemptResult:
        # torchrun is gone; anything left of its tree (a reparented worker) goes too.
        leftovers = tree.live_processes()
        if leftovers:
            psutil.wait_procs(leftovers, timeout=EXIT_STRAGGLER_GRACE_S)
            self._check_survivors(kill_tree(tree.live_processes(), grace_s=self.config.kill_grace, reap=tree.popen))
        beats = fresh_heartbeats(self.run_dir, tree.launched_at) or beats
        log_text = read_log_tail(tree.log_path)
        oom_after = read_oom_kill_count()
        facts = policy.ExitFacts(
            returncode=code,
            statuses=[str(b.status) for b in beats.values()],
            rank_exits=parse_rank_exits(log_text) if code != 0 else (),
            oom_kill_observed=oom_before is not None and oom_after is not None and oom_after > oom_before,
            memory_was_tight=self._memory_tight_at is not None
            and time.time() - self._memory_tight_at < MEMORY_TIGHT_MEMORY_S,
            stop_requested=stop_requested,
        )
        outcome = policy.classify_exit(facts)
        duration = time.time() - tree.launched_at
        if beats:
            last_step = max(int(b.step) for b in beats.values())
        if not outcome.is_failure:
            return AttemptResult(outcome, f"exit {code}, step {last_step}", duration, last_step)
        who = f"rank {outcome.rank}" if outcome.rank is not None else "torchrun"
        if outcome.signal:
            how = f"killed by {signal_name(outcome.signal)}"
        else:
            how = f"exited with code {outcome.exit_code}"
        label = {policy.OOM: "out of memory (kernel OOM kill)", policy.DIVERGED: "diverged (non-finite loss)",
                 policy.USAGE_ERROR: "rejected its command line"}.get(outcome.kind, "crashed")
        tail = meaningful_log_lines(log_text)
        where = f"at step {last_step}" if last_step is not None else "before its first step"
        reason = f"{who} {label}: {how} {where}"
        if tail:
            reason += " | last log lines: " + " / ".join(tail)
        self.event(
            "crashed",
            f"attempt {self.attempt}: {reason}",
            kind=outcome.kind,
            exit_code=outcome.exit_code,
            signal=signal_name(outcome.signal) if outcome.signal else None,
            rank=outcome.rank,
            step=last_step,
            torchrun_exit=code,
        )
        return AttemptResult(outcome, reason, duration, last_step)
