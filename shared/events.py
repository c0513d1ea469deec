"""One record of ``events.jsonl``, the run's journal: ``time``, ``event``, ``attempt`` and details.

The supervisor writes every record through its journal (``supervisor.journal_writer``); the
worker's rank 0 appends its one kind, ``replay_check``, with ``append_event``.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from shared.atomic_io import append_jsonl


def append_event(path: Path, event: str, attempt: int | None = None, **details: Any) -> None:
    record: dict[str, Any] = {"time": time.time(), "event": event, "attempt": attempt}
    record.update(details)
    append_jsonl(path, record)
