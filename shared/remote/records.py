"""What a checkpoint store holds, as records, and the pure decisions on them.

A store under one prefix holds, per checkpoint, up to three objects that share the checkpoint's
file name (so a person browsing the bucket finds ``model_00500.pt`` where they expect it):

- ``model_00500.pt``: the checkpoint's bytes, exactly as saved locally;
- ``model_00500.pt.commit.json``: the commit marker, written LAST, only after the object's
  checksum was verified: no marker, no checkpoint (a half-uploaded or half-deleted object is
  never taken for one);
- ``model_00500.pt.bad.json``: written when a committed checkpoint failed a check after download;
  it names the commit it condemns (``commit_id``), so a later re-upload of the same step is not
  condemned with it. The object itself is never deleted for being bad: a person may want it.

Everything else directly under the prefix is a side file (``run_identity.json``). The functions
here take listings and parsed markers and return verdicts; they never touch a store, so they are
unit-tested without a server.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from typing import Any

from shared.run_dir import step_from_checkpoint_name

COMMIT_SUFFIX = ".commit.json"
BAD_SUFFIX = ".bad.json"
COMMIT_FORMAT = "gpt2sup.checkpoint-commit"
BAD_FORMAT = "gpt2sup.checkpoint-bad"
MARKER_VERSION = 1
SIDE_FILE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

# The states of one checkpoint name in a store (``inventory``), from best to worst.
COMMITTED = "committed"
BAD = "bad"
UNCOMMITTED = "uncommitted"  # an object without a (readable, matching) commit marker
MISSING_OBJECT = "missing-object"  # a commit marker whose object is gone (a prune cut short)


def commit_marker_name(name: str) -> str:
    return name + COMMIT_SUFFIX


def bad_marker_name(name: str) -> str:
    return name + BAD_SUFFIX


@dataclass(frozen=True)
class CommitMarker:
    """The commit of one checkpoint object: what its bytes must be, and how that was checked."""

    name: str
    step: int
    size: int
    sha256: str
    commit_id: str
    committed_at: float
    verified_by: str  # "store-crc32" (the store's own checksum matched; "store-sha256" in older markers) or "reread"

    def to_json(self) -> str:
        return json.dumps({"format": COMMIT_FORMAT, "version": MARKER_VERSION, **asdict(self)}, sort_keys=True) + "\n"


@dataclass(frozen=True)
class BadMarker:
    """One committed checkpoint found bad: which commit, and why (one line)."""

    name: str
    step: int
    commit_id: str
    reason: str
    marked_at: float

    def to_json(self) -> str:
        return json.dumps({"format": BAD_FORMAT, "version": MARKER_VERSION, **asdict(self)}, sort_keys=True) + "\n"


@dataclass(frozen=True)
class RemoteCheckpoint:
    """One checkpoint name in a store and its state; ``key`` is where it lives, for messages."""

    step: int
    name: str
    key: str
    state: str
    size: int | None
    sha256: str | None = None
    commit_id: str | None = None
    committed_at: float | None = None
    bad_reason: str | None = None


def _load_object(data: bytes | None, expected_format: str) -> dict[str, Any] | None:
    if data is None:
        return None
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(obj, dict) or obj.get("format") != expected_format or obj.get("version") != MARKER_VERSION:
        return None
    return obj


def parse_commit_marker(data: bytes | None, name: str) -> CommitMarker | None:
    """A commit marker for the object ``name``, or ``None`` when absent, garbage or for another name."""
    obj = _load_object(data, COMMIT_FORMAT)
    if obj is None:
        return None
    try:
        marker = CommitMarker(
            name=str(obj["name"]), step=int(obj["step"]), size=int(obj["size"]), sha256=str(obj["sha256"]),
            commit_id=str(obj["commit_id"]), committed_at=float(obj["committed_at"]),
            verified_by=str(obj["verified_by"]),
        )
    except (KeyError, TypeError, ValueError):
        return None
    if marker.name != name or marker.step != step_from_checkpoint_name(name) or marker.size < 0:
        return None
    if not re.fullmatch(r"[0-9a-f]{64}", marker.sha256):
        return None
    return marker


def parse_bad_marker(data: bytes | None, name: str) -> BadMarker | None:
    """A bad marker for ``name``; ``None`` when absent. A marker that is present but unreadable
    still condemns (it was meant to): it comes back with ``commit_id="*"``."""
    if data is None:
        return None
    obj = _load_object(data, BAD_FORMAT)
    step = step_from_checkpoint_name(name) or 0
    if obj is None:
        return BadMarker(name, step, "*", "unreadable bad marker", 0.0)
    try:
        return BadMarker(
            name=name, step=step, commit_id=str(obj["commit_id"]), reason=str(obj.get("reason", "")),
            marked_at=float(obj.get("marked_at", 0.0)),
        )
    except (KeyError, TypeError, ValueError):
        return BadMarker(name, step, "*", "unreadable bad marker", 0.0)


def checkpoint_names(listing: dict[str, int]) -> set[str]:
    """Every checkpoint name a listing mentions, by its object or by either marker."""
    names: set[str] = set()
    for key in listing:
        for suffix in (COMMIT_SUFFIX, BAD_SUFFIX, ""):
            if key.endswith(suffix):
                base = key[: len(key) - len(suffix)] if suffix else key
                if step_from_checkpoint_name(base) is not None:
                    names.add(base)
                    break
    return names


def classify(
    name: str,
    key: str,
    object_size: int | None,
    commit: CommitMarker | None,
    bad: BadMarker | None,
) -> RemoteCheckpoint:
    """The state of one checkpoint name from what the store holds for it.

    Committed needs all of: the object, a readable commit marker, and the object's size equal to
    the marker's (an object replaced after its commit is not the committed one). A bad marker
    condemns only the commit it names (or every commit, when it is unreadable).
    """
    step = step_from_checkpoint_name(name)
    assert step is not None, name
    if commit is None:
        state = MISSING_OBJECT if object_size is None else UNCOMMITTED
        return RemoteCheckpoint(step, name, key, state, object_size)
    fields: dict[str, Any] = {"sha256": commit.sha256, "commit_id": commit.commit_id, "committed_at": commit.committed_at}
    if object_size is None:
        return RemoteCheckpoint(step, name, key, MISSING_OBJECT, None, **fields)
    if bad is not None and bad.commit_id in (commit.commit_id, "*"):
        return RemoteCheckpoint(step, name, key, BAD, object_size, bad_reason=bad.reason, **fields)
    if object_size != commit.size:
        return RemoteCheckpoint(step, name, key, UNCOMMITTED, object_size, **fields)
    return RemoteCheckpoint(step, name, key, COMMITTED, object_size, **fields)


def committed_newest_first(entries: list[RemoteCheckpoint]) -> list[RemoteCheckpoint]:
    """The committed checkpoints, newest step first (what a resume considers, in order)."""
    return sorted((e for e in entries if e.state == COMMITTED), key=lambda e: e.step, reverse=True)


def newest_committed(entries: list[RemoteCheckpoint]) -> RemoteCheckpoint | None:
    ordered = committed_newest_first(entries)
    return ordered[0] if ordered else None


def resume_candidates(entries: list[RemoteCheckpoint], newest_local_step: int | None) -> list[RemoteCheckpoint]:
    """Committed remote checkpoints newer than every valid local one, newest first: the ones worth
    downloading before a launch (an equal or older step is already on the local disk)."""
    floor = -1 if newest_local_step is None else newest_local_step
    return [e for e in committed_newest_first(entries) if e.step > floor]


def prune_plan(entries: list[RemoteCheckpoint], keep_last: int) -> list[RemoteCheckpoint]:
    """Which committed checkpoints a keep-last-``keep_last`` prune deletes, oldest first.

    Only committed ones older than the newest ``keep_last`` committed ones: bad-marked and
    uncommitted objects are neither kept nor counted nor deleted (an uncommitted one may be an
    upload in flight; a bad one is evidence), so nothing is deleted until ``keep_last`` newer
    good checkpoints are committed.
    """
    if keep_last < 1:
        raise ValueError("keep_last must be >= 1")
    return sorted(committed_newest_first(entries)[keep_last:], key=lambda e: e.step)


def check_side_file_name(name: str) -> str:
    """A side file's name, refused when it could collide with a checkpoint or a marker, or escape
    the prefix (``/``, ``..``)."""
    base = name
    for suffix in (COMMIT_SUFFIX, BAD_SUFFIX):
        base = base.removesuffix(suffix)
    if not SIDE_FILE_RE.match(name) or ".." in name or step_from_checkpoint_name(base) is not None:
        raise ValueError(f"not a valid side file name: {name!r}")
    return name
