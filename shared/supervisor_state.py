"""``supervisor.json`` and ``events.jsonl`` schemas: written by ``gpt2sup run``, read by
``gpt2sup status`` / ``stop`` / a later ``gpt2sup run`` (to find orphaned workers).

Lives in ``shared`` because it is a file contract, and stays torch-free.
"""
from __future__ import annotations

import collections
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from shared.atomic_io import append_jsonl, rewrite_json
from shared.vocabulary import EventKind

# The words in these files (states, event kinds) are the StrEnums of shared.vocabulary.


@dataclass
class ProcessRecord:
    """A process we launched, identified by pid *and* start time (pids get reused)."""

    pid: int
    create_time: float
    role: str = "worker"  # "torchrun" or "worker"


@dataclass
class FailureRecord:
    kind: str  # "crashed", "hung", "oom", "diverged", "startup_timeout", ...
    reason: str  # one human line
    attempt: int
    time: float
    exit_code: int | None = None
    signal: str | None = None
    rank: int | None = None
    step: int | None = None


@dataclass
class SupervisorState:
    state: str
    pid: int
    pid_create_time: float
    hostname: str
    log_dir: str
    started_at: float
    updated_at: float = field(default_factory=time.time)
    attempt: int = 0
    restarts_used: int = 0
    max_restarts: int = 10
    last_failure: FailureRecord | None = None
    processes: list[ProcessRecord] = field(default_factory=list)
    newest_checkpoint: str | None = None
    newest_checkpoint_valid: bool | None = None
    newest_checkpoint_reason: str | None = None
    run_config: dict[str, Any] = field(default_factory=dict)
    # {"worker_args", "worker_module"} of the last attempt the worker accepted (not refused): what a
    # later ``gpt2sup run`` with no worker arguments reuses. run_config is what was asked for.
    accepted_run: dict[str, Any] | None = None
    # The final checkpoint of the accepted run once it finished (kept across refused attempts;
    # cleared when an accepted attempt trains on): a later plain ``gpt2sup run`` launches nothing.
    finished_checkpoint: str | None = None
    exit_code: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SupervisorState:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if isinstance(values.get("last_failure"), dict):
            failure_fields = {f.name for f in fields(FailureRecord)}
            values["last_failure"] = FailureRecord(
                **{k: v for k, v in values["last_failure"].items() if k in failure_fields}
            )
        values["processes"] = [
            ProcessRecord(**{k: v for k, v in p.items() if k in ("pid", "create_time", "role")})
            for p in values.get("processes") or []
            if isinstance(p, dict)
        ]
        return cls(**values)


@dataclass(frozen=True)
class StateFile:
    """``supervisor.json`` as read: the state, or why a file that exists cannot be used.

    "Absent" and "unreadable" are different answers: a garbage file must be reported as
    unreadable (and its recorded arguments never silently replaced by defaults), not as a run
    without a supervisor."""

    state: SupervisorState | None
    raw: dict[str, Any] = field(default_factory=dict)
    unreadable: str | None = None  # why the existing file is unusable ("not JSON"); None if fine or absent

    @property
    def absent(self) -> bool:
        return self.state is None and self.unreadable is None


# A reader may meet supervisor.json mid-rewrite only when the disk is full (rewrite_json's in-place
# fallback); one more read after this pause tells a torn moment from a damaged file.
REREAD_PAUSE_S = 0.05


def load_supervisor_state(path: Path) -> StateFile:
    """Read ``supervisor.json``; never raises. See :class:`StateFile`."""
    result = _load_once(path)
    if result.unreadable is not None:
        time.sleep(REREAD_PAUSE_S)
        result = _load_once(path)
    return result


def _load_once(path: Path) -> StateFile:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return StateFile(None)
    except (OSError, UnicodeDecodeError) as exc:
        return StateFile(None, unreadable=str(getattr(exc, "strerror", None) or exc))
    try:
        data = json.loads(text)
    except ValueError:
        return StateFile(None, unreadable="not JSON")
    if not isinstance(data, dict):
        return StateFile(None, unreadable="not a JSON object")
    try:
        return StateFile(SupervisorState.from_dict(data), data)
    except (TypeError, ValueError):
        return StateFile(None, unreadable="not a supervisor state (fields missing or of the wrong type)")


def read_supervisor_state(path: Path) -> SupervisorState | None:
    """The state, or None when absent or unreadable (:func:`load_supervisor_state` tells which)."""
    return load_supervisor_state(path).state


def append_event(path: Path, event: str, attempt: int | None = None, **details: Any) -> None:
    record: dict[str, Any] = {"time": time.time(), "event": event, "attempt": attempt}
    record.update(details)
    append_jsonl(path, record)


# How many event records a journal keeps in memory while it cannot write. A supervisor writes a
# handful of events per attempt, so this covers days of a full disk; past it the oldest go (and
# the count of lost records is written once writing works again).
MAX_BUFFERED_EVENTS = 10_000


class JournalWriter:
    """The supervisor's only writer of ``events.jsonl`` and ``supervisor.json``; survives failures.

    A full disk, a read-only remount or a removed run directory must not kill the process that is
    there to handle exactly those conditions. A failed write keeps the records in memory (events
    in order, bounded; only the newest state, since ``supervisor.json`` is a rewrite), warns once
    through ``warn``, and every later write or :meth:`flush` retries; once a write succeeds the
    backlog goes out in order, followed by one ``journal_error`` event saying what was delayed.
    The run directory is never recreated: a removed directory is a failure until it is back.
    """

    def __init__(
        self,
        events_path: Path,
        state_path: Path,
        *,
        warn: Callable[[str], None],
        max_buffered: int = MAX_BUFFERED_EVENTS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.events_path = Path(events_path)
        self.state_path = Path(state_path)
        self._warn = warn
        self._clock = clock
        self._events: collections.deque[dict[str, Any]] = collections.deque(maxlen=max_buffered)
        self._dropped = 0
        self._state: dict[str, Any] | None = None
        self.failing_since: float | None = None
        self.error: str | None = None  # the first error of the current outage
        self._delayed = 0  # events buffered during the current outage

    @property
    def failing(self) -> bool:
        """True while records wait in memory because the run directory cannot be written."""
        return self.failing_since is not None

    @property
    def pending_events(self) -> int:
        return len(self._events)

    def append_event(self, record: dict[str, Any]) -> bool:
        """Journal one event record; True when it (and any backlog) is on disk."""
        if len(self._events) == self._events.maxlen:
            self._dropped += 1
        self._events.append(dict(record))
        if self.failing:
            self._delayed += 1
        return self.flush()

    def write_state(self, state: SupervisorState) -> bool:
        """Rewrite ``supervisor.json``; True when it is on disk. The state is copied now."""
        state.updated_at = self._clock()
        self._state = state.to_dict()
        return self.flush()

    def flush(self) -> bool:
        """Write whatever waits, oldest event first, then the newest state; True when all is out."""
        try:
            while self._events:
                append_jsonl(self.events_path, self._events[0], create_parent=False)
                self._events.popleft()
            if self._state is not None:
                rewrite_json(self.state_path, self._state, create_parent=False)
                self._state = None
        except OSError as exc:
            self._on_failure(exc)
            return False
        if self.failing:
            self._on_recovery()
        return True

    def _on_failure(self, exc: OSError) -> None:
        if self.failing:
            return
        self.failing_since = self._clock()
        self.error = exc.strerror or str(exc)
        self._delayed = len(self._events)
        self._warn(
            f"cannot write {self.events_path.parent} ({self.error}): keeping the journal in memory "
            "and supervising on; it is written out as soon as the disk accepts writes again"
        )

    def _on_recovery(self) -> None:
        assert self.failing_since is not None
        seconds = self._clock() - self.failing_since
        line = (
            f"the run directory was unwritable for {seconds:.0f}s ({self.error}); "
            f"{self._delayed} delayed event(s) written now"
            + (f", {self._dropped} oldest lost (memory bound {self._events.maxlen})" if self._dropped else "")
        )
        self.failing_since = None
        self._warn(line)
        record = {"time": self._clock(), "event": str(EventKind.JOURNAL_ERROR), "attempt": None, "message": line,
                  "error": self.error, "seconds": round(seconds, 3), "delayed": self._delayed,
                  "lost": self._dropped}
        self.error, self._delayed, self._dropped = None, 0, 0
        self.append_event(record)
