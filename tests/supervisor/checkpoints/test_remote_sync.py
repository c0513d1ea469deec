"""The supervisor's uploader (``supervisor.checkpoints.remote_sync.RemoteSync``) driven tick by tick against
a real directory store (``file://``): backlog, keep-last-N in the store, the identity side file,
a store that goes away and comes back, an ending's wait, and the uploader's CPU priority. No
threads are started except in the flush and priority tests; ``_tick`` is the thread's one
iteration."""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from shared.remote import open_store
from shared.run_dir import RunDir
from supervisor.checkpoints.remote_sync import UPLOAD_NICENESS, RemoteSync


class Events:
    def __init__(self) -> None:
        self.records: list[tuple[str, str, dict[str, Any]]] = []

    def __call__(self, kind: Any, line: str, /, **details: Any) -> None:
        self.records.append((str(kind), line, details))

    def named(self, kind: str) -> list[tuple[str, str, dict[str, Any]]]:
        return [r for r in self.records if r[0] == kind]


def _checkpoint(run: Path, step: int) -> Path:
    path = run / f"model_{step:05d}.pt"
    path.write_bytes(f"checkpoint {step}".encode() * 100)
    return path


def _sync(tmp_path: Path, keep_last: int | None = None) -> tuple[RemoteSync, Events, Path, Path]:
    run, mount = tmp_path / "run", tmp_path / "mnt"
    run.mkdir()
    mount.mkdir()
    store = open_store(str(mount / "store"))
    store.check_access()
    events = Events()
    sync = RemoteSync(store, RunDir.at(run), events, keep_last=keep_last, interval_s=0.05)
    sync.resync()
    return sync, events, run, mount


def test_a_backlog_uploads_the_newest_and_says_which_were_skipped(tmp_path):
    sync, events, run, mount = _sync(tmp_path)
    for step in (3, 7, 11):
        _checkpoint(run, step)
    sync._tick()
    committed = [e.step for e in open_store(str(mount / "store")).list_committed()]
    assert committed == [11]
    assert events.named("upload_skipped")[0][2]["steps"] == [3, 7]
    assert len(events.named("uploaded")) == 1
    record = json.loads((run / "remote_sync.json").read_text())
    assert record["newest_committed_step"] == 11 and record["upload_lag_steps"] == 0 and record["skipped"] == [3, 7]
    sync._tick()  # nothing new: nothing uploaded, nothing said again
    assert len(events.named("uploaded")) == 1 and len(events.named("upload_skipped")) == 1


def test_keep_last_n_prunes_the_store_only_after_a_newer_commit(tmp_path):
    sync, events, run, mount = _sync(tmp_path, keep_last=2)
    for step in (3, 7, 11):
        _checkpoint(run, step)
        sync._tick()
    committed = [e.step for e in open_store(str(mount / "store")).list_committed()]
    assert committed == [11, 7]
    assert events.named("pruned")[0][2]["steps"] == [3]


def test_the_identity_side_file_is_uploaded_and_refreshed_when_it_changes(tmp_path):
    sync, _, run, mount = _sync(tmp_path)
    identity = run / "run_identity.json"
    identity.write_text('{"a": 1}')
    sync._tick()
    store = open_store(str(mount / "store"))
    assert store.get_side_file("run_identity.json") == b'{"a": 1}'
    time.sleep(0.01)
    identity.write_text('{"a": 22}')
    sync._tick()
    assert store.get_side_file("run_identity.json") == b'{"a": 22}'


def test_a_store_that_goes_away_warns_once_backs_off_and_catches_up(tmp_path):
    sync, events, run, mount = _sync(tmp_path)
    _checkpoint(run, 3)
    sync._tick()
    mount.rename(tmp_path / "unmounted")  # the mount is gone
    _checkpoint(run, 7)
    delays = [sync._tick() for _ in range(3)]
    assert delays == [1.0, 2.0, 4.0]
    warnings = events.named("warning")
    assert len(warnings) == 1 and warnings[0][2]["upload_error"] is True
    record = json.loads((run / "remote_sync.json").read_text())
    assert record["last_error"] and record["upload_lag_steps"] == 4 and record["newest_committed_step"] == 3
    (tmp_path / "unmounted").rename(mount)  # back
    _checkpoint(run, 11)
    assert sync._tick() == sync.interval_s
    assert [e.step for e in open_store(str(mount / "store")).list_committed()] == [11, 3]
    assert events.named("warning")[-1][2]["upload_error"] is False
    record = json.loads((run / "remote_sync.json").read_text())
    assert record["last_error"] is None and record["upload_lag_steps"] == 0


@pytest.mark.slow  # waits 1.5 s for a store that is gone
def test_flush_waits_for_the_newest_and_reports_honestly_when_it_cannot(tmp_path):
    sync, _, run, mount = _sync(tmp_path)
    _checkpoint(run, 3)
    sync.start()
    try:
        assert sync.flush(30).uploaded
        mount.rename(tmp_path / "unmounted")
        _checkpoint(run, 7)
        result = sync.flush(1.5)
        assert not result.uploaded and result.newest_local == 7 and result.newest_committed == 3
        assert result.error
        assert not sync.flush(30, give_up=lambda: True).uploaded  # a second Ctrl-C does not wait
    finally:
        sync.close()


def test_uploads_run_below_the_training_ranks_cpu_priority(tmp_path):
    """The uploader thread lowers its own priority (nice +10) and leaves the supervisor's other
    threads alone: on a host whose cores the ranks keep busy, an upload waits for them."""
    sync, _events, run, _mount = _sync(tmp_path)
    seen: list[int] = []
    upload = sync.store.upload_checkpoint

    def recording(path: Path) -> Any:
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return upload(path)

    sync.store.upload_checkpoint = recording  # type: ignore[method-assign]
    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    _checkpoint(run, 4)
    sync.start()
    try:
        deadline = time.monotonic() + 30
        while not seen and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        sync.close()
    assert seen == [min(19, mine + UPLOAD_NICENESS)]
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == mine
