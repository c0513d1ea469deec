"""``gpt2sup run --checkpoint-uri``: the supervisor's side of the checkpoint store.

Why the supervisor and not the worker: it outlives the ranks (a crashed attempt's checkpoint is
still uploaded), it is not in the training step (an upload never stalls one), and it already
decides, before each launch, which checkpoint a run resumes from.

- ``open_checked``: open the store and ``check_access()`` before training (one line on failure).
- ``RemoteSync``: a background thread uploading node 0's new ``model_NNNNN.pt`` files one at a
  time (``supervisor.policy.next_upload``: newest first, intermediate ones skipped and
  said so), committing each, pruning the bucket to the worker's keep-last-N, refreshing the
  ``run_identity.json`` side file, retrying with backoff while the store is away. It writes
  ``remote_sync.json`` in the run directory (URI, newest committed step, lag, last error) for
  ``gpt2sup status``, and ``flush(timeout)`` lets an ending wait for the last checkpoint.
- ``fetch_newer``: before a launch, download a committed remote checkpoint newer than the local
  one chosen (the layer verifies its SHA-256 and installs it atomically).

No credential is taken, stored or printed here: the store's errors are one-line texts the
storage layer built without them; only the URI is recorded.
"""
from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from shared.atomic_io import write_json_atomic, write_text_atomic
from shared.remote import CheckpointStore, IntegrityError, ObjectStoreError, open_store
from shared.remote.uri import shown
from shared.run_dir import RunDir
from shared.vocabulary import EventKind
from supervisor import policy

IDENTITY_NAME = "run_identity.json"
# The uploader's S3 client: a store that stops answering (a hung server, a cut network) is
# noticed in ~10 s, not minutes; one try per request, because the uploader retries itself, with
# backoff, and says so once (botocore's own retries would hide the outage behind silent waits).
SYNC_S3_OPTIONS: dict[str, Any] = {"connect_timeout": 5.0, "read_timeout": 10.0, "max_attempts": 1}

Emit = Callable[..., None]  # journal.event(kind, line, **details)
# The uploader's CPU priority (nice), below the training ranks': on a host whose cores the ranks
# keep busy (data loading, a CPU run), hashing and sending a checkpoint waits for them, never the
# other way round. Threads it starts (the parts, the digest) inherit it.
UPLOAD_NICENESS = 10


def lower_this_threads_priority(niceness: int) -> None:
    """Raise the calling thread's nice value by ``niceness`` (Linux: nice is per thread, and a
    thread's nice value is inherited by the threads it creates). Best effort: elsewhere, or when
    the system refuses, the upload runs at normal priority."""
    with contextlib.suppress(AttributeError, OSError):
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + niceness))


def open_checked(uri: str) -> CheckpointStore:
    """The store ``uri`` names, proven usable (list, write, delete a probe); raises
    ``CheckpointUriError`` or ``StoreAccessError`` with a one-line, secret-free message."""
    store = open_store(uri, **SYNC_S3_OPTIONS)
    store.check_access()
    return store


@dataclass
class RemoteRecord:
    """``remote_sync.json``: what ``gpt2sup status`` shows about the store (never a credential)."""

    uri: str
    newest_committed_step: int | None = None
    newest_committed_name: str | None = None
    newest_local_step: int | None = None
    upload_lag_steps: int | None = None
    uploading: str | None = None
    last_upload_at: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    skipped: list[int] | None = None
    updated_at: float = 0.0


def restore_identity(store: CheckpointStore, run_dir: RunDir) -> bool:
    """A new machine: ``run_identity.json`` from the store when the run directory has none, so
    the worker's identity check applies to the resumed run too. True when restored."""
    if run_dir.run_identity.exists():
        return False
    data = store.get_side_file(IDENTITY_NAME)
    if data is None:
        return False
    write_text_atomic(run_dir.run_identity, data.decode("utf-8"), durable=True)
    return True


def fetch_newer(store: CheckpointStore, run_dir: RunDir, chosen_local: int | None, tried: set[int],
                emit: Emit) -> Path | None:
    """Download the newest committed remote checkpoint newer than ``chosen_local`` into the run
    directory, or None. A download whose bytes do not match its commit is marked bad in the
    store (never deleted) and the next older one is tried."""
    while True:
        committed = [entry.step for entry in store.list_committed()]
        step = policy.remote_to_try(committed, chosen_local, tried)
        if step is None:
            return None
        tried.add(step)
        started = time.monotonic()
        try:
            path = store.download(step, run_dir.root)
        except IntegrityError as exc:
            mark_bad(store, step, f"download did not match its commit: {exc}", emit)
            continue
        emit(EventKind.DOWNLOADED, f"downloaded {path.name} from {store.uri} (newer than every valid local "
             f"checkpoint; {time.monotonic() - started:.1f}s); validating it like any local file",
             checkpoint=path.name, step=step, uri=store.uri)
        return path


def mark_bad(store: CheckpointStore, step: int, reason: str, emit: Emit) -> None:
    """Condemn a remote commit (the object stays for a person to inspect) and say so."""
    try:
        store.mark_bad(step, reason)
        done = "marked bad in the store (not deleted)"
    except ObjectStoreError as exc:
        done = f"could not mark it bad in the store ({exc})"
    emit(EventKind.WARNING, f"remote checkpoint step {step} in {store.uri} failed its check ({reason}); {done}",
         step=step, uri=store.uri, remote_bad=True)


@dataclass(frozen=True)
class FlushResult:
    uploaded: bool
    newest_local: int | None
    newest_committed: int | None
    error: str | None


class RemoteSync:
    """The background uploader of one run directory (node 0's), one upload in flight at most."""

    def __init__(self, store: CheckpointStore, run_dir: RunDir, emit: Emit, *, keep_last: int | None,
                 interval_s: float) -> None:
        self.store = store
        self.run_dir = run_dir
        self.emit = emit
        self.keep_last = keep_last
        self.interval_s = max(0.05, interval_s)
        self.record = RemoteRecord(uri=shown(store.uri))
        self._lock = threading.Condition()
        self._wake = threading.Event()
        self._closing = False
        self._flushing = False
        self._retry_s: float | None = None
        self._warned = False
        self._skipped: set[int] = set()
        self._identity_sig: tuple[int, int] | None = None
        self._thread = threading.Thread(target=self._loop, name="gpt2sup-remote-sync", daemon=True)

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        self.resync()
        self._thread.start()

    def resync(self) -> None:
        """Take the newest committed step from the store again (a commit was marked bad since:
        the same step, written again by a resumed run, must be uploaded again)."""
        try:
            committed = self.store.list_committed()
        except ObjectStoreError as exc:
            self._failed(exc)
            return
        with self._lock:
            self.record.newest_committed_step = committed[0].step if committed else None
            self.record.newest_committed_name = committed[0].name if committed else None
        self._write_record()

    def close(self) -> None:
        self._closing = True
        self._wake.set()
        self._thread.join(timeout=5)

    def flush(self, timeout_s: float, give_up: Callable[[], bool] = lambda: False) -> FlushResult:
        """Wait (at most ``timeout_s``, or until ``give_up()``: a second Ctrl-C) until the newest
        local checkpoint is committed."""
        deadline = time.monotonic() + timeout_s
        self._flushing = True
        try:
            with self._lock:
                while True:
                    local = self._newest_local()
                    if policy.is_uploaded(local, self.record.newest_committed_step):
                        return FlushResult(True, local, self.record.newest_committed_step, None)
                    left = deadline - time.monotonic()
                    if left <= 0 or not self._thread.is_alive() or give_up():
                        return FlushResult(False, local, self.record.newest_committed_step, self.record.last_error)
                    self._wake.set()
                    self._lock.wait(min(left, 1.0))
        finally:
            self._flushing = False

    # -- the thread --------------------------------------------------------------------------------
    def _loop(self) -> None:
        lower_this_threads_priority(UPLOAD_NICENESS)
        while not self._closing:
            try:
                delay = self._tick()
            except Exception as exc:  # noqa: BLE001 - the uploader must never take the supervisor down
                self._failed(exc)
                delay = self._retry_s or self.interval_s
            if self._flushing:
                delay = min(delay, 1.0)
            self._wake.wait(delay)
            self._wake.clear()

    def _tick(self) -> float:
        local = self.run_dir.list_checkpoints()
        steps = [c.step for c in local]
        self.record.newest_local_step = max(steps) if steps else None
        try:
            self._sync_identity()
            plan = policy.next_upload(steps, self.record.newest_committed_step, self._skipped)
            if plan.skipped:
                self._skipped.update(plan.skipped)
                self.emit(EventKind.UPLOAD_SKIPPED, f"not uploading {_names(plan.skipped)} to {self.record.uri}: "
                          f"a newer checkpoint is waiting (one upload at a time, newest first)",
                          steps=plan.skipped, uri=self.record.uri)
            if plan.step is not None:
                self._upload(next(c.path for c in local if c.step == plan.step))
        except (ObjectStoreError, OSError) as exc:
            self._failed(exc)
            self._write_record()
            return self._retry_s or self.interval_s
        self._recovered()
        self._write_record()
        return self.interval_s

    def _upload(self, path: Path) -> None:
        self.record.uploading = path.name
        self._write_record()
        started = time.monotonic()
        try:
            entry = self.store.upload_checkpoint(path)
        except FileNotFoundError:
            return  # pruned locally (keep-last-N) before its turn: the next tick sees what is left
        finally:
            self.record.uploading = None
        with self._lock:
            self.record.newest_committed_step = entry.step
            self.record.newest_committed_name = entry.name
            self.record.last_upload_at = time.time()
            self._lock.notify_all()
        seconds = time.monotonic() - started
        self.emit(EventKind.UPLOADED, f"uploaded and committed {entry.name} to {self.record.uri} "
                  f"({(entry.size or 0) / 1e6:.1f} MB in {seconds:.1f}s, sha256 verified)",
                  checkpoint=entry.name, step=entry.step, uri=self.record.uri, size=entry.size,
                  sha256=entry.sha256, seconds=round(seconds, 3))
        if self.keep_last is not None:
            pruned = self.store.prune(self.keep_last)
            if pruned:
                self.emit(EventKind.PRUNED, f"removed {_names([p.step for p in pruned])} from {self.record.uri} "
                          f"(keep last {self.keep_last}, newer ones committed)", steps=[p.step for p in pruned],
                          uri=self.record.uri)

    def _sync_identity(self) -> None:
        path = self.run_dir.run_identity
        try:
            st = path.stat()
        except FileNotFoundError:
            return
        sig = (st.st_mtime_ns, st.st_size)
        if sig != self._identity_sig:
            self.store.put_side_file(IDENTITY_NAME, path.read_bytes())
            self._identity_sig = sig

    # -- faults ------------------------------------------------------------------------------------
    def _failed(self, exc: BaseException) -> None:
        text = str(exc) if isinstance(exc, ObjectStoreError) else f"{type(exc).__name__}: {getattr(exc, 'strerror', None) or exc}"
        self.record.last_error = " ".join(text.split())[:300]
        self.record.last_error_at = time.time()
        self._retry_s = policy.next_retry_delay(self._retry_s)
        if not self._warned:
            self._warned = True
            self.emit(EventKind.WARNING, f"cannot upload to {self.record.uri} ({self.record.last_error}); training "
                      f"goes on, retrying with backoff (up to {policy.UPLOAD_RETRY_MAX_S:g}s)",
                      uri=self.record.uri, upload_error=True)

    def _recovered(self) -> None:
        if self._warned:
            self.emit(EventKind.WARNING, f"the store {self.record.uri} answers again; uploads caught up to step "
                      f"{self.record.newest_committed_step}", uri=self.record.uri, upload_error=False)
        self._warned = False
        self._retry_s = None
        self.record.last_error = None

    # -- the record --------------------------------------------------------------------------------
    def _newest_local(self) -> int | None:
        newest = self.run_dir.newest_checkpoint()
        return newest.step if newest is not None else None

    def _write_record(self) -> None:
        self.record.upload_lag_steps = policy.upload_lag(self.record.newest_local_step,
                                                                self.record.newest_committed_step)
        self.record.skipped = sorted(self._skipped) or None
        self.record.updated_at = time.time()
        try:
            write_json_atomic(self.run_dir.remote_sync, asdict(self.record), create_parent=False)
        except OSError:
            pass  # a full or read-only disk: status shows an older record; the upload itself goes on


def _names(steps: list[int]) -> str:
    shown_steps = ", ".join(str(s) for s in steps[:5]) + (f" and {len(steps) - 5} more" if len(steps) > 5 else "")
    return f"checkpoint step(s) {shown_steps}"
