"""The run's checkpoint store (``--checkpoint-uri``) as the supervisor's cycle uses it.

Opened and checked before anything trains (a refusal is one line), ``run_identity.json``
restored on a new machine, the background uploader (``remote_sync.RemoteSync``) started, the
checkpoint a launch resumes from chosen over local and remote checkpoints together, and the
upload waited for before an ending. Node 0 only: node R >= 1 writes no checkpoints. Without a
URI every method is a no-op, so the cycle calls them unconditionally.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

from shared.exit_codes import SupervisorExit
from shared.remote.store import CheckpointStore
from shared.run_dir import RunDir, step_from_checkpoint_name
from shared.supervisor_state import read_supervisor_state
from shared.vocabulary import EventKind, SupervisorStateName
from supervisor import messages, policy
from supervisor.checkpoints import remote_sync
from supervisor.checkpoints.checkpoint_selection import Selection
from supervisor.checkpoints.remote_sync import RemoteSync
from supervisor.journal import Journal
from supervisor.run_config import RunConfig
from supervisor.stop_signals import StopSignals


class RemoteCheckpoints:
    def __init__(self, config: RunConfig, run_dir: RunDir, journal: Journal, stops: StopSignals,
                 select: Callable[..., Selection]) -> None:
        self.config = config
        self.run_dir = run_dir
        self.journal = journal
        self.stops = stops
        self._select = select  # the local selection (the wiring's)
        self.store: CheckpointStore | None = None  # opened by open(), node 0 only
        self.uploader: RemoteSync | None = None  # its background uploader

    def close(self) -> None:
        if self.uploader is not None:
            self.uploader.close()

    def resolve_uri(self) -> None:
        """No --checkpoint-uri given: the one this run directory's previous supervisor recorded."""
        if self.config.checkpoint_uri is not None:
            return
        previous = read_supervisor_state(self.run_dir.supervisor_state)
        recorded = previous.run_config.get("checkpoint_uri") if previous is not None else None
        if isinstance(recorded, str) and recorded:
            self.config.checkpoint_uri = recorded

    def open(self) -> str | None:
        """Open and check the store before anything trains; the refusal's one line, or None.

        On a new machine (no run_identity.json) the identity is restored from the store first,
        so the worker's identity check applies to the resumed run."""
        uri = self.config.checkpoint_uri
        if uri is None or not self.config.is_node_zero:
            return None  # node R >= 1 writes no checkpoints: node 0's supervisor syncs the run
        from shared.remote import CheckpointUriError, ObjectStoreError

        try:
            self.store = remote_sync.open_checked(uri)
            restored = remote_sync.restore_identity(self.store, self.run_dir)
        except (CheckpointUriError, ObjectStoreError) as exc:
            return messages.store_refused(exc)
        except OSError as exc:
            return messages.identity_not_restored(str(exc.strerror or exc))
        if restored:
            self.journal.event(EventKind.DOWNLOADED, messages.identity_restored(self.store.uri), uri=self.store.uri)
        return None

    def start_uploads(self) -> None:
        if self.store is None or self.config.checkpoint_uri is None:
            return
        from shared.remote import open_store

        # Its own store (its own client): the uploader thread and the launches never share one.
        store = open_store(self.config.checkpoint_uri, **remote_sync.SYNC_S3_OPTIONS)
        self.uploader = RemoteSync(store, self.run_dir, self.journal.event,
                                 keep_last=policy.keep_last_from_worker_args(self.config.worker_args),
                                 interval_s=self.config.monitor_interval)
        self.uploader.start()

    def select(self) -> Selection:
        """Checkpoint selection over local and remote checkpoints together.

        Local files are validated first; then a committed remote checkpoint newer than the one
        chosen is downloaded (SHA-256 checked against its commit, installed atomically) and the
        selection runs again, so the download is validated like any local file. A download that
        fails (bytes or validation) is marked bad in the store and the next older one is tried.
        """
        from shared.remote import ObjectStoreError

        tried: set[int] = set()
        fetched: set[str] = set()
        quarantined: list = []
        while True:
            with self.stops.interruptible():  # a load-probe can take minutes: Ctrl-C must not wait for it
                selection = self._select(self.run_dir.root, probe_timeout=self.config.probe_timeout)
            for verdict, _ in selection.quarantined:
                if verdict.path.name in fetched and self.store is not None:
                    step = self.run_dir_step(verdict.path.name)
                    remote_sync.mark_bad(self.store, step, f"failed validation: {verdict.reason}",
                                         self.journal.event)
                    if self.uploader is not None:
                        self.uploader.resync()
            quarantined.extend(selection.quarantined)
            selection = dataclasses.replace(selection, quarantined=list(quarantined))
            if self.store is None or selection.unsupported is not None:
                return selection
            chosen = selection.chosen.step if selection.chosen is not None else None
            try:
                path = remote_sync.fetch_newer(self.store, self.run_dir, chosen, tried, self.journal.event)
            except (ObjectStoreError, OSError) as exc:
                self.journal.event(EventKind.WARNING, messages.remote_unlisted(exc), uri=self.store.uri)
                return selection
            if path is None:
                if tried and self.uploader is not None:
                    self.uploader.resync()  # a download may have been marked bad
                return selection
            fetched.add(path.name)

    @staticmethod
    def run_dir_step(name: str) -> int:
        step = step_from_checkpoint_name(name)
        assert step is not None, name
        return step

    def settle(self, state: SupervisorStateName, line: str, code: SupervisorExit) -> tuple[str, SupervisorExit]:
        """Before an ending: the newest checkpoint committed to the store, or the ending says it is not.

        ``finished`` never claims an upload that did not happen: when the last checkpoint could
        not be committed within --upload-timeout, the line says so and a finished run exits 7."""
        if self.uploader is None or state == SupervisorStateName.REFUSED:
            return line, code
        result = self.uploader.flush(self.config.upload_timeout, give_up=lambda: self.stops.forced)
        uri = self.uploader.record.uri
        if result.uploaded:
            if result.newest_local is not None:
                line = messages.committed_to(line, result.newest_local, uri)
            return line, code
        note = messages.not_uploaded(result.newest_local, uri, self.config.upload_timeout, result.newest_committed,
                                     result.error)
        self.journal.event(EventKind.WARNING, note, uri=uri, newest_local_step=result.newest_local,
                           newest_committed_step=result.newest_committed, not_uploaded=True)
        if state == SupervisorStateName.FINISHED:
            line = line.replace(f"(exit {int(code)})", f"(exit {int(SupervisorExit.FINISHED_NOT_UPLOADED)})")
            code = SupervisorExit.FINISHED_NOT_UPLOADED
        return f"{line}; {note}", code
