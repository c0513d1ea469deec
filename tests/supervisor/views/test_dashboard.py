"""The live panel and the plain reporter, rendered from snapshots of real run directories."""
from __future__ import annotations

import io
import json
import re
import socket
import time
from pathlib import Path

import psutil
from rich.console import Console

from shared.events import append_event
from shared.heartbeat import Heartbeat
from shared.run_dir import RunDir
from shared.supervisor_state import (
    FailureRecord,
    SupervisorState,
)
from supervisor.views.dashboard import (
    LiveReporter,
    PlainReporter,
    format_bytes,
    format_duration,
    make_reporter,
    progress_line,
    render_panel,
    status_lines,
)
from supervisor.views.snapshot import DiskInfo, RunSnapshot, collect_snapshot
from tests.supervisor.helpers import write_heartbeat_as_of_its_time as write_heartbeat
from tests.supervisor.helpers import write_supervisor_state

TIMESTAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"


def make_run(run_dir: Path, step: int = 120, now: float | None = None) -> RunSnapshot:
    """A supervised 2-rank run at ``step`` of 300, 0.5 s per step, one restart used."""
    now = time.time() + 10 if now is None else now  # heartbeats must postdate our own pid
    run = RunDir.at(run_dir)
    me = psutil.Process()
    write_supervisor_state(
        run.supervisor_state,
        SupervisorState(
            state="running", pid=me.pid, pid_create_time=me.create_time(), hostname=socket.gethostname(),
            log_dir=str(run_dir), started_at=now - 500, attempt=2, restarts_used=1, max_restarts=10,
            last_failure=FailureRecord(kind="crashed", reason="rank 1 killed by SIGKILL", attempt=1, time=now),
            newest_checkpoint="model_00100.pt", newest_checkpoint_valid=True,
        ),
    )
    for rank, age in ((0, 0.4), (1, 3.2)):
        write_heartbeat(
            run.heartbeat(rank),
            Heartbeat(pid=me.pid, rank=rank, world_size=2, step=step, phase="train", time=now - age,
                      loss=5.1234, tokens_per_s=12345.0, status="running", max_steps=300),
        )
    with open(run.metrics, "w") as handle:
        handle.writelines(json.dumps({"step": s, "loss": 5.0, "lr": 1e-4, "norm": 1.0, "dt": 0.5,
                                     "tokens_per_s": 12345.0}) + "\n" for s in range(step + 1))
    run.checkpoint(100).write_bytes(b"\0" * 3 * 1024 * 1024)
    return collect_snapshot(run_dir, now=now)


def recording_console() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=True, width=120, color_system=None), buffer


def test_formatters() -> None:
    assert format_duration(70) == "0:01:10"
    assert format_duration(3 * 86400) == "72:00:00"
    assert format_duration(None) == "-"
    assert format_bytes(512) == "512 B" and format_bytes(3 * 1024**3) == "3.2 GB"
    assert format_bytes(1_500_000_000) == "1.5 GB"  # decimal, as gpt2sup verify prints it


def test_progress_line_has_the_documented_shape(tmp_path: Path) -> None:
    snap = make_run(tmp_path)
    # (300 - 121) steps left at 0.5 s each = 89.5 s
    assert progress_line(snap) == "step 121/300 loss 5.1234 12,345 tok/s eta 0:01:30 restarts 1/10"


def test_panel_shows_the_key_numbers(tmp_path: Path) -> None:
    snap = make_run(tmp_path)
    console, buffer = recording_console()
    console.print(render_panel(snap))
    text = buffer.getvalue()
    lines = text.splitlines()
    title = next(line for line in lines if "╭" in line)
    assert title.split("·")[-1].strip(" ─╮") == "running", title  # the run's state ends the panel's title
    for expected in ("121/300", "40.3%", "5.1234", "12,345", "0:01:30", "train", "1/10",
                     "rank 1 killed by SIGKILL", "model_00100.pt", "3.1 MB", "valid"):
        assert expected in text, expected
    disk = next(line for line in lines if "disk" in line)
    assert re.search(r"[\d.]+ GB used of [\d.]+ GB \(\d+%\), [\d.]+ GB free", disk), disk  # the disk row
    # heartbeat age per rank: one row per rank with its own age
    assert re.search(r"\b0\s.*0\.4s ago", text) and re.search(r"\b1\s.*3\.2s ago", text)
    assert "━" in text  # progress / disk bars are drawn


def test_panel_flags_an_invalid_newest_checkpoint_and_no_run(tmp_path: Path) -> None:
    snap = make_run(tmp_path)
    snap.checkpoints.newest_valid, snap.checkpoints.newest_reason = False, "CRC mismatch in data/3"
    console, buffer = recording_console()
    console.print(render_panel(snap))
    assert "INVALID: CRC mismatch in data/3" in buffer.getvalue()

    empty = tmp_path / "empty"
    empty.mkdir()
    console, buffer = recording_console()
    console.print(render_panel(collect_snapshot(empty)))
    assert "no run in" in buffer.getvalue()


def test_live_reporter_redraws_and_prints_events_above(tmp_path: Path) -> None:
    console, buffer = recording_console()
    reporter = make_reporter(is_tty=True, console=console)
    assert isinstance(reporter, LiveReporter)
    reporter.update(make_run(tmp_path / "a", step=120))
    reporter.event("crashed: rank 1 exited with SIGKILL")
    reporter.update(make_run(tmp_path / "b", step=150))
    reporter.close()
    reporter.close()  # idempotent
    text = buffer.getvalue()
    assert "121/300" in text and "151/300" in text
    assert re.search(TIMESTAMP + r" crashed: rank 1 exited with SIGKILL", text)
    # the event was printed before the last panel was drawn
    assert text.index("crashed: rank 1") < text.rindex("151/300")


class FakeClock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_plain_reporter_rate_limits_progress_but_not_events(tmp_path: Path) -> None:
    snap = make_run(tmp_path)
    stream = io.StringIO()
    clock = FakeClock(1_795_716_184.0)  # 2026-11-26T18:03:04Z
    reporter = PlainReporter(stream, interval_s=30, clock=clock)
    reporter.update(snap)
    clock.t += 5
    reporter.update(snap)  # too soon: held back
    reporter.event("hung: rank 1 quiet for 120s")
    clock.t += 30
    reporter.update(snap)
    clock.t += 1
    reporter.update(snap)  # held back, printed by close()
    reporter.close()
    lines = stream.getvalue().splitlines()
    assert lines[0] == "2026-11-26T18:03:04Z step 121/300 loss 5.1234 12,345 tok/s eta 0:01:30 restarts 1/10"
    assert lines[1] == "2026-11-26T18:03:09Z hung: rank 1 quiet for 120s"
    assert lines[2].startswith("2026-11-26T18:03:39Z step 121/300")
    assert lines[3].startswith("2026-11-26T18:03:40Z step 121/300")
    assert len(lines) == 4


def test_make_reporter_off_a_terminal_is_plain(tmp_path: Path) -> None:
    stream = io.StringIO()  # not a TTY
    reporter = make_reporter(stream=stream)
    assert isinstance(reporter, PlainReporter)
    reporter.update(make_run(tmp_path))
    reporter.close()
    assert re.match(TIMESTAMP + r" step 121/300 ", stream.getvalue())
    assert "\x1b[" not in stream.getvalue()  # no colour codes in log files
    assert isinstance(make_reporter(is_tty=False, stream=stream), PlainReporter)


def test_status_lines_call_out_only_a_rank_that_lags(tmp_path: Path) -> None:
    snap = make_run(tmp_path)  # rank 1's heartbeat is 2.8 s older than rank 0's
    lines = status_lines(snap)
    assert [l for l in lines if "(quietest)" in l] == [l for l in lines if l.startswith("rank 1 ")]
    for rank in snap.ranks:
        rank.age_s = 0.5  # beating in lock-step: nobody is singled out
    assert not any("(quietest)" in l for l in status_lines(snap))


def panel_text(snap: RunSnapshot, colour: bool = False) -> str:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=160,
                      color_system="standard" if colour else None)
    console.print(render_panel(snap))
    return buffer.getvalue()


def test_panel_shows_restarts_once(tmp_path: Path) -> None:
    text = panel_text(make_run(tmp_path))
    assert text.count("1/10") == 1  # its own row, not again in the supervisor row
    assert "restarts 1/10" not in text


def test_panel_shows_a_recovered_failure_as_recovered(tmp_path: Path) -> None:
    now = time.time() + 10
    make_run(tmp_path, now=now)
    # The crash of attempt 1 happened 60 s ago; attempt 2 has trained since.
    state = json.loads(RunDir.at(tmp_path).supervisor_state.read_text())
    state["last_failure"]["time"] = now - 60
    RunDir.at(tmp_path).supervisor_state.write_text(json.dumps(state))
    snap = collect_snapshot(tmp_path, now=now)
    text = panel_text(snap)
    assert "crashed (recovered): rank 1 killed by SIGKILL" in text
    assert "last failure: crashed (recovered)" in "\n".join(status_lines(snap))


def test_panel_shows_a_replay_mismatch_in_red(tmp_path: Path) -> None:
    now = time.time() + 10
    make_run(tmp_path, now=now)
    append_event(RunDir.at(tmp_path).events, "replay_check", source="worker", resumed_step=100, steps_compared=3,
                 equal=False, first_mismatch={"step": 101, "before": 4.5, "after": 4.75}, message="mismatch")
    text = panel_text(collect_snapshot(tmp_path, now=now), colour=True)
    plain = re.sub(r"\x1b\[[0-9;]*m", "", text)
    assert "replay check" in plain and "MISMATCH after the resume at step 100" in plain
    assert re.search(r"\x1b\[1;31mMISMATCH", text), "a mismatch must be drawn in bold red"


def test_panel_has_a_timeout_column_when_the_supervisor_records_them(tmp_path: Path) -> None:
    now = time.time() + 10
    make_run(tmp_path, now=now)
    assert not re.search(r"heartbeat\s+timeout", panel_text(collect_snapshot(tmp_path, now=now)))
    state = json.loads(RunDir.at(tmp_path).supervisor_state.read_text())
    state["phase_timeouts"] = {"train": 240, "eval": 1200}
    RunDir.at(tmp_path).supervisor_state.write_text(json.dumps(state))
    text = panel_text(collect_snapshot(tmp_path, now=now))
    assert re.search(r"heartbeat\s+timeout", text) and "240s" in text


def test_panel_title_shows_how_the_run_ended(tmp_path: Path) -> None:
    now = time.time() + 10
    make_run(tmp_path, now=now)
    state = json.loads(RunDir.at(tmp_path).supervisor_state.read_text())
    state.update(state="finished_without_checkpoint", exit_code=5, pid_create_time=1.0)  # pid no longer ours
    RunDir.at(tmp_path).supervisor_state.write_text(json.dumps(state))
    for rank in (0, 1):
        path = RunDir.at(tmp_path).heartbeat(rank)
        path.write_text(json.dumps(dict(json.loads(path.read_text()), status="finished_without_checkpoint")))
    text = panel_text(collect_snapshot(tmp_path, now=now))
    assert "finished without checkpoint (exit 5)" in text


def test_disk_bar_fills_to_the_same_percent_as_its_label(tmp_path: Path) -> None:
    snap = make_run(tmp_path)
    # 300 used, 300 available, 400 reserved for root: df says 50%, not 30%.
    snap.disk = DiskInfo(total_bytes=1000, used_bytes=300, free_bytes=300)
    disk_line = next(line for line in panel_text(snap).splitlines() if "disk" in line and "free" in line)
    assert "(50%)" in disk_line
    assert disk_line.count("━") == 16  # half of the 32-cell bar


def test_at_80_columns_the_panel_drops_rank_columns_whole_never_cuts_a_header(tmp_path: Path) -> None:
    """Issue 19: at 80 columns the ranks table read `pha… sta… hea… time… 10.…`."""
    now = time.time() + 10
    make_run(tmp_path, now=now)
    state = json.loads(RunDir.at(tmp_path).supervisor_state.read_text())
    state["phase_timeouts"] = {"train": 240, "eval": 1200}
    RunDir.at(tmp_path).supervisor_state.write_text(json.dumps(state))
    buffer = io.StringIO()
    Console(file=buffer, force_terminal=True, width=80, color_system=None).print(
        render_panel(collect_snapshot(tmp_path, now=now)))
    lines = buffer.getvalue().splitlines()
    assert all(len(line) <= 80 for line in lines)
    (header,) = [line for line in lines if re.search(r"\brank\b", line) and "steps" in line]
    rows = lines[lines.index(header):lines.index(header) + 3]
    assert not any("…" in line for line in rows), "\n".join(rows)
    words = header.strip("│ ").split()
    assert words[0] == "ranks" and words[1] == "rank", header  # the grid label, then the table's header
    assert set(words[2:]) <= {"pid", "phase", "status", "steps", "heartbeat", "timeout", "loss", "tok/s"}, header
    assert {"phase", "steps", "heartbeat"} <= set(words), header  # the columns that matter most stay
    assert "120/300" in buffer.getvalue() or "121/300" in buffer.getvalue()
