"""Pure decisions of the checkpoint store wiring (``supervisor.checkpoints.remote_sync``): data in, verdict out.

Kept apart from ``supervisor.policy`` (the restart decisions) so each can be read alone; both
are unit-tested without processes, files or a server.
"""
from __future__ import annotations

from dataclasses import dataclass, field

# Retries of an unreachable store: the first retry soon, then doubling up to this.
UPLOAD_RETRY_INITIAL_S = 1.0
UPLOAD_RETRY_MAX_S = 30.0


@dataclass(frozen=True)
class UploadPlan:
    """What the uploader does next: upload ``step`` (None: nothing to do) and skip ``skipped``."""

    step: int | None
    skipped: list[int] = field(default_factory=list)


def next_upload(local_steps: list[int], newest_committed: int | None, already_skipped: set[int]) -> UploadPlan:
    """The newest local checkpoint that is newer than the newest committed remote one.

    Why the newest only: at most one upload is in flight, and a backlog (the store was slow or
    away) must stay bounded. Uploading the newest first means the bucket is as fresh as it can
    be as soon as possible; the intermediate checkpoints are skipped (and named once, so the
    person knows the bucket has gaps) rather than queued without end. Steps at or below the
    newest committed one are never uploaded again.
    """
    floor = -1 if newest_committed is None else newest_committed
    pending = sorted(s for s in set(local_steps) if s > floor)
    if not pending:
        return UploadPlan(None)
    newest = pending[-1]
    return UploadPlan(newest, [s for s in pending[:-1] if s not in already_skipped])


def next_retry_delay(previous_s: float | None) -> float:
    """Backoff between attempts while the store fails: 1 s, 2 s, 4 s... at most 30 s."""
    if previous_s is None:
        return UPLOAD_RETRY_INITIAL_S
    return min(UPLOAD_RETRY_MAX_S, max(UPLOAD_RETRY_INITIAL_S, previous_s * 2))


def upload_lag(newest_local: int | None, newest_committed: int | None) -> int | None:
    """Steps the bucket is behind the local disk (0: up to date; None: nothing local yet)."""
    if newest_local is None:
        return None
    return max(0, newest_local - (newest_committed if newest_committed is not None else -1))


def is_uploaded(newest_local: int | None, newest_committed: int | None) -> bool:
    """Whether the ending may say the run's newest checkpoint is in the store."""
    return newest_local is None or (newest_committed is not None and newest_committed >= newest_local)


def remote_to_try(committed_steps: list[int], chosen_local: int | None, tried: set[int]) -> int | None:
    """The remote checkpoint to download before a launch, or None.

    The newest committed remote step that is newer than the local checkpoint selection chose
    (so newer than every valid local file) and was not tried already in this selection (a
    download that failed its check is marked bad and never offered twice).
    """
    floor = -1 if chosen_local is None else chosen_local
    newer = [s for s in committed_steps if s > floor and s not in tried]
    return max(newer) if newer else None


def keep_last_from_worker_args(worker_args: list[str]) -> int | None:
    """The worker's ``--keep_last_n_checkpoints N`` (N >= 1), which the bucket keeps too; None: keep all."""
    value: str | None = None
    for i, arg in enumerate(worker_args):
        if arg == "--keep_last_n_checkpoints" and i + 1 < len(worker_args):
            value = worker_args[i + 1]
        elif arg.startswith("--keep_last_n_checkpoints="):
            value = arg.partition("=")[2]
    try:
        n = int(value) if value is not None else -1
    except ValueError:
        return None
    return n if n >= 1 else None
