"""The supervisor's only writer of ``events.jsonl`` and ``supervisor.json``: ``JournalWriter``,
which survives a full disk, a read-only remount or a removed run directory.
"""
from __future__ import annotations

import collections
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shared.atomic_io import append_jsonl, rewrite_json
from shared.supervisor_state import SupervisorState
from shared.vocabulary import EventKind

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
