"""``--tensorboard``: rank 0's curves and fault history as TensorBoard event files in ``<log_dir>/tb/``.

``RunLogger`` hands this sink the same per-step record it writes to ``metrics.jsonl``, so the
training loop knows nothing about TensorBoard. What is written (docs/tensorboard.md):

* scalars at ``global_step = step`` with the record's wall time: ``train/loss``, ``train/lr``,
  ``train/grad_norm``, ``train/tokens_per_s`` every step, ``val/loss`` and ``eval/hellaswag_acc``
  on evaluation steps;
* one ``faults`` text per start of the worker: a markdown table of ``events.jsonl`` (the
  supervisor's journal) as it stood when the attempt started, so the newest entry holds the whole
  fault history so far.

Resume: an attempt that resumed from the checkpoint of step S trains again from S + 1, so its
writer is opened with ``purge_step = S + 1`` (0 for a fresh start): TensorBoard then hides every
event at a step >= S + 1 written by earlier attempts, exactly what ``log.txt`` drops. The faults
text of an attempt is written at that same first step, so a later attempt that resumes from the
same checkpoint supersedes it instead of adding a second entry at one step; attempts that resumed
from earlier checkpoints keep theirs (a readable history of the run's restarts). A fresh start
removes the old event files, as it empties ``log.txt``.

A failed write (a full disk) never stops training: one warning through ``WriteWarnings``, the
unwritten entries wait in memory, and a new writer is tried every ``RETRY_INTERVAL_S`` seconds; it
purges from the first step still waiting, which also hides anything half-written by the writer
that failed.
"""
from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from shared.exit_codes import WorkerExit
from worker.errors import WorkerError
from worker.runtime.telemetry import WriteWarnings, print_to_stderr

INSTALL_HINT = "pip install 'gpt2sup[tensorboard]'"
# metrics.jsonl key -> TensorBoard tag (worker/evaluations.py names the evaluation keys).
SCALAR_TAGS: dict[str, str] = {
    "loss": "train/loss",
    "lr": "train/lr",
    "norm": "train/grad_norm",
    "tokens_per_s": "train/tokens_per_s",
    "val_loss": "val/loss",
    "hellaswag": "eval/hellaswag_acc",
}
FAULTS_TAG = "faults"
EVENT_FILE_PREFIX = "events.out.tfevents."
WARNING_KIND = "TensorBoard events (tb/)"
# While writes fail, a new writer (a new event file) is tried this often, not every step: a long
# outage must not leave one file per step behind.
RETRY_INTERVAL_S = 30.0
MAX_FAULT_ROWS = 200  # the newest ones; a flapping disk warning must not make the text unreadable
DETAIL_CHARS = 160


def require_tensorboard() -> None:
    """At start-up, before anything is trained or written: a missing package is one line, exit 2."""
    try:
        import torch.utils.tensorboard  # noqa: F401  (imports the tensorboard package)
    except ImportError:
        raise WorkerError(f"--tensorboard needs the tensorboard package, which is not installed: {INSTALL_HINT}",
                          WorkerExit.USAGE) from None
    except Exception as exc:  # noqa: BLE001 - a broken install (protobuf mismatch) is one line too
        raise WorkerError(f"--tensorboard: the tensorboard package cannot be imported ({type(exc).__name__}: {exc}); "
                          f"reinstall it: {INSTALL_HINT}", WorkerExit.USAGE) from None


class EventWriter(Protocol):
    """The part of ``torch.utils.tensorboard.SummaryWriter`` used here."""

    def add_scalar(self, tag: str, scalar_value: float, global_step: int, walltime: float) -> None: ...

    def add_text(self, tag: str, text_string: str, global_step: int, walltime: float) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


WriterFactory = Callable[[Path, int], EventWriter]  # (directory, purge_step) -> a writer on a new event file


def summary_writer(directory: Path, purge_step: int) -> EventWriter:
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(directory), purge_step=purge_step)


@dataclass(frozen=True)
class _Entry:
    step: int
    tag: str
    value: float | str  # str: a text entry
    walltime: float

    def write_to(self, writer: EventWriter) -> None:
        if isinstance(self.value, str):
            writer.add_text(self.tag, self.value, global_step=self.step, walltime=self.walltime)
        else:
            writer.add_scalar(self.tag, self.value, global_step=self.step, walltime=self.walltime)


class TensorBoardLog:
    """A ``RunLogger`` sink (rank 0 only): ``open(resumed_step)``, ``record(metrics)``, ``close()``."""

    def __init__(self, directory: Path, events_file: Path, warnings: WriteWarnings,
                 make_writer: WriterFactory = summary_writer, clock: Callable[[], float] = time.monotonic) -> None:
        self.directory = Path(directory)
        self.events_file = Path(events_file)  # the supervisor's events.jsonl
        self.warnings = warnings
        self._make_writer = make_writer
        self._clock = clock
        self._writer: EventWriter | None = None
        self._pending: list[_Entry] = []  # not yet known to be written
        # The entries of the last flush that succeeded. The writer's thread can report a failed
        # write only after that flush has returned, so a failure rewrites them too.
        self._last_written: list[_Entry] = []
        self._purge_step = 0  # what the next writer supersedes: everything at a step >= this
        self._next_try = 0.0
        self._closed = False

    def open(self, resumed_step: int | None) -> None:
        """Start this attempt's event file: purge what will be re-done, write the fault history."""
        first_step = 0 if resumed_step is None else resumed_step + 1
        if resumed_step is None:
            self.warnings.attempt(WARNING_KIND, self._remove_event_files)
        self._purge_step = first_step
        _quiet_writer_thread_errors()
        summary = fault_summary(self.events_file, first_step)
        if summary is not None:
            self._pending.append(_Entry(first_step, FAULTS_TAG, summary, time.time()))
        self._write_or_warn(force=True)

    def record(self, metrics: Mapping[str, Any]) -> None:
        """One step's ``metrics.jsonl`` record: its known figures become scalars at its step."""
        if self._closed:
            return
        step = int(metrics["step"])
        walltime = float(metrics.get("time") or time.time())
        for key, tag in SCALAR_TAGS.items():
            value = metrics.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):  # a NaN is shown, as logged
                self._pending.append(_Entry(step, tag, float(value), walltime))
        self._write_or_warn()

    def close(self) -> None:
        """Last try for what waits (and a last check that the previous step's write went out), then
        close the file; a failure was already reported."""
        if self._closed:
            return
        self._closed = True
        self._write_or_warn(force=True)
        if self._writer is not None:
            writer, self._writer = self._writer, None
            self.warnings.attempt(WARNING_KIND, lambda: _as_os_error(writer.close))

    # --- writing -----------------------------------------------------------------------------
    def _write_or_warn(self, force: bool = False) -> None:
        if self._writer is None and not force and self._clock() < self._next_try:
            return  # failing: the entries wait for the next try
        if not self.warnings.attempt(WARNING_KIND, self._write_pending):
            self._next_try = self._clock() + RETRY_INTERVAL_S

    def _write_pending(self) -> None:
        """Write and flush every waiting entry; on any failure drop the writer and keep the entries."""
        try:
            if self._writer is None:
                _wait_for_a_later_file_name(self.directory)
                self._writer = self._make_writer(self.directory, self._purge_step)
            for entry in self._pending:
                entry.write_to(self._writer)
            self._writer.flush()  # each step on disk before the next: a crash loses nothing
        except Exception as exc:
            self._pending[:0] = self._last_written
            self._last_written = []
            if self._pending:
                self._purge_step = self._pending[0].step  # the next file supersedes anything half-written
            self._discard_writer()
            if isinstance(exc, OSError):
                raise
            raise _os_error(exc) from exc
        if self._pending:
            self._purge_step = self._pending[-1].step + 1  # a later file supersedes nothing written
        self._last_written, self._pending = self._pending, []

    def _discard_writer(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            with contextlib.suppress(Exception):  # it already failed; that error was the one reported
                writer.close()

    def _remove_event_files(self) -> None:
        """A fresh start: the curves of what came before are no part of this run (as log.txt is emptied)."""
        if self.directory.is_dir():
            for path in self.directory.glob(EVENT_FILE_PREFIX + "*"):
                path.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- the fault history


def fault_summary(events_file: Path, step: int) -> str | None:
    """Markdown of the journal's records (newest ``MAX_FAULT_ROWS``); None when there is no journal.

    The file is appended by a supervisor that may have been killed mid-line, so a torn or
    malformed line is skipped (and counted), never an error.
    """
    try:
        raw = events_file.read_bytes()
    except FileNotFoundError:
        return None  # a bare worker, not run by gpt2sup
    except OSError as exc:
        return f"events.jsonl could not be read when this attempt started at step {step}: {exc.strerror or exc}"
    records: list[dict[str, Any]] = []
    skipped = 0
    for line in raw.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        else:
            skipped += 1
    head = f"**Fault history**: {len(records)} event(s) in events.jsonl when this attempt started at step {step}"
    notes = []
    if skipped:
        notes.append(f"{skipped} unreadable line(s) skipped")
    if len(records) > MAX_FAULT_ROWS:
        notes.append(f"the oldest {len(records) - MAX_FAULT_ROWS} not shown")
        records = records[-MAX_FAULT_ROWS:]
    lines = [head + (f" ({'; '.join(notes)})" if notes else "") + ".", ""]
    if records:
        lines += ["| time (UTC) | attempt | event | detail |", "| --- | --- | --- | --- |"]
        lines += [f"| {_utc(r.get('time'))} | {_cell(r.get('attempt'))} | {_cell(r.get('event'))} | {_detail(r)} |"
                  for r in records]
    return "\n".join(lines)


def _utc(value: Any) -> str:
    try:
        return datetime.fromtimestamp(float(value), timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    except (TypeError, ValueError, OverflowError, OSError):
        return "?"


def _detail(record: Mapping[str, Any]) -> str:
    text = record.get("message")
    if not text:  # no message: the record's own details
        text = ", ".join(f"{k}={v}" for k, v in record.items() if k not in ("time", "event", "attempt"))
    return _cell(text)


def _cell(value: Any) -> str:
    """One table cell: a single line, shortened, with ``|`` escaped so the table keeps its columns."""
    text = " ".join(str("" if value is None else value).split())
    if len(text) > DETAIL_CHARS:
        text = text[: DETAIL_CHARS - 1] + "…"
    return text.replace("|", "\\|")


# ----------------------------------------------------------------------------- library quirks


def _wait_for_a_later_file_name(directory: Path, limit_s: float = 2.0) -> None:
    """Readers take a directory's event files in name order, and the name starts with the second it
    was created: a file created in the same second as an earlier one (a restart within a second)
    could sort before it and have its purge applied first. Wait for the next second; a clock that
    is behind by more than ``limit_s`` is only warned about."""
    newest = max((_file_second(p.name) for p in _event_files(directory)), default=-1)
    deadline = time.time() + limit_s
    while int(time.time()) <= newest and time.time() < deadline:
        time.sleep(0.05)
    if int(time.time()) <= newest:
        print_to_stderr(f"WARNING: {directory} holds an event file named for a time after this machine's clock; "
                        "TensorBoard may show this attempt's points before it")


def _event_files(directory: Path) -> list[Path]:
    try:
        return list(directory.glob(EVENT_FILE_PREFIX + "*"))
    except OSError:
        return []


def _file_second(name: str) -> int:
    field = name[len(EVENT_FILE_PREFIX):].split(".", 1)[0]
    return int(field) if field.isdigit() else -1


def _os_error(exc: Exception) -> OSError:
    """``WriteWarnings`` reports OSErrors; the library also raises its own error types."""
    return OSError(f"{type(exc).__name__}: {exc}")


def _as_os_error(action: Callable[[], None]) -> None:
    try:
        action()
    except OSError:
        raise
    except Exception as exc:
        raise _os_error(exc) from exc


def _quiet_writer_thread_errors() -> None:
    """SummaryWriter writes from a background thread; when a write fails (ENOSPC) that thread dies
    with a traceback on stderr, and the same error is raised again by the next call in this
    thread, where it becomes our one warning. Keep the traceback out of the attempt log, where it
    would read like the worker's crash. Installed once (again if someone replaced the hook)."""
    previous = threading.excepthook
    if getattr(previous, "quiets_tensorboard_writer", False):
        return

    def hook(args: threading.ExceptHookArgs) -> None:
        if type(args.thread).__module__.startswith("tensorboard.") and isinstance(args.exc_value, Exception):
            return
        previous(args)

    hook.quiets_tensorboard_writer = True  # type: ignore[attr-defined]
    threading.excepthook = hook
