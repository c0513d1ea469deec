"""``supervisor.attempts.silence``: what counts as a heartbeat-less script still doing something."""
from __future__ import annotations

import os
from pathlib import Path

from supervisor.attempts.silence import (
    SilenceWatch,
    activity_key,
    written_by_the_supervisor,
)


def _touch(path: Path, mtime_ns: int) -> None:
    path.write_text("x")
    os.utime(path, ns=(mtime_ns, mtime_ns))


def test_the_supervisors_own_files_are_not_the_scripts_activity(tmp_path):
    console = tmp_path / "attempts" / "001.log"
    console.parent.mkdir()
    console.write_text("step 1\n")
    _touch(tmp_path / "log.txt", 1_000_000_000)
    before = activity_key(console, tmp_path)
    for name in ("supervisor.json", "supervisor.lock", "supervisor.node1.json", "events.jsonl",
                 "stop_request.json", "model_00010.pt.corrupt", "model_00010.pt.corrupt.reason.json"):
        _touch(tmp_path / name, 9_000_000_000)
        assert written_by_the_supervisor(name)
    os.symlink("model_00010.pt", tmp_path / "latest_checkpoint.pt")  # repointed by the supervisor too
    assert activity_key(console, tmp_path) == before
    # ...while the script's output and files are
    _touch(tmp_path / "model_00020.pt.tmp", 9_000_000_000)
    assert activity_key(console, tmp_path) != before
    grown = activity_key(console, tmp_path)
    with console.open("a") as out:
        out.write("step 2\n")
    assert activity_key(console, tmp_path) != grown


def test_the_watch_keeps_the_time_it_last_saw_a_change_on_its_own_clock(tmp_path):
    console = tmp_path / "001.log"
    watch = SilenceWatch.at_launch(console, tmp_path)  # before any rank ran: no log yet
    assert watch.observe(10.0) is None  # no sign of life yet: the start-up allowance governs
    assert watch.observe(50.0) is None
    console.write_text("step 1\n")
    assert watch.observe(60.0) == 60.0  # the first output: silence is measured from here
    assert watch.observe(90.0) == 60.0  # nothing moved since
    _touch(tmp_path / "model_00010.pt", 5)  # a new file, even with an old mtime
    assert watch.observe(95.0) == 95.0
