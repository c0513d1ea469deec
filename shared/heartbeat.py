"""Heartbeat schema (docs/cli.md, "The run directory"): the worker's only live channel to the supervisor.

Each rank rewrites ``heartbeat/rank{R}.json`` atomically from its training loop, at least once per
optimizer step and at every phase change. It is never written from a background thread: a thread
would keep beating while the loop is stuck, which is exactly the hang we must detect.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from shared.atomic_io import read_json, rewrite_json
from shared.vocabulary import Phase, RankStatus

_E = TypeVar("_E", bound=StrEnum)


class MalformedHeartbeat(ValueError):
    """A file that cannot be a heartbeat (a reader keeps the last good one)."""


@dataclass
class Heartbeat:
    pid: int
    rank: int
    world_size: int
    step: int  # last completed optimizer step (-1 before the first one)
    phase: Phase
    # Wall-clock seconds since the epoch when written, by the rank's own clock: for people and
    # reports only. No verdict compares it with another process's clock (docs/reliability.md).
    time: float
    loss: float | None = None
    tokens_per_s: float | None = None
    last_checkpoint: str | None = None  # file name of the newest checkpoint this run saved/loaded
    status: RankStatus = RankStatus.RUNNING
    max_steps: int | None = None  # extension: lets status compute progress and ETA
    message: str | None = None  # extension: last notable event; with status "failed", the reason
    save_seconds: float | None = None  # how long this rank's newest checkpoint save took
    # --async_checkpoint: the checkpoint file (model_N.pt) being written in the background, not
    # yet renamed into place; None when no write is in flight. Only the writing rank sets it.
    save_in_flight: str | None = None
    eval_seconds: float | None = None  # how long its newest eval/HellaSwag/sampling pass took
    bad_checkpoint: str | None = None  # with exit 4: the checkpoint file that could not be used
    hostname: str | None = None  # the machine the rank runs on (names the node of a straggler)
    # Seconds of the rank's own compute in each of its last steps (at most 20, newest last): the
    # forward/backward passes before the gradient all-reduce, which makes step times equal.
    compute_s: list[float] | None = None
    # Wall-clock milestones of this process's start (worker.runtime.startup_clock): process_start,
    # imports_done, rendezvous_done, checkpoint_loaded, loader_positioned, restored,
    # first_step_done; the supervisor's restart_breakdown event is made of them. From the first
    # step on also compiler_imported (a bool: is torch._dynamo imported in the rank by now).
    startup: dict[str, float | bool] | None = None
    # The id of the attempt that launched this rank (``ATTEMPT_ID_ENV``; None for a bare worker):
    # how the supervisor tells this attempt's beats from an earlier attempt's leftovers.
    attempt_id: str | None = None
    # Beats this process has written (1, 2, ...): a new value is a new beat, whatever the clocks say.
    seq: int | None = None
    # ``time.monotonic()`` of the rank when written: differences between two beats of one process
    # are durations that no clock step distorts (the supervisor's step pace uses them).
    mono: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: object) -> Heartbeat:
        """The one validation of a heartbeat another process wrote: a typed record, every field
        of its declared type, or ``MalformedHeartbeat`` when it cannot be one.

        Required: integer ``pid``, ``rank``, ``world_size``, ``step``, a finite ``time`` and a
        ``phase`` string. A phase or status this version does not know (a newer worker) counts as
        ``train`` / ``running``, the same rule the hang check applies; an optional field of the
        wrong type is dropped (None), so readers never re-check types. Unknown keys are ignored.
        """
        if not isinstance(data, dict):
            raise MalformedHeartbeat("a heartbeat is a JSON object")
        required = {name: data.get(name) for name in ("pid", "rank", "world_size", "step")}
        if not all(_is_int(value) for value in required.values()):
            raise MalformedHeartbeat("pid, rank, world_size and step must be integers")
        when = _finite(data.get("time"))
        if when is None or not isinstance(data.get("phase"), str):
            raise MalformedHeartbeat("time must be a finite number and phase a string")
        return cls(
            **required, phase=_member(Phase, data["phase"], Phase.TRAIN), time=when,
            loss=_number(data.get("loss")), tokens_per_s=_finite(data.get("tokens_per_s")),
            last_checkpoint=_text(data.get("last_checkpoint")),
            status=_member(RankStatus, data.get("status", RankStatus.RUNNING), RankStatus.RUNNING),
            max_steps=_int(data.get("max_steps")), message=_text(data.get("message")),
            save_seconds=_duration(data.get("save_seconds")), save_in_flight=_text(data.get("save_in_flight")),
            eval_seconds=_duration(data.get("eval_seconds")), bad_checkpoint=_text(data.get("bad_checkpoint")),
            hostname=_text(data.get("hostname")), compute_s=_durations(data.get("compute_s")),
            startup=_milestones(data.get("startup")), attempt_id=_text(data.get("attempt_id")),
            seq=_int(data.get("seq")), mono=_finite(data.get("mono")),
        )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int(value: object) -> int | None:
    return value if _is_int(value) else None  # type: ignore[return-value]


def _number(value: object) -> float | None:
    """Any number, NaN included (a diverged rank's loss)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _finite(value: object) -> float | None:
    number = _number(value)
    return number if number is not None and math.isfinite(number) else None


def _duration(value: object) -> float | None:
    number = _finite(value)
    return number if number is not None and number >= 0 else None


def _durations(value: object) -> list[float] | None:
    if not isinstance(value, list):
        return None
    durations = [_duration(item) for item in value]
    return [d for d in durations if d is not None] if all(d is not None for d in durations) else None


def _milestones(value: object) -> dict[str, float | bool] | None:
    if not isinstance(value, dict):
        return None
    return {key: item if isinstance(item, bool) else float(item) for key, item in value.items()
            if isinstance(key, str) and (isinstance(item, bool) or _finite(item) is not None)}


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _member(kind: type[_E], value: object, unknown: _E) -> _E:
    try:
        return kind(value)
    except ValueError:
        return unknown


def write_heartbeat(path: Path, heartbeat: Heartbeat) -> None:
    """Rewrite the heartbeat atomically; on a full disk, in the file's own block.

    A full disk must not silence a rank that trains on: the supervisor would judge the silence a
    hang and kill a healthy run, and the rank's last word (why it exits) would be lost.
    """
    rewrite_json(path, heartbeat.to_dict())


def read_heartbeat(path: Path) -> Heartbeat | None:
    """The heartbeat at ``path`` as a typed record (``Heartbeat.from_dict``), or ``None`` when
    missing or malformed."""
    try:
        return Heartbeat.from_dict(read_json(path))
    except MalformedHeartbeat:
        return None
