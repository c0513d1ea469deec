"""What the worker tells the outside world: heartbeats (every rank), log.txt and metrics.jsonl
(rank 0). Kept out of the training loop so the loop reads like build-nanogpt.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from shared.atomic_io import write_text_atomic
from shared.heartbeat import Heartbeat, write_heartbeat
from shared.run_dir import RunDir


class HeartbeatWriter:
    """Rewrites ``heartbeat/rank{R}.json`` from the training loop (never from a thread)."""

    def __init__(self, run_dir: RunDir, rank: int, world_size: int, max_steps: int) -> None:
        self.path = run_dir.heartbeat(rank)
        self.state = Heartbeat(
            pid=os.getpid(), rank=rank, world_size=world_size, step=-1, phase="startup",
            time=time.time(), max_steps=max_steps,
        )

    def beat(self, **changes: Any) -> None:
        for key, value in changes.items():
            setattr(self.state, key, value)
        self.state.time = time.time()
        write_heartbeat(self.path, self.state)


class RunLogger:
    """``log.txt`` (build-nanogpt lines) and ``metrics.jsonl`` (one object per step), rank 0 only.

    On resume the lines of steps after the resumed checkpoint are dropped first, so a run that
    crashed and resumed has the same log as one that never crashed.
    """

    def __init__(self, run_dir: RunDir, enabled: bool) -> None:
        self.run_dir = run_dir
        self.enabled = enabled
        self._log = None
        self._metrics = None

    def open(self, resumed_step: int | None) -> None:
        """Start fresh (``resumed_step is None``) or keep only lines up to ``resumed_step``."""
        if not self.enabled:
            return
        for path, step_of in ((self.run_dir.log_txt, _step_of_log_line), (self.run_dir.metrics, _step_of_metrics_line)):
            if resumed_step is None:
                write_text_atomic(path, "")
            else:
                _truncate_after_step(path, resumed_step, step_of)
        self._log = open(self.run_dir.log_txt, "a", encoding="utf-8")
        self._metrics = open(self.run_dir.metrics, "a", encoding="utf-8")

    def log_line(self, text: str) -> None:
        if self._log is not None:
            self._log.write(text + "\n")
            self._log.flush()

    def metrics(self, record: dict[str, Any]) -> None:
        if self._metrics is not None:
            self._metrics.write(json.dumps(record) + "\n")
            self._metrics.flush()

    def close(self) -> None:
        for handle in (self._log, self._metrics):
            if handle is not None:
                handle.close()
        self._log = self._metrics = None


def _step_of_log_line(line: str) -> int | None:
    head = line.split(" ", 1)[0]
    return int(head) if head.isdigit() else None


def _step_of_metrics_line(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def _truncate_after_step(path: Path, step: int, step_of) -> None:
    if not path.exists():
        return
    kept = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if not line.endswith("\n"):
                continue  # a half-written last line from the crash
            line_step = step_of(line)
            if line_step is not None and line_step <= step:
                kept.append(line)
    write_text_atomic(path, "".join(kept))
