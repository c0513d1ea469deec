"""``supervisor.json`` and ``events.jsonl`` schemas: written by ``gpt2sup run``, read by
``gpt2sup status`` / ``stop`` / a later ``gpt2sup run`` (to find orphaned workers).

Lives in ``shared`` because it is a file contract, and stays torch-free.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

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
