"""The one module that spawns, signals and kills processes.

torchrun starts in a session of its own so that a Ctrl-C in the user's terminal reaches only the
supervisor (which then asks the workers to save), and so that the whole tree can be addressed as
one process group. Descendants are also tracked by pid + create_time with psutil, because a
worker may outlive torchrun (reparented to init) and pids get reused.
"""
from __future__ import annotations

import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from shared.process_identity import ProcessId

STOPPED_STATES = (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP)


def is_alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def is_stopped(proc: psutil.Process | int) -> bool:
    """Stopped by a signal (SIGSTOP, Ctrl-Z) or by a tracer: it cannot act on any signal but SIGKILL."""
    try:
        target = proc if isinstance(proc, psutil.Process) else psutil.Process(proc)
        return target.status() in STOPPED_STATES
    except psutil.Error:
        return False


def own_identity() -> ProcessId:
    return ProcessId.of(psutil.Process())


def command_line_log_dir(proc: psutil.Process) -> Path | None:
    """The run directory a process was started with (``--log_dir X`` / ``--log_dir=X``), resolved
    against that process's own working directory; ``None`` when it has none or cannot be read."""
    try:
        argv = proc.cmdline()
        cwd = proc.cwd()
    except psutil.Error:
        return None
    value: str | None = None
    for index, arg in enumerate(argv):
        if arg == "--log_dir" and index + 1 < len(argv):
            value = argv[index + 1]
        elif arg.startswith("--log_dir="):
            value = arg.split("=", 1)[1]
    if value is None:
        return None
    try:
        return (Path(cwd) / value).resolve()
    except (OSError, RuntimeError):
        return None


def _ancestors() -> set[int]:
    try:
        return {parent.pid for parent in psutil.Process().parents()}
    except psutil.Error:
        return set()


def processes_with_log_dir(run_dir: Path, exclude: Iterable[int] = ()) -> list[psutil.Process]:
    """Every live process started with ``--log_dir`` equal to ``run_dir`` (a trainer of it), but
    this process and its ancestors: a wrapper of ``gpt2sup run`` (``timeout``, ``time``, a shell
    ``-c``) carries the same command line, script arguments (``--log_dir``) included."""
    wanted = Path(run_dir).resolve()
    skip = set(exclude) | {os.getpid()} | _ancestors()
    found: list[psutil.Process] = []
    for proc in psutil.process_iter():
        if proc.pid in skip or not is_alive(proc):
            continue
        if command_line_log_dir(proc) == wanted:
            found.append(proc)
    return found


@dataclass
class LaunchedTree:
    """A launched torchrun and every descendant we have ever seen (so reparented ones stay known)."""

    popen: subprocess.Popen
    root: psutil.Process
    log_path: Path
    launched_at: float  # wall clock, for records people read
    known: dict[int, psutil.Process] = field(default_factory=dict)  # pid -> process (incl. root)
    # time.monotonic() at launch: every duration and timeout of the attempt is measured from this,
    # so a step of the machine's clock changes none of them.
    launched_mono: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def poll(self) -> int | None:
        """torchrun's return code once it exited (negative: the signal that killed it)."""
        return self.popen.poll()

    def refresh(self) -> bool:
        """Add newly spawned descendants to ``known``; True when the set changed."""
        changed = False
        try:
            children = self.root.children(recursive=True)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            children = []
        for child in children:
            if child.pid not in self.known:
                self.known[child.pid] = child
                changed = True
        return changed

    def live_processes(self) -> list[psutil.Process]:
        """Every known process of this attempt that is still running (root included)."""
        return [p for p in self.known.values() if is_alive(p)]

    def worker_processes(self) -> list[psutil.Process]:
        """The training processes: torchrun's direct children (the local ranks)."""
        try:
            return [p for p in self.root.children(recursive=False) if is_alive(p)]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            # torchrun is gone; anything else we saw is a (reparented) worker.
            return [p for pid, p in self.known.items() if pid != self.root.pid and is_alive(p)]

    def identities(self) -> list[tuple[ProcessId, str]]:
        """(identity, role) of every live known process, for supervisor.json."""
        out: list[tuple[ProcessId, str]] = []
        for pid, proc in self.known.items():
            if not is_alive(proc):
                continue
            try:
                out.append((ProcessId.of(proc), "torchrun" if pid == self.root.pid else "worker"))
            except psutil.NoSuchProcess:
                continue
        return out


def launch(argv: Sequence[str], *, cwd: Path, env: Mapping[str, str], log_path: Path) -> LaunchedTree:
    """Start ``argv`` in its own session with stdout+stderr appended to ``log_path``.

    Raises OSError (e.g. torchrun not found) for the caller to turn into one line.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab", buffering=0) as log_handle:
        popen = subprocess.Popen(
            list(argv),
            cwd=str(cwd),
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log_handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    # Until it is waited for, even an instantly-dead child is a zombie psutil can see.
    root = psutil.Process(popen.pid)
    return LaunchedTree(popen, root, log_path, time.time(), known={popen.pid: root})


def send_signal(procs: Iterable[psutil.Process], sig: int) -> list[int]:
    """Signal each live process; returns the pids actually signalled. Never raises."""
    sent: list[int] = []
    for proc in procs:
        try:
            proc.send_signal(sig)
            sent.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
            continue
    return sent


@dataclass
class KillReport:
    terminated: list[int]  # exited after SIGTERM
    killed: list[int]  # needed SIGKILL
    survivors: list[int]  # still alive after SIGKILL (should never happen)


def with_descendants(procs: Iterable[psutil.Process]) -> list[psutil.Process]:
    seen: dict[int, psutil.Process] = {}
    for proc in procs:
        if not is_alive(proc):
            continue
        seen[proc.pid] = proc
        try:
            for child in proc.children(recursive=True):
                seen.setdefault(child.pid, child)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return list(seen.values())


def kill_tree(
    procs: Iterable[psutil.Process],
    *,
    grace_s: float,
    reap: subprocess.Popen | None = None,
) -> KillReport:
    """SIGTERM every process (and descendant), wait ``grace_s``, SIGKILL the rest, confirm.

    A SIGSTOPped process cannot act on SIGTERM but SIGKILL still removes it; we also send
    SIGCONT after SIGTERM so a stopped process gets to run its handler within the grace.
    ``reap`` is our own child (torchrun) to wait() so it does not linger as a zombie.
    """
    targets = with_descendants(procs)
    if not targets:
        _reap(reap)
        return KillReport([], [], [])
    send_signal(targets, signal.SIGTERM)
    send_signal(targets, signal.SIGCONT)
    _reap_soon(reap)
    gone, alive = psutil.wait_procs(targets, timeout=max(0.0, grace_s))
    # New descendants may have been forked during the grace (torchrun restarting nothing, but a
    # worker's data loader could); pick them up before the hard kill.
    alive = with_descendants(alive + [p for p in targets if is_alive(p)])
    killed: list[int] = []
    if alive:
        killed = send_signal(alive, signal.SIGKILL)
        _reap_soon(reap)
        _, alive = psutil.wait_procs(alive, timeout=5.0)
    _reap(reap)
    survivors = [p.pid for p in alive if is_alive(p)]
    terminated = [p.pid for p in gone]
    return KillReport(terminated, killed, survivors)


def _reap_soon(popen: subprocess.Popen | None) -> None:
    if popen is not None:
        try:
            popen.poll()
        except OSError:
            pass


def _reap(popen: subprocess.Popen | None) -> None:
    if popen is None:
        return
    try:
        popen.wait(timeout=5.0)
    except (subprocess.TimeoutExpired, OSError):
        pass


class DeathWatch:
    """Notice the first death among watched processes at once, not at the next poll.

    The ranks are torchrun's children, not ours, so their exit sends us no SIGCHLD. Each watched
    pid gets a pidfd (Linux 5.3+), readable when the process exits; one thread waits on all of
    them and calls ``wake`` (the monitor loop's alarm) with the time of the first death. Where
    pidfds do not exist, ``first_death`` stays None and the caller's poll of process states is
    the only detection (one monitor interval).
    """

    def __init__(self, wake: Callable[[], None]) -> None:
        self.wake = wake
        self.first_death: tuple[int, float] | None = None  # (pid, time.time() when seen)
        self._fds: dict[int, int] = {}  # pid -> pidfd
        self._lock = threading.Lock()
        self._stop_r, self._stop_w = os.pipe()
        self._thread: threading.Thread | None = None
        self._closed = False

    def track(self, procs: Iterable[psutil.Process]) -> None:
        """Watch these processes too (already-watched pids are skipped)."""
        if self._closed or not hasattr(os, "pidfd_open"):
            return
        added = False
        with self._lock:
            for proc in procs:
                if proc.pid in self._fds:
                    continue
                try:
                    self._fds[proc.pid] = os.pidfd_open(proc.pid)
                    added = True
                except OSError:
                    continue  # already gone: the poll of process states finds it
        if added:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="gpt2sup-death-watch", daemon=True)
                self._thread.start()
            else:
                os.write(self._stop_w, b"r")  # re-read the fd set

    def _run(self) -> None:
        while True:
            with self._lock:
                fds = {fd: pid for pid, fd in self._fds.items()}
            try:
                ready, _, _ = select.select([self._stop_r, *fds], [], [])
            except (OSError, ValueError):
                return
            now = time.time()
            if self._stop_r in ready:
                try:
                    data = os.read(self._stop_r, 64)
                except OSError:
                    return
                if b"q" in data:
                    return
            dead = [fds[fd] for fd in ready if fd in fds]
            if dead:
                with self._lock:
                    for pid in dead:
                        fd = self._fds.pop(pid, None)
                        if fd is not None:
                            os.close(fd)
                    if self.first_death is None:
                        self.first_death = (dead[0], now)
                self.wake()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            os.write(self._stop_w, b"q")
            self._thread.join(timeout=2.0)
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
        os.close(self._stop_r)
        os.close(self._stop_w)
