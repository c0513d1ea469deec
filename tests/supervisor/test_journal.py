"""The supervisor's journal survives the disk conditions it is there to handle (issue 7.1).

Real failures only: a tmpfs filled to 100% (ENOSPC), the same tmpfs remounted read-only (EROFS),
a directory the writer may not write (EACCES, with the effective uid dropped to nobody, since
root ignores permission bits), and a removed run directory.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.disk_fill import MountRefused, fill_disk, mounted_tmpfs
from shared.atomic_io import append_jsonl
from shared.supervisor_state import SupervisorState, read_supervisor_state
from supervisor.journal_writer import JournalWriter

NOBODY = 65534


@pytest.fixture
def tmpfs(tmp_path) -> Iterator[Path]:
    try:
        with mounted_tmpfs(tmp_path / "disk", "256k") as disk:
            yield disk
    except MountRefused as exc:
        pytest.skip(str(exc))


def _fill(disk: Path) -> Path:
    filler = fill_disk(disk)
    assert shutil.disk_usage(disk).free == 0
    return filler


def _state(run: Path, **changes) -> SupervisorState:
    state = SupervisorState(state="running", pid=os.getpid(), pid_create_time=0.0, hostname="h",
                            log_dir=str(run), started_at=0.0)
    for key, value in changes.items():
        setattr(state, key, value)
    return state


def _journal(run: Path, warnings: list[str]) -> JournalWriter:
    return JournalWriter(run / "events.jsonl", run / "supervisor.json", warn=warnings.append)


def _events(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]


def _event(n: int) -> dict:
    return {"time": float(n), "event": "hung", "attempt": n, "message": f"event {n} " + "x" * 200}


def test_a_full_disk_buffers_events_warns_once_and_flushes_in_order_when_space_returns(tmpfs):
    run = tmpfs / "run"
    run.mkdir()
    warnings: list[str] = []
    journal = _journal(run, warnings)
    assert journal.append_event(_event(0))
    filler = _fill(tmpfs)
    results = [journal.append_event(_event(n)) for n in range(1, 40)]
    assert not results[-1] and journal.failing  # a page's slack may take a few, never 39 lines
    assert not journal.write_state(_state(run, attempt=7))
    assert len(warnings) == 1 and "No space left on device" in warnings[0]
    on_disk = _events(run)  # whatever was written before the disk filled is whole lines
    assert [e["attempt"] for e in on_disk] == list(range(len(on_disk)))

    filler.unlink()
    assert journal.flush()
    assert not journal.failing
    records = _events(run)
    assert [e["attempt"] for e in records[:-1]] == list(range(40))  # every event, in order
    assert records[-1]["event"] == "journal_error" and "No space left" in records[-1]["message"]
    assert records[-1]["delayed"] == 40 - len(on_disk)
    assert read_supervisor_state(run / "supervisor.json").attempt == 7
    assert len(warnings) == 2  # one line when it broke, one when it recovered


def test_a_partial_line_is_never_left_in_events_jsonl_when_the_disk_fills_mid_write(tmpfs):
    events = tmpfs / "events.jsonl"
    append_jsonl(events, _event(0))
    _fill(tmpfs)
    big = {"event": "crashed", "message": "y" * 20000}  # longer than any page's slack
    with pytest.raises(OSError):
        append_jsonl(events, big)
    assert [json.loads(line)["event"] for line in events.read_text().splitlines()] == ["hung"]


def test_a_read_only_run_directory_keeps_the_newest_state_and_writes_it_after_remount(tmpfs):
    run = tmpfs / "run"
    run.mkdir()
    warnings: list[str] = []
    journal = _journal(run, warnings)
    journal.write_state(_state(run, attempt=1))
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    try:
        for attempt in (2, 3, 4):
            assert not journal.write_state(_state(run, attempt=attempt))
        assert not journal.append_event(_event(1))
        assert read_supervisor_state(run / "supervisor.json").attempt == 1
        assert len(warnings) == 1 and "Read-only file system" in warnings[0]
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(tmpfs)], check=True)
    assert journal.flush()
    assert read_supervisor_state(run / "supervisor.json").attempt == 4
    assert [e["event"] for e in _events(run)] == ["hung", "journal_error"]


@contextlib.contextmanager
def _as_nobody() -> Iterator[None]:
    os.seteuid(NOBODY)
    try:
        yield
    finally:
        os.seteuid(0)


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A directory every user can reach (pytest's tmp_path sits under a 0700 parent)."""
    path = Path(tempfile.mkdtemp(prefix="gpt2sup-journal-"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_an_unwritable_directory_is_a_disk_condition_not_a_crash(open_tmp):
    if os.geteuid() != 0:
        pytest.skip("needs root to switch the effective uid")
    run = open_tmp / "run"
    run.mkdir()
    os.chown(run, NOBODY, NOBODY)
    warnings: list[str] = []
    journal = _journal(run, warnings)
    with _as_nobody():
        assert journal.append_event(_event(0))
        os.chmod(run / "events.jsonl", 0o444)  # `chmod -R a-w run`
        os.chmod(run, 0o555)
        assert not journal.append_event(_event(1))
        assert not journal.write_state(_state(run))
        assert journal.failing and "Permission denied" in warnings[0]
        os.chmod(run, 0o755)
        os.chmod(run / "events.jsonl", 0o644)
        assert journal.flush()
    assert [e["event"] for e in _events(run)] == ["hung", "hung", "journal_error"]
    assert (run / "supervisor.json").exists()


def test_a_removed_run_directory_is_not_recreated_and_the_backlog_lands_when_it_is_back(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    warnings: list[str] = []
    journal = _journal(run, warnings)
    journal.append_event(_event(0))
    shutil.rmtree(run)
    assert not journal.append_event(_event(1))
    assert not journal.write_state(_state(run))
    assert not run.exists()  # a journal write does not resurrect a deleted run directory
    run.mkdir()
    assert journal.flush()
    assert [e["attempt"] for e in _events(run)][:1] == [1]
    assert _events(run)[-1]["event"] == "journal_error"


def test_the_backlog_is_bounded_and_the_loss_is_reported(tmp_path):
    run = tmp_path / "run"
    warnings: list[str] = []
    journal = JournalWriter(run / "events.jsonl", run / "supervisor.json", warn=warnings.append, max_buffered=5)
    for n in range(12):
        journal.append_event(_event(n))
    assert journal.pending_events == 5
    run.mkdir()
    assert journal.flush()
    records = _events(run)
    assert [e["attempt"] for e in records[:-1]] == [7, 8, 9, 10, 11]
    assert records[-1]["lost"] == 7


def test_the_supervisor_lock_is_taken_on_a_full_disk(tmpfs):
    """A supervisor restarted while the disk is full must still start (and buffer its journal)."""
    from supervisor.run_lock import RunLock

    lock_path = tmpfs / "supervisor.lock"
    lock_path.touch()  # released by the last holder: empty, so the pid needs a new page
    _fill(tmpfs)
    lock = RunLock(lock_path)
    lock.acquire()  # the pid cannot be written; the flock is what counts
    lock.release()


# --- issue 19 item 5: a torn events.jsonl tail ---------------------------------------------------

def _torn_events(path: Path) -> list[dict]:
    """Two whole records, then a third cut mid-line (a writer killed, a copy cut short)."""
    whole = [{"time": 1.0, "event": "supervisor_started", "attempt": None, "message": "a"},
             {"time": 2.0, "event": "launched", "attempt": 1, "message": "b"}]
    text = "".join(json.dumps(r) + "\n" for r in whole) + json.dumps({"time": 3.0, "event": "crashed"})[:17]
    path.write_text(text)
    return whole


def test_an_append_after_a_torn_tail_starts_on_a_fresh_line_and_readers_skip_the_torn_one(tmp_path):
    from shared.atomic_io import read_jsonl

    events = tmp_path / "events.jsonl"
    whole = _torn_events(events)
    writer = JournalWriter(events, tmp_path / "supervisor.json", warn=lambda line: None)
    record = {"time": 4.0, "event": "supervisor_started", "attempt": None, "message": "the next supervisor"}
    assert writer.append_event(record)
    assert read_jsonl(events) == [*whole, record]  # glued to the torn line, it used to be lost with it
    assert read_jsonl(events, max_records=10) == [*whole, record]
    append_jsonl(events, {"event": "again"})  # a whole tail: no blank line added
    assert events.read_text().endswith('"message": "the next supervisor", "time": 4.0}\n{"event": "again"}\n')


@pytest.mark.slow
def test_the_next_supervisor_s_records_survive_a_torn_events_jsonl(tmp_path):
    """A real `gpt2sup run` on a directory whose events.jsonl was cut mid-line: its first record
    (supervisor_started) used to be glued onto the cut line and lost."""
    from shared.atomic_io import read_jsonl
    from tests.supervisor.helpers import (
        one_process_worker_args,
        start_supervisor,
        wait_exit,
    )

    log_dir = tmp_path / "run"
    log_dir.mkdir()
    whole = _torn_events(log_dir / "events.jsonl")
    args = one_process_worker_args()
    proc = start_supervisor(log_dir, "--worker", "worker.trian_gpt2", nproc=1, worker_args=args)
    assert wait_exit(proc, log_dir, timeout=120) == 3  # the missing module: gave up at once
    records = read_jsonl(log_dir / "events.jsonl")
    assert records[:2] == whole
    kinds = [r["event"] for r in records[2:]]
    assert kinds[0] == "supervisor_started" and "launched" in kinds and kinds[-1] == "gave_up", kinds
