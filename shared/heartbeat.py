"""Heartbeat schema (docs/cli.md, "The run directory"): the worker's only live channel to the supervisor.

Each rank rewrites ``heartbeat/rank{R}.json`` atomically from its training loop, at least once per
optimizer step and at every phase change. It is never written from a background thread: a thread
would keep beating while the loop is stuck, which is exactly the hang we must detect.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from shared.atomic_io import read_json, rewrite_json


@dataclass
class Heartbeat:
    pid: int
    rank: int
    world_size: int
    step: int  # last completed optimizer step (-1 before the first one)
    phase: str  # a shared.vocabulary.Phase
    # Wall-clock seconds since the epoch when written, by the rank's own clock: for people and
    # reports only. No verdict compares it with another process's clock (docs/reliability.md).
    time: float
    loss: float | None = None
    tokens_per_s: float | None = None
    last_checkpoint: str | None = None  # file name of the newest checkpoint this run saved/loaded
    status: str = "running"  # a shared.vocabulary.RankStatus
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
    def from_dict(cls, data: dict[str, Any]) -> Heartbeat:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def write_heartbeat(path: Path, heartbeat: Heartbeat) -> None:
    """Rewrite the heartbeat atomically; on a full disk, in the file's own block.

    A full disk must not silence a rank that trains on: the supervisor would judge the silence a
    hang and kill a healthy run, and the rank's last word (why it exits) would be lost.
    """
    rewrite_json(path, heartbeat.to_dict())


def read_heartbeat(path: Path) -> Heartbeat | None:
    """The heartbeat at ``path``, or ``None`` when missing or malformed."""
    data = read_json(path)
    if not isinstance(data, dict):
        return None
    try:
        return Heartbeat.from_dict(data)
    except TypeError:
        return None
