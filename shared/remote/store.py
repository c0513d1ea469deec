"""The commit protocol of a checkpoint store, written once over a few backend primitives.

A backend (S3, a local or mounted directory) only knows how to list, put, get and delete
objects under its prefix and how to upload a file with a verified checksum. The order of those
operations, which is what makes the store safe to resume from, lives here:

- upload: hash the local file, withdraw any earlier commit of the same name, upload the object
  and check its checksum against the store, and only then write the commit marker;
- download: only a committed, not bad-marked checkpoint, into a temporary file that is fsynced,
  checked against the marker's SHA-256, and only then renamed into place;
- mark bad: a marker beside the object, which is never deleted for it;
- prune: only committed checkpoints older than the newest ``keep_last`` committed ones, the
  marker before the object (so a prune cut short leaves an uncommitted object, never a commit
  without its object).
"""
from __future__ import annotations

import os
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from shared.atomic_io import fsync_path
from shared.remote.checksums import FileDigests, file_digests, sha256_of_file
from shared.remote.errors import IntegrityError, NotCommittedError
from shared.remote.records import (
    COMMITTED,
    BadMarker,
    CommitMarker,
    RemoteCheckpoint,
    bad_marker_name,
    check_side_file_name,
    checkpoint_names,
    classify,
    commit_marker_name,
    committed_newest_first,
    parse_bad_marker,
    parse_commit_marker,
    prune_plan,
)
from shared.run_dir import step_from_checkpoint_name

MAX_REASON_CHARS = 500


class CheckpointStore(ABC):
    """One prefix of a store, holding one run's checkpoints and side files."""

    uri: str  # how messages name this store: s3://bucket/prefix or file:///path (never a secret)
    # The uploader computes each part's CRC-32 from the bytes it sends (S3): the digests thread
    # then reads the file for its SHA-256 only, and ``_upload`` gets digests without CRC-32s.
    crc32_while_sending: bool = False

    # --- backend primitives -------------------------------------------------------------------
    @abstractmethod
    def check_access(self) -> None:
        """Fail fast (StoreAccessError, one line) when the store cannot be read and written."""

    @abstractmethod
    def _list(self) -> dict[str, int]:
        """Names directly under the prefix and their sizes (no temporary or nested objects)."""

    @abstractmethod
    def _get_bytes(self, name: str) -> bytes | None:
        """A small object's bytes, ``None`` when it does not exist."""

    @abstractmethod
    def _put_bytes(self, name: str, data: bytes) -> None:
        """Write a small object whole or not at all."""

    @abstractmethod
    def _part_size(self, size: int) -> int | None:
        """The part size a file of ``size`` bytes is uploaded with (``None``: a single part)."""

    @abstractmethod
    def _upload(self, name: str, local: Path, digests: Callable[[], FileDigests]) -> str:
        """Upload ``local`` as ``name`` and verify it against ``digests()`` (the local file's,
        computed while the bytes travel: call it after the transfer; without CRC-32s when
        ``crc32_while_sending``); returns how it was verified. Raises IntegrityError when the
        store holds other bytes."""

    @abstractmethod
    def _download(self, name: str, dest: Path) -> None:
        """Copy the object ``name`` into the new file ``dest``."""

    @abstractmethod
    def _delete(self, name: str) -> None:
        """Delete an object; absent is fine."""

    def key_of(self, name: str) -> str:
        """The full location of ``name``, for messages and records."""
        return f"{self.uri.rstrip('/')}/{name}"

    # --- the protocol -------------------------------------------------------------------------
    def inventory(self) -> list[RemoteCheckpoint]:
        """Every checkpoint name under the prefix with its state, newest step first."""
        listing = self._list()
        entries = []
        for name in checkpoint_names(listing):
            commit = parse_commit_marker(self._get_bytes(commit_marker_name(name)), name) \
                if commit_marker_name(name) in listing else None
            bad = parse_bad_marker(self._get_bytes(bad_marker_name(name)), name) \
                if bad_marker_name(name) in listing else None
            entries.append(classify(name, self.key_of(name), listing.get(name), commit, bad))
        return sorted(entries, key=lambda e: e.step, reverse=True)

    def list_committed(self) -> list[RemoteCheckpoint]:
        """Committed, not bad-marked checkpoints, newest first."""
        return committed_newest_first(self.inventory())

    def upload_checkpoint(self, local_path: Path) -> RemoteCheckpoint:
        """Upload a local ``model_N.pt`` under its own name, verify it, then commit it."""
        local_path = Path(local_path)
        name = local_path.name
        step = step_from_checkpoint_name(name)
        if step is None:
            raise ValueError(f"not a checkpoint file name: {name!r} (expected model_NNNNN.pt)")
        size = local_path.stat().st_size
        # The local digests are computed by a second thread while the upload reads the same file
        # (hashlib releases the GIL): hashing first, then uploading, made an upload ~35% slower
        # than a plain one (bench/bench_remote.py). The marker is written only after both.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-digest") as pool:
            hashing = pool.submit(file_digests, local_path, self._part_size(size), crc32=not self.crc32_while_sending)
            # A new upload of a name withdraws its old commit first: between the two, the step
            # is honestly uncommitted rather than committed with a marker for other bytes.
            self._delete(commit_marker_name(name))
            verified_by = self._upload(name, local_path, hashing.result)
            digests = hashing.result()
        marker = CommitMarker(
            name=name, step=step, size=digests.size, sha256=digests.sha256_hex, commit_id=uuid.uuid4().hex,
            committed_at=time.time(), verified_by=verified_by,
        )
        self._put_bytes(commit_marker_name(name), marker.to_json().encode("utf-8"))
        return RemoteCheckpoint(
            step, name, self.key_of(name), COMMITTED, digests.size, sha256=marker.sha256,
            commit_id=marker.commit_id, committed_at=marker.committed_at,
        )

    def _committed_entry(self, step: int) -> RemoteCheckpoint:
        for entry in self.list_committed():
            if entry.step == step:
                return entry
        raise NotCommittedError(f"{self.uri}: no committed checkpoint for step {step}")

    def download(self, step: int, dest_dir: Path) -> Path:
        """Download the committed checkpoint of ``step`` into ``dest_dir`` under its own name.

        The bytes land in a hidden temporary file, are fsynced and checked against the commit
        marker's size and SHA-256, and only then renamed into place: a reader of ``dest_dir``
        never sees a partial or unverified checkpoint. A mismatch raises IntegrityError (the
        caller decides whether to ``mark_bad``); the temporary file is removed.
        """
        entry = self._committed_entry(step)
        dest_dir = Path(dest_dir)
        dest_dir.mkdir(parents=True, exist_ok=True)
        final = dest_dir / entry.name
        tmp = dest_dir / f".{entry.name}.{uuid.uuid4().hex[:8]}.download.tmp"
        try:
            self._download(entry.name, tmp)
            fsync_path(tmp)
            size = tmp.stat().st_size
            sha = sha256_of_file(tmp)
            if size != entry.size or sha != entry.sha256:
                raise IntegrityError(
                    f"{entry.key}: downloaded bytes do not match the commit "
                    f"(size {size} vs {entry.size}, sha256 {sha[:12]} vs {(entry.sha256 or '')[:12]}); not installed"
                )
            os.replace(tmp, final)
            fsync_path(dest_dir)
        finally:
            tmp.unlink(missing_ok=True)
        return final

    def mark_bad(self, step: int, reason: str) -> None:
        """Condemn the current commit of ``step`` (the object stays, for a person to inspect)."""
        for entry in self.inventory():
            if entry.step == step and entry.commit_id is not None:
                one_line = " ".join(reason.split())[:MAX_REASON_CHARS]
                marker = BadMarker(entry.name, step, entry.commit_id, one_line, time.time())
                self._put_bytes(bad_marker_name(entry.name), marker.to_json().encode("utf-8"))
                return
        raise NotCommittedError(f"{self.uri}: no commit for step {step} to mark bad")

    def prune(self, keep_last: int) -> list[RemoteCheckpoint]:
        """Delete committed checkpoints older than the newest ``keep_last`` committed ones."""
        doomed = prune_plan(self.inventory(), keep_last)
        for entry in doomed:
            self._delete(commit_marker_name(entry.name))  # uncommit first
            self._delete(entry.name)
            self._delete(bad_marker_name(entry.name))  # a stale one, for an older commit
        return doomed

    def put_side_file(self, name: str, data: bytes) -> None:
        """Store a small file beside the checkpoints (``run_identity.json``), whole or not at all."""
        self._put_bytes(check_side_file_name(name), data)

    def get_side_file(self, name: str) -> bytes | None:
        """A side file's bytes, ``None`` when the store has none."""
        return self._get_bytes(check_side_file_name(name))
