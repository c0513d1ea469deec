"""``supervisor.json`` and ``events.jsonl`` schemas: written by ``gpt2sup run``, read by
``gpt2sup status`` / ``stop`` / a later ``gpt2sup run`` (to find orphaned workers).

Lives in ``shared`` because it is a file contract, and stays torch-free.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from shared.atomic_io import append_jsonl, read_json, write_json_atomic

# Supervisor states written to supervisor.json["state"].
SUPERVISOR_STATES = (
    "starting",  # lock taken, cleaning up, validating
    "running",  # an attempt is live
    "restarting",  # between attempts (validation, backoff)
    "stopping",  # stop requested, waiting for the worker to save and exit
    "finished",  # terminal: training reached max steps
    "stopped",  # terminal: stopped on request
    "gave_up",  # terminal: restart budget or no-progress limit reached
    "error",  # terminal: internal error
)
TERMINAL_STATES = ("finished", "stopped", "gave_up", "error")

# Event kinds appended to events.jsonl (each record: {"time", "event", "attempt", ...details}).
EVENT_KINDS = (
    "supervisor_started",
    "orphans_killed",
    "launched",
    "crashed",
    "hung",
    "evidence_captured",
    "checkpoint_valid",
    "quarantined",
    "disk_warning",
    "pruned",
    "backoff",
    "restarted",
    "stop_requested",
    "stopped",
    "gave_up",
    "finished",
    "internal_error",
)


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
    exit_code: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SupervisorState":
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


def write_supervisor_state(path: Path, state: SupervisorState) -> None:
    state.updated_at = time.time()
    write_json_atomic(path, state.to_dict())


def read_supervisor_state(path: Path) -> SupervisorState | None:
    data = read_json(path)
    if not isinstance(data, dict):
        return None
    try:
        return SupervisorState.from_dict(data)
    except (TypeError, ValueError):
        return None


def append_event(path: Path, event: str, attempt: int | None = None, **details: Any) -> None:
    record: dict[str, Any] = {"time": time.time(), "event": event, "attempt": attempt}
    record.update(details)
    append_jsonl(path, record)
