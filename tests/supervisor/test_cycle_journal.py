"""``supervisor.journal.Journal``: the one writer of events.jsonl and supervisor.json, and the console's guard."""
from __future__ import annotations

import json

from shared.run_dir import RunDir
from shared.vocabulary import EventKind
from supervisor.journal import CycleState, Journal


class Console:
    def __init__(self, fail: bool = False) -> None:
        self.fail, self.lines = fail, []

    def update(self, snapshot: object) -> None:
        return None

    def event(self, line: str) -> None:
        if self.fail:
            raise BrokenPipeError(32, "Broken pipe")
        self.lines.append(line)

    def close(self) -> None:
        return None


def _records(tmp_path):
    return [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]


def test_an_event_may_carry_a_detail_named_kind(tmp_path):
    journal = Journal(RunDir.at(tmp_path), Console())
    journal.attempt = 3
    journal.event(EventKind.HUNG, "rank 1 silent", kind="startup_timeout", rank=1)
    (record,) = _records(tmp_path)
    assert record["event"] == "hung" and record["kind"] == "startup_timeout" and record["attempt"] == 3
    assert journal.reporter.lines == ["rank 1 silent"]


def test_save_state_applies_changes_and_records_the_phase_timeouts(tmp_path):
    journal = Journal(RunDir.at(tmp_path), Console())
    journal.begin(CycleState(state="starting", pid=1, pid_create_time=0.0, hostname="h", log_dir=str(tmp_path),
                             started_at=0.0))
    journal.attempt = 2
    journal.save_state(state="running", phase_timeouts={"checkpoint": 16.0})
    saved = json.loads((tmp_path / "supervisor.json").read_text())
    assert saved["state"] == "running" and saved["attempt"] == 2 and saved["phase_timeouts"] == {"checkpoint": 16.0}


def test_a_broken_console_is_reported_once_and_events_still_land(tmp_path):
    journal = Journal(RunDir.at(tmp_path), Console(fail=True))
    for n in range(3):
        journal.event(EventKind.WARNING, f"line {n}")
    records = _records(tmp_path)
    assert [r["message"] for r in records if r["message"].startswith("line")] == ["line 0", "line 1", "line 2"]
    assert sum("console output failed" in r["message"] for r in records) == 1
