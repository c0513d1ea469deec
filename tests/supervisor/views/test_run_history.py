"""What a run cost: recoveries, sessions, goodput and the checkpoint table, from real files.

The files are written the way the supervisor and the worker write them (one JSON record per line);
the end-to-end version, with a real supervised run, is in test_report.py.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from supervisor.views.run_history import format_seconds, load_history, measure_goodput

T0 = 1_800_000_000.0


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def steps(first: int, last: int, start: float, dt: float = 1.0) -> list[dict]:
    """Records of steps first..last, one every ``dt`` seconds after ``start``."""
    return [{"step": s, "time": start + (i + 1) * dt, "loss": 10.0 - s * 0.01, "lr": 1e-3, "dt": dt * 0.8,
             "tokens_per_s": 1000.0} for i, s in enumerate(range(first, last + 1))]


@pytest.fixture
def crashed_run(tmp_path: Path) -> Path:
    """Steps 0-9 trained, a crash after step 9 (last heartbeat 2 s before the verdict), a resume
    from step 6 whose first step lands 5 s after the verdict, steps 7-19 trained again."""
    run = tmp_path / "run"
    run.mkdir()
    write_jsonl(run / "events.jsonl", [
        {"time": T0, "event": "supervisor_started", "attempt": None, "message": "started"},
        {"time": T0 + 0.1, "event": "launched", "attempt": 1, "message": "attempt 1"},
        {"time": T0 + 12.0, "event": "crashed", "attempt": 1, "message": "attempt 1: rank 1 crashed: killed by SIGKILL after step 9",
         "rank": 1, "step": 9, "last_beat_time": T0 + 10.0},
        {"time": T0 + 13.0, "event": "checkpoint_valid", "attempt": 1, "checkpoint": "model_00006.pt", "step": 6,
         "message": "resuming from model_00006.pt", "seconds": 0.5, "inconclusive": False},
        {"time": T0 + 13.1, "event": "restarted", "attempt": 1, "message": "restart 1/10 after crashed"},
        {"time": T0 + 13.2, "event": "launched", "attempt": 2, "message": "attempt 2"},
        {"time": T0 + 30.0, "event": "finished", "attempt": 2, "message": "training finished"},
    ])
    # The kept history: 0-6 from attempt 1; 7-19 re-trained by attempt 2 (7 lands at T0 + 17).
    write_jsonl(run / "metrics.jsonl", steps(0, 6, T0) + steps(7, 19, T0 + 16.0))
    return run


def test_a_crash_costs_detection_restart_and_redone_steps(crashed_run):
    history = load_history(crashed_run)
    (recovery,) = history.recoveries
    assert recovery.detection_s == pytest.approx(2.0)  # last heartbeat -> verdict
    assert recovery.restart_s == pytest.approx(5.0)  # verdict -> step 7 (T0 + 17)
    assert recovery.redone_steps == (7, 9)
    assert recovery.redo_s == pytest.approx(2.0)  # step 7 -> step 9 again (T0 + 19)
    assert recovery.lost_s == pytest.approx(9.0)  # T0 + 10 -> T0 + 19
    goodput = history.goodput
    assert goodput.wall_s == pytest.approx(30.0)
    assert goodput.useful_s == pytest.approx(20 * 0.8)
    assert goodput.lost_s == pytest.approx(9.0)
    assert goodput.ratio == pytest.approx(16.0 / 30.0)
    assert goodput.one_line() == "goodput 53% (16s training of 30s supervised; 9.0s lost to 1 failure)"
    assert measure_goodput(crashed_run) == goodput


def test_faults_carry_their_step_and_a_hang_links_its_evidence(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    write_jsonl(run / "events.jsonl", [
        {"time": T0, "event": "supervisor_started", "attempt": None, "message": "started"},
        {"time": T0 + 1, "event": "launched", "attempt": 1, "message": "attempt 1"},
        {"time": T0 + 9, "event": "hung", "attempt": 1, "rank": 0, "step": 4, "message": "rank 0 silent", "last_beat_time": T0 + 5},
        {"time": T0 + 10, "event": "evidence_captured", "attempt": 1, "incident": "incidents/001",
         "files": ["py-spy-rank0.txt", "summary.json"], "message": "evidence"},
        {"time": T0 + 11, "event": "quarantined", "attempt": 1, "checkpoint": "model_00004.pt", "message": "bad"},
        {"time": T0 + 12, "event": "disk_warning", "attempt": 1, "message": "disk low"},
        {"time": T0 + 20, "event": "replay_check", "attempt": None, "equal": False, "resumed_step": 2, "message": "mismatch"},
        "not json at all",
    ])
    with open(run / "events.jsonl", "a") as handle:
        handle.write('{"torn": \n')
    write_jsonl(run / "metrics.jsonl", steps(0, 4, T0 + 1) + steps(5, 8, T0 + 13))
    history = load_history(run)
    by_kind = {f.kind: f for f in history.faults}
    assert set(by_kind) == {"hung", "quarantined", "disk_warning", "replay_check"}
    assert by_kind["hung"].incident == "incidents/001"
    assert by_kind["hung"].incident_files == ["py-spy-rank0.txt", "summary.json"]
    assert by_kind["quarantined"].step == 4  # from the checkpoint's name
    assert by_kind["disk_warning"].step == 4  # the last step kept before the event's time
    assert by_kind["replay_check"].ok is False and by_kind["replay_check"].step == 2
    (recovery,) = history.recoveries
    assert recovery.detection_s == pytest.approx(4.0)
    assert recovery.resumed_step is None  # nothing says where it resumed: not guessed


def test_the_checkpoint_stores_routine_events_are_not_faults(tmp_path):
    """With --checkpoint-uri every checkpoint's upload is an event: numbered as faults they pushed
    the report past its labelled-fault limit and took the real faults' numbers."""
    run = tmp_path / "run"
    run.mkdir()
    write_jsonl(run / "events.jsonl", [
        {"time": T0, "event": "supervisor_started", "attempt": None, "message": "started"},
        {"time": T0 + 1, "event": "downloaded", "attempt": None, "step": 4, "message": "fetched"},
        {"time": T0 + 2, "event": "launched", "attempt": 1, "message": "attempt 1"},
        *[{"time": T0 + 3 + i, "event": "uploaded", "attempt": 1, "step": 4 + i, "message": "committed"}
          for i in range(5)],
        {"time": T0 + 9, "event": "upload_skipped", "attempt": 1, "message": "skipped 6"},
        {"time": T0 + 10, "event": "disk_warning", "attempt": 1, "message": "disk low"},
    ])
    write_jsonl(run / "metrics.jsonl", steps(5, 12, T0 + 2))
    assert [f.kind for f in load_history(run).faults] == ["disk_warning"]


def test_time_between_two_supervisors_is_not_counted_as_wall_time(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    write_jsonl(run / "events.jsonl", [
        {"time": T0, "event": "supervisor_started", "message": "first"},
        {"time": T0 + 10, "event": "stopped", "message": "stopped on request"},
        {"time": T0 + 3600, "event": "supervisor_started", "message": "second, an hour later"},
        {"time": T0 + 3620, "event": "finished", "message": "finished"},
    ])
    write_jsonl(run / "metrics.jsonl", steps(0, 8, T0) + steps(9, 27, T0 + 3600))
    history = load_history(run)
    assert history.sessions == [(T0, T0 + 10), (T0 + 3600, T0 + 3620)]
    assert history.goodput.wall_s == pytest.approx(30.0)
    assert history.goodput.failures == 0 and history.goodput.lost_s == 0.0


def test_a_live_run_counts_until_now_and_a_bare_worker_run_has_one_session(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    write_jsonl(run / "metrics.jsonl", steps(0, 9, T0))
    assert load_history(run).sessions == [(T0 + 1 - 0.8, T0 + 10)]
    assert load_history(run, live_until=T0 + 40).sessions == [(T0 + 1 - 0.8, T0 + 40)]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert measure_goodput(empty) is None


def test_failures_during_a_recovery_are_not_counted_twice(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    write_jsonl(run / "events.jsonl", [
        {"time": T0, "event": "supervisor_started", "message": "s"},
        {"time": T0 + 10, "event": "crashed", "step": 9, "last_beat_time": T0 + 10, "message": "crash 1"},
        {"time": T0 + 11, "event": "checkpoint_valid", "checkpoint": "model_00004.pt", "step": 4, "message": "r"},
        {"time": T0 + 11, "event": "launched", "message": "a2"},
        {"time": T0 + 14, "event": "crashed", "step": 6, "last_beat_time": T0 + 14, "message": "crash 2"},
        {"time": T0 + 15, "event": "checkpoint_valid", "checkpoint": "model_00004.pt", "step": 4, "message": "r"},
        {"time": T0 + 15, "event": "launched", "message": "a3"},
        {"time": T0 + 40, "event": "finished", "message": "f"},
    ])
    write_jsonl(run / "metrics.jsonl", steps(0, 4, T0) + steps(5, 20, T0 + 16))
    history = load_history(run)
    first, second = history.recoveries
    assert (first.progress_at, first.regained_at) == (T0 + 10, T0 + 21)  # step 9 again at T0 + 21
    assert (second.progress_at, second.regained_at) == (T0 + 14, T0 + 18)  # step 6 again at T0 + 18
    assert history.goodput.lost_s == pytest.approx(11.0)  # the union, not 11 + 4


def test_checkpoint_table_tells_a_quarantined_file_from_a_new_one_with_its_name(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "model_00004.pt").write_bytes(b"x" * 100)
    (run / "model_00008.pt.corrupt").write_bytes(b"x" * 50)
    (run / "model_00008.pt.corrupt.reason.json").write_text("{}")
    (run / "model_00008.pt").write_bytes(b"x" * 100)  # the step saved again after the quarantine
    now = os.stat(run / "model_00008.pt").st_mtime
    os.utime(run / "model_00004.pt", (now - 100, now - 100))
    write_jsonl(run / "events.jsonl", [
        {"time": now - 50, "event": "quarantined", "checkpoint": "model_00008.pt", "reason": "cut short", "message": "q"},
        {"time": now - 49, "event": "checkpoint_valid", "checkpoint": "model_00004.pt", "step": 4, "seconds": 0.25,
         "inconclusive": False, "message": "v"},
    ])
    write_jsonl(run / "metrics.jsonl", [{**steps(4, 4, T0)[0], "val_loss": 3.25}])
    rows = {row.name: row for row in load_history(run).checkpoints}
    assert rows["model_00004.pt"].validation == "valid, resumed from it (checked in 0.2s)"
    assert rows["model_00004.pt"].val_loss == 3.25
    assert rows["model_00008.pt.corrupt"].quarantined and rows["model_00008.pt.corrupt"].validation == "quarantined: cut short"
    assert rows["model_00008.pt"].validation.startswith("not validated")
    assert rows["model_00008.pt"].size_bytes == 100


def test_the_report_says_valid_where_status_does(tmp_path):
    """Issue 19: `report` said "not needed for a restart" of the file `status` called valid."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "model_00004.pt").write_bytes(b"x" * 100)
    (run / "model_00008.pt").write_bytes(b"x" * 100)
    (run / "supervisor.json").write_text(json.dumps({
        "newest_checkpoint": "model_00008.pt", "newest_checkpoint_valid": True,
        "newest_checkpoint_reason": "written by the worker in attempt 1"}))
    rows = {row.name: row for row in load_history(run).checkpoints}
    assert rows["model_00008.pt"].validation == "valid (written by the worker in attempt 1)"
    assert rows["model_00004.pt"].validation.startswith("not validated")


@pytest.mark.parametrize("seconds, text", [(3.25, "3.2s"), (42.4, "42s"), (185, "3m05s"), (7620, "2h07m")])
def test_format_seconds(seconds, text):
    assert format_seconds(seconds) == text


def test_a_clock_step_back_mid_session_leaves_the_wall_time_measured_and_goodput_within_0_100(tmp_path):
    """The machine's clock stepped back an hour 20 s into a 40 s session: records after the step
    are timed an hour earlier (a step's ``dt`` measured across it was -3600 s: goodput read -11024%).
    The session's length comes from the supervisor's monotonic clock (``elapsed_s``)."""
    run = tmp_path / "run"
    run.mkdir()
    back = T0 - 3600.0
    write_jsonl(run / "events.jsonl", [
        {"time": T0, "event": "supervisor_started", "message": "started", "session_start": T0, "elapsed_s": 0.0},
        {"time": T0 + 0.1, "event": "launched", "attempt": 1, "message": "attempt 1", "session_start": T0,
         "elapsed_s": 0.1},
        {"time": back + 40.0, "event": "finished", "attempt": 1, "message": "training finished", "session_start": T0,
         "elapsed_s": 40.0},
    ])
    records = steps(0, 19, T0) + steps(20, 39, back + 20.0)
    records[20]["dt"] = -3600.0 + 0.8  # timed across the step by an older worker
    write_jsonl(run / "metrics.jsonl", records)
    goodput = measure_goodput(run)
    assert goodput.wall_s == pytest.approx(40.0)
    assert 0.0 <= goodput.ratio <= 1.0
    records[20]["dt"] = 0.8
    write_jsonl(run / "metrics.jsonl", records)
    assert measure_goodput(run).ratio == pytest.approx(39 * 0.8 / 40.0 + 0.8 / 40.0)
