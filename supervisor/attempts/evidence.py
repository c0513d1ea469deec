"""Hang evidence, captured into ``incidents/NNN/`` before a hung attempt is killed.

Once the tree is killed the stacks are gone, and "it hung at step 41,213" without a stack is not
actionable. Three sources, because each fails somewhere:
- SIGUSR1 -> the worker's faulthandler prints every thread's Python stack into the attempt log.
  A SIGSTOPped (or deadlocked-in-C) process cannot run the handler, so this alone is not enough.
- ``py-spy dump`` reads the interpreter's memory from outside; ``--nonblocking`` does not need
  to pause the target, so it works on a stopped process too.
- ``/proc/PID/{status,wchan,stack}``: what the kernel thinks the process is doing.
Every step has a timeout: capturing evidence must never become the second hang.
"""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from supervisor.attempts.process_tree import is_stopped

PY_SPY_TIMEOUT_S = 10.0
FAULTHANDLER_WAIT_S = 1.5
MAX_LOG_COPY_BYTES = 8 * 1024**2
PROC_FILES = ("status", "wchan", "stack")


@dataclass
class EvidenceReport:
    directory: Path
    files: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    duration_s: float = 0.0


def _write(directory: Path, name: str, text: str, report: EvidenceReport) -> None:
    try:
        (directory / name).write_text(text, encoding="utf-8", errors="replace")
        report.files.append(name)
    except OSError as exc:
        report.errors.append(f"{name}: {exc}")


def _copy_log_tail(log_path: Path, start_offset: int, dest: Path, report: EvidenceReport) -> None:
    """Copy what the attempt log gained since ``start_offset`` (the faulthandler dumps)."""
    try:
        size = log_path.stat().st_size
        start = max(start_offset, size - MAX_LOG_COPY_BYTES)
        with open(log_path, "rb") as src, open(dest, "wb") as out:
            src.seek(start)
            out.write(src.read(size - start))
        report.files.append(dest.name)
    except OSError as exc:
        report.errors.append(f"{dest.name}: {exc}")


def _py_spy_dump(pid: int, nonblocking: bool) -> tuple[str, str | None]:
    exe = shutil.which("py-spy")
    if exe is None:
        return "", "py-spy not installed"
    argv = [exe, "dump", "--pid", str(pid)]
    if nonblocking:
        argv.append("--nonblocking")
    try:
        done = subprocess.run(
            argv, check=False, capture_output=True, text=True, timeout=PY_SPY_TIMEOUT_S, stdin=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C meant for the supervisor must not kill the capture
        )
    except subprocess.TimeoutExpired:
        return "", f"py-spy timed out after {PY_SPY_TIMEOUT_S:.0f}s"
    except OSError as exc:
        return "", f"py-spy failed to start: {exc}"
    text = done.stdout + (("\n--- stderr ---\n" + done.stderr) if done.stderr.strip() else "")
    return text, None if done.returncode == 0 else f"py-spy exited {done.returncode}"


def _proc_snapshot(pid: int) -> str:
    parts: list[str] = []
    for name in PROC_FILES:
        try:
            content = Path(f"/proc/{pid}/{name}").read_text(errors="replace")
        except OSError as exc:
            content = f"<unreadable: {exc.strerror}>"
        parts.append(f"== /proc/{pid}/{name} ==\n{content.rstrip()}\n")
    return "\n".join(parts)


def catches_signal(pid: int, signum: int) -> bool:
    """Whether ``pid`` has a handler for ``signum`` (Linux: the ``SigCgt`` mask in
    ``/proc/PID/status``). Unknown (no /proc, gone): False, so nothing is sent that might kill it."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (int(signum) - 1) & 1)
    except (OSError, ValueError, IndexError):
        return False
    return False


def capture_hang_evidence(
    directory: Path,
    *,
    worker_pids: Mapping[int, int],
    attempt_log: Path,
    summary: Mapping[str, Any],
) -> EvidenceReport:
    """Write stacks and kernel state of every rank (``rank -> pid``) into ``directory``.

    Never raises and never blocks for long: each external step is bounded.
    """
    started = time.monotonic()
    directory.mkdir(parents=True, exist_ok=True)
    report = EvidenceReport(directory)
    try:
        log_offset = attempt_log.stat().st_size
    except OSError:
        log_offset = 0

    stopped = {rank: is_stopped(pid) for rank, pid in worker_pids.items()}
    # Ask for faulthandler dumps first: they run concurrently with the rest of the capture. Only
    # a process that handles SIGUSR1 gets it: its default action kills, and a script of the
    # user's (``-- SCRIPT.py``) rarely registers faulthandler; killed, it leaves py-spy no stack.
    for rank, pid in worker_pids.items():
        if not catches_signal(pid, signal.SIGUSR1):
            report.errors.append(f"rank {rank}: SIGUSR1 not sent: the process does not handle it (no faulthandler)")
            continue
        try:
            psutil.Process(pid).send_signal(signal.SIGUSR1)
        except (psutil.NoSuchProcess, psutil.AccessDenied) as exc:
            report.errors.append(f"rank {rank}: SIGUSR1 not delivered: {exc}")

    for rank, pid in sorted(worker_pids.items()):
        _write(directory, f"proc-rank{rank}.txt", _proc_snapshot(pid), report)
        text, error = _py_spy_dump(pid, nonblocking=stopped.get(rank, False))
        if error and not stopped.get(rank, False) and "not installed" not in error:
            # A blocking dump can fail on a wedged target; the non-blocking read may still work.
            text2, error2 = _py_spy_dump(pid, nonblocking=True)
            if error2 is None:
                text, error = text2, None
        if text:
            _write(directory, f"py-spy-rank{rank}.txt", text, report)
        if error:
            report.errors.append(f"rank {rank}: {error}")

    remaining = FAULTHANDLER_WAIT_S - (time.monotonic() - started)
    if remaining > 0:
        time.sleep(remaining)
    _copy_log_tail(attempt_log, log_offset, directory / "faulthandler.log", report)

    report.duration_s = time.monotonic() - started
    record = dict(summary)
    record.update(
        {
            "stopped_ranks": sorted(r for r, s in stopped.items() if s),
            "worker_pids": {str(r): p for r, p in worker_pids.items()},
            "files": sorted(report.files),
            "errors": report.errors,
            "capture_seconds": round(report.duration_s, 3),
        }
    )
    try:
        (directory / "summary.json").write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
        report.files.append("summary.json")
    except OSError as exc:
        report.errors.append(f"summary.json: {exc}")
    return report
