"""When the worker must stop early: a stop signal, or the supervisor that launched it is gone.

SIGTERM/SIGINT (and the supervisor's death) only set a flag; the loop finishes its step, all ranks
agree, the checkpoint of that step is saved, and the worker exits 0 with status ``stopped``.
The supervisor's identity arrives as ``GPT2SUP_SUPERVISOR=<pid>:<create_time>`` (pid + start time,
so a recycled pid is not mistaken for it); without that variable nothing is watched (a bare run,
or ``gpt2sup run --workers-outlive-supervisor``). Checked at step boundaries, at most once a second:
polling is cheap, and unlike a parent-death signal it works through torchrun's extra process level.

A SIGTERM is not always a request to save. When one rank dies, torchrun tears the group down by
sending SIGTERM to the others, whose peer is gone: no step can finish and no checkpoint of the
group can be written, so "save at the next step" would only make the survivors wait to fail. The
supervisor therefore marks its own stop requests: it writes ``stop_request.json`` in the run
directory before it signals (``shared.run_dir.RunDir.stop_request``). A worker launched by
``gpt2sup run`` (``GPT2SUP_SUPERVISOR`` set) that gets a SIGTERM **without** that file:

- when a rank of its group on this host is already gone (its heartbeat's pid is dead), is being
  torn down: it writes its heartbeat (status ``failed``, saying so) and exits 1 at once, without
  trying to save;
- otherwise (SLURM preemption signals every process of the step at once, before the supervisor
  has written anything; an operator's ``kill``) it saves at the next step as always. If the
  ranks' agreement at that step boundary fails (a peer died meanwhile), the exception ends the
  process at once (``os._exit(1)`` after the traceback) instead of waiting for the interpreter's
  slow teardown.

A bare ``python -m worker.train_gpt2`` or a bare torchrun run (no ``GPT2SUP_SUPERVISOR``) keeps
the plain rule: SIGTERM and Ctrl-C save at the next step and stop.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn

from shared.atomic_io import read_json
from shared.exit_codes import WorkerExit
from shared.process_identity import ProcessId, same_process_alive
from shared.run_dir import STOP_REQUEST_NAME
from shared.vocabulary import ATTEMPT_ID_ENV, SUPERVISOR_ENV

# What a rank's collective raises when a peer process is gone (gloo's TCP pair, NCCL's abort).
_PEER_LOST_WORDS = ("Connection closed by peer", "Connection reset by peer", "Broken pipe",
                    "NCCL communicator was aborted", "Socket Timeout", "Connection refused")
_PEER_LOST_TYPES = ("DistBackendError", "DistNetworkError")
# A rank torn down by a peer's failure exits WorkerExit.CRASHED: the peer's failure, not ours.


class SupervisorWatch:
    """Is the process named by ``<pid>:<create_time>`` still alive? (checked at most every ``period_s``)"""

    def __init__(self, pid: int, create_time: float, period_s: float = 1.0) -> None:
        self.pid, self.create_time, self.period_s = pid, create_time, period_s
        self._next_check = 0.0

    @classmethod
    def from_env(cls, environ: dict[str, str] | Any) -> SupervisorWatch | None:
        value = environ.get(SUPERVISOR_ENV)
        if not value:
            return None
        identity = ProcessId.parse(value)
        if identity is not None:
            return cls(identity.pid, identity.create_time)
        print(f"WARNING: ignoring {SUPERVISOR_ENV}={value!r} (expected <pid>:<create_time>); "
              "the supervisor's lifetime is not watched", file=sys.stderr, flush=True)
        return None

    def gone(self) -> bool:
        now = time.monotonic()
        if now < self._next_check:
            return False
        self._next_check = now + self.period_s
        return same_process_alive(self.pid, self.create_time) is None


def looks_like_peer_loss(exc: BaseException) -> bool:
    """An exception a collective raises because another rank's process is gone."""
    names = {klass.__name__ for klass in type(exc).__mro__}
    return bool(names & set(_PEER_LOST_TYPES)) or any(word in str(exc) for word in _PEER_LOST_WORDS)


def gone_peers(heartbeat_dir: Path, rank: int, since: float, host: str | None = None) -> list[int]:
    """Ranks of this attempt on this host whose process is gone, from their heartbeats.

    Only heartbeats of this attempt (its id, ``ATTEMPT_ID_ENV``; without one, written since
    ``since``, this process's start) by a process on ``host`` count; a pid that is alive but
    started after its heartbeat was written is a reused pid.
    """
    host = host or socket.gethostname()
    gone: list[int] = []
    try:
        paths = sorted(heartbeat_dir.glob("rank*.json"))
    except OSError:
        return gone
    mine = os.environ.get(ATTEMPT_ID_ENV)
    for path in paths:
        beat = read_json(path)
        if not isinstance(beat, dict) or beat.get("rank") == rank or beat.get("hostname") != host:
            continue
        pid, written, theirs = beat.get("pid"), beat.get("time"), beat.get("attempt_id")
        if mine and isinstance(theirs, str):
            # Under gpt2sup: this attempt's by its id, and "written" by the kernel's clock (the file's
            # mtime, the clock of the process start times it is compared with), never the rank's own.
            if theirs != mine:
                continue
            try:
                written = path.stat().st_mtime
            except OSError:
                continue
        elif not isinstance(written, (int, float)) or written < since:
            continue
        if not isinstance(pid, int):
            continue
        if not _pid_alive_since(pid, written):
            gone.append(int(beat["rank"]) if isinstance(beat.get("rank"), int) else -1)
    return gone


def _pid_alive_since(pid: int, written: float) -> bool:
    try:
        import psutil

        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and proc.create_time() <= written + 1.0
    except Exception:  # noqa: BLE001 - NoSuchProcess and friends: gone
        return False


class StopRequest:
    """A stop asked for by a signal, or by the supervisor's disappearance; ``reason`` says which.

    Under ``gpt2sup run`` it also tells torchrun's teardown apart from a stop request (module
    docstring); ``attach`` gives it the run directory and the heartbeat once they exist.
    """

    def __init__(self, supervisor: SupervisorWatch | None = None) -> None:
        self.supervisor = supervisor
        self.reason: str | None = None
        self.unrequested_sigterm = False  # SIGTERM under gpt2sup without the supervisor's stop request
        self._run_root: Path | None = None
        self._heartbeat: Any = None  # worker.runtime.telemetry.HeartbeatWriter
        self._rank = 0
        self._started = time.time()
        self._previous_hook = sys.excepthook

    def install(self) -> None:
        with contextlib.suppress(Exception):
            import psutil

            self._started = psutil.Process().create_time()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)
        if self.supervisor is not None:
            self._previous_hook = sys.excepthook
            sys.excepthook = self._excepthook

    def attach(self, run_root: Path, heartbeat: Any, rank: int) -> None:
        """The run directory and this rank's heartbeat writer, once ``main`` has made them."""
        self._run_root, self._heartbeat, self._rank = Path(run_root), heartbeat, rank

    def _handle(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGTERM and self.supervisor is not None and not self._supervisor_asked():
            self.unrequested_sigterm = True
            if self._run_root is not None:
                gone = gone_peers(self._run_root / "heartbeat", self._rank, self._started)
                if gone:
                    self._exit_torn_down(f"rank {gone[0]} is gone and torchrun is stopping the group (SIGTERM "
                                         "without a stop request from the supervisor): exiting at once, no save")
        self.reason = self.reason or f"stop requested ({signal.Signals(signum).name})"

    def _supervisor_asked(self) -> bool:
        """The supervisor wrote its stop request since this process started: for this attempt (by the
        attempt id both carry), else (a request without one: orphans of a lost supervisor) by time."""
        if self._run_root is None:
            return False
        record = read_json(self._run_root / STOP_REQUEST_NAME)
        if not isinstance(record, dict):
            return (self._run_root / STOP_REQUEST_NAME).exists()
        asked, mine = record.get("attempt_id"), os.environ.get(ATTEMPT_ID_ENV)
        if isinstance(asked, str) and mine:  # this attempt's request: no clocks compared
            return asked == mine
        written = record.get("time")
        return not isinstance(written, (int, float)) or written >= self._started - 1.0

    def _exit_torn_down(self, message: str) -> None:
        with contextlib.suppress(Exception):
            if self._heartbeat is not None:
                self._heartbeat.fail(message)
        with contextlib.suppress(Exception):
            print(f"rank {self._rank}: {message}", file=sys.stderr, flush=True)
        os._exit(WorkerExit.CRASHED)

    def _excepthook(self, kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        """Under gpt2sup: a crash caused by a lost peer (or during torchrun's teardown) prints its
        traceback and ends the process at once; the interpreter's teardown of torch and a dead
        process group takes seconds that only delay the restart."""
        with contextlib.suppress(Exception):
            self._previous_hook(kind, exc, tb)
        if isinstance(exc, Exception) and (self.unrequested_sigterm or looks_like_peer_loss(exc)):
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(WorkerExit.CRASHED)

    def requested(self) -> bool:
        """This rank's view at a step boundary (the ranks then agree with an all-reduce)."""
        if self.reason is None and self.supervisor is not None and self.supervisor.gone():
            self.reason = f"supervisor {self.supervisor.pid} on {socket.gethostname()} is gone"
        return self.reason is not None



__all__ = ["STOP_REQUEST_NAME", "SUPERVISOR_ENV", "StopRequest", "SupervisorWatch", "gone_peers", "looks_like_peer_loss"]


def end_process(code: int) -> NoReturn:
    """The worker's last act: exit with the code it decided.

    A non-zero code is a verdict the rank has already written down (its heartbeat's last word,
    one line on stderr): a permanent refusal (a damaged pretrained file, other data, a newer
    format), a bad checkpoint, a divergence. The interpreter's teardown after it (the process
    group's threads, C++ destructors) now and then aborts ("terminate called without an active
    exception"), and a rank that ends by SIGABRT is read as a crash: CI once saw a refusal of a
    damaged pretrained file restarted that way. So an error skips that teardown: stdout and stderr
    are flushed and the process ends with its code (``os._exit``). Every file the worker keeps is
    written and closed before this (heartbeats and checkpoints atomically, the logs line by line).

    Exit 0 (finished or stopped, the process group already shut down) takes the normal way out:
    its teardown is bounded by ``bound_the_teardown`` and the supervisor reads an abort after
    ``finished`` or ``stopped`` as that ending.
    """
    if code == 0:
        sys.exit(0)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)
