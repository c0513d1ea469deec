"""What the worker tells the outside world: heartbeats (every rank), log.txt and metrics.jsonl
(rank 0), and through ``RunLogger``'s sinks the same records elsewhere (``--tensorboard``). Kept
out of the training loop so the loop reads like build-nanogpt.

None of these writes may stop training: a full disk, a read-only or deleted run directory makes a
write fail with an OSError, and losing a step of a multi-day run over a heartbeat would be absurd.
A failed write is a warning (printed once per kind of file until it works again) and is retried at
the next step; log and metrics lines are kept in memory until they are written, so the files end
complete once space comes back.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from shared.atomic_io import write_text_atomic
from shared.heartbeat import Heartbeat, write_heartbeat
from shared.run_dir import RunDir
from shared.vocabulary import ATTEMPT_ID_ENV, Phase, RankStatus
from worker.runtime import startup_clock


class WriteWarnings:
    """One warning per kind of failing write, one note when it works again."""

    def __init__(self, rank: int) -> None:
        self.rank = rank
        self.failing: set[str] = set()

    def attempt(self, kind: str, write: Callable[[], None]) -> bool:
        try:
            write()
        except OSError as exc:
            if kind not in self.failing:
                self.failing.add(kind)
                print_to_stderr(f"WARNING: rank {self.rank} cannot write its {kind} ({exc.strerror or exc}); "
                           "training continues, retrying every step")
            return False
        if kind in self.failing:
            self.failing.discard(kind)
            print_to_stderr(f"rank {self.rank}: writing its {kind} works again")
        return True

    def say(self, message: str) -> None:
        """Print a progress line; stdout is often a log file on the run's own (maybe full) disk."""
        self.attempt("output (stdout)", lambda: print(message, flush=True))


def print_to_stderr(message: str) -> None:
    try:
        print(message, file=sys.stderr, flush=True)
    except OSError:
        pass  # stderr shares the full disk: the failure is already visible as missing output


class HeartbeatWriter:
    """Rewrites ``heartbeat/rank{R}.json`` from the training loop (never from a thread)."""

    def __init__(self, run_dir: RunDir, rank: int, world_size: int, max_steps: int) -> None:
        self.path = run_dir.heartbeat(rank)
        self.warnings = WriteWarnings(rank)
        self.state = Heartbeat(
            pid=os.getpid(), rank=rank, world_size=world_size, step=-1, phase=Phase.STARTUP,
            time=time.time(), max_steps=max_steps, hostname=socket.gethostname(),
            attempt_id=os.environ.get(ATTEMPT_ID_ENV) or None, seq=0,
        )
        self._first_train_step: int | None = None  # the step training starts from in this process

    def beat(self, **changes: Any) -> bool:
        """Apply ``changes`` and rewrite the file; False (after a warning) when it cannot be written."""
        for key, value in changes.items():
            setattr(self.state, key, value)
        if self.state.phase == Phase.TRAIN and isinstance(self.state.step, int):
            if self._first_train_step is None:
                self._first_train_step = self.state.step
            elif self.state.step > self._first_train_step:
                startup_clock.mark(startup_clock.FIRST_STEP_DONE)
        self.state.startup = startup_clock.marks()  # this process's start-up milestones (restart breakdown)
        self.state.time = time.time()
        self.state.mono = time.monotonic()
        self.state.seq = int(self.state.seq or 0) + 1
        return self.warnings.attempt("heartbeat", lambda: write_heartbeat(self.path, self.state))

    def fail(self, message: str, status: RankStatus = RankStatus.FAILED, bad_checkpoint: str | None = None) -> None:
        """The rank's last word: why it stops (shown by ``gpt2sup status``, quoted by the supervisor)."""
        self.beat(status=status, message=message, bad_checkpoint=bad_checkpoint)


class MetricsSink(Protocol):
    """Another destination of the per-step records (``worker.runtime.tensorboard_log.TensorBoardLog``).

    Told the same three things as the files: where the attempt starts, each step's record, the end.
    Like every write here, a sink never raises into training: it reports its own failures.
    """

    def open(self, resumed_step: int | None) -> None: ...

    def record(self, metrics: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


class RunLogger:
    """``log.txt`` (build-nanogpt lines), ``metrics.jsonl`` (one object per step) and ``samples.txt``, rank 0 only.

    On resume the lines of steps after the resumed checkpoint are dropped first, so a run that
    crashed and resumed has the same log as one that never crashed. ``sinks`` get the same
    start, records and end, so the training loop writes each step's figures once.
    """

    def __init__(self, run_dir: RunDir, enabled: bool, warnings: WriteWarnings | None = None,
                 sinks: Sequence[MetricsSink] = ()) -> None:
        self.run_dir = run_dir
        self.enabled = enabled
        self.warnings = warnings or WriteWarnings(0)
        self.sinks = list(sinks) if enabled else []
        self._files = {"log.txt": _AppendOnlyFile(run_dir.log_txt), "metrics.jsonl": _AppendOnlyFile(run_dir.metrics),
                       "samples.txt": _AppendOnlyFile(run_dir.samples)}

    def open(self, resumed_step: int | None) -> None:
        """Start fresh (``resumed_step is None``) or keep only lines up to ``resumed_step``."""
        if not self.enabled:
            return
        for path, step_of in ((self.run_dir.log_txt, _step_of_log_line), (self.run_dir.metrics, _step_of_metrics_line),
                              (self.run_dir.samples, _step_of_log_line)):
            if resumed_step is None:
                write_text_atomic(path, "")
            else:
                _truncate_after_step(path, resumed_step, step_of)
        for sink in self.sinks:
            sink.open(resumed_step)

    def log_line(self, text: str) -> None:
        self._append("log.txt", text + "\n")

    def sample_line(self, text: str) -> None:
        """One ``{step} rank {r} sample {i}: '...'`` line of ``samples.txt``."""
        self._append("samples.txt", text + "\n")

    def metrics(self, record: dict[str, Any]) -> None:
        self._append("metrics.jsonl", json.dumps(record) + "\n")
        for sink in self.sinks:
            sink.record(record)

    def _append(self, name: str, text: str) -> None:
        if self.enabled:
            target = self._files[name]
            target.pending += text.encode("utf-8")
            self.warnings.attempt(name, target.flush)

    def close(self) -> None:
        """Last try for lines still pending, then release the files (a failure was already reported)."""
        for name, target in self._files.items():
            if self.enabled and target.pending:
                self.warnings.attempt(name, target.flush)
            target.close()
        for sink in self.sinks:
            sink.close()


class _AppendOnlyFile:
    """An O_APPEND file whose unwritten bytes wait in ``pending``: a short write (ENOSPC half way)
    keeps exactly the rest, so no line is lost or doubled when the retry succeeds."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pending = b""
        self._fd: int | None = None

    def flush(self) -> None:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        while self.pending:
            written = os.write(self._fd, self.pending)
            self.pending = self.pending[written:]

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _step_of_log_line(line: str) -> int | None:
    head = line.split(" ", 1)[0]
    return int(head) if head.isdigit() else None


def _step_of_metrics_line(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def _truncate_after_step(path: Path, step: int, step_of: Callable[[str], int | None]) -> None:
    """Keep the lines of steps up to ``step``; cut in place when they are the file's head.

    They almost always are (lines are appended in step order), and a truncate needs no free
    space: a relaunch onto a full disk must not die here before its first step.
    """
    if not path.exists():
        return
    kept: list[bytes] = []
    dropped = False
    head = True  # the kept lines are the file's first lines
    with open(path, "rb") as handle:
        for raw in handle:
            # A line without its newline is half-written (the crash came mid-write): dropped.
            line_step = step_of(raw.decode("utf-8", errors="replace")) if raw.endswith(b"\n") else None
            if line_step is not None and line_step <= step:
                kept.append(raw)
                head = head and not dropped
            else:
                dropped = True
    if head:
        os.truncate(path, sum(len(raw) for raw in kept))
    else:
        write_text_atomic(path, b"".join(kept).decode("utf-8", errors="replace"))
