"""``TorchrunAttempts`` reading heartbeats: the last good beat counts, a bad read is only a warning,
and what the run measures sets the timeouts in force (no torchrun here: real files, a stand-in tree)."""
from __future__ import annotations

import json
import time
from types import SimpleNamespace

from shared.heartbeat import Heartbeat, write_heartbeat
from shared.run_dir import RunDir
from supervisor.attempts.heartbeat_reader import HeartbeatReader
from supervisor.attempts.torchrun_attempts import TorchrunAttempts, _Live
from supervisor.checkpoints.disk_guard import DiskGuard
from supervisor.journal import CycleState, Journal
from supervisor.policy import TimeoutConfig
from supervisor.run_config import RunConfig
from supervisor.stop_signals import StopSignals


class Quiet:
    def update(self, snapshot: object) -> None:
        return None

    def event(self, line: str) -> None:
        return None

    def close(self) -> None:
        return None


def _attempts(tmp_path, **timeouts: float) -> tuple[TorchrunAttempts, _Live, RunDir]:
    run = RunDir.at(tmp_path)
    config = RunConfig(log_dir=tmp_path, cwd=tmp_path, timeouts=TimeoutConfig(**timeouts))
    journal = Journal(run, Quiet())
    journal.begin(CycleState(state="running", pid=1, pid_create_time=0.0, hostname="h", log_dir=str(tmp_path),
                             started_at=0.0))
    attempts = TorchrunAttempts(config, run, journal, StopSignals(), DiskGuard(run, config, journal))
    tree = SimpleNamespace(launched_at=time.time() - 1.0, launched_mono=time.monotonic() - 1.0)
    live = _Live(tree=tree, heartbeats=HeartbeatReader(run, "this-attempt"))  # type: ignore[arg-type]
    return attempts, live, run


def _beat(run: RunDir, rank: int, step: int, **extra: object) -> Heartbeat:
    hb = Heartbeat(pid=100 + rank, rank=rank, world_size=2, step=step, phase="train", time=time.time(), **extra)
    write_heartbeat(run.heartbeat(rank), hb)
    return hb


def _events(tmp_path) -> list[dict]:
    path = tmp_path / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_garbage_or_missing_heartbeat_keeps_the_last_good_beat_and_warns_once(tmp_path):
    attempts, live, run = _attempts(tmp_path)
    good = _beat(run, 0, 7)
    _beat(run, 1, 7)
    attempts._read_heartbeats(live)
    run.heartbeat(0).write_text('{"pid": 100, "ste')  # half-written
    run.heartbeat(1).unlink()  # gone
    for _ in range(3):
        attempts._read_heartbeats(live)
    assert live.beats[0].time == good.time and live.beats[0].step == 7 and set(live.beats) == {0, 1}
    warnings = [e for e in _events(tmp_path) if e["event"] == "warning"]
    assert sorted(e["rank"] for e in warnings) == [0, 1]  # once per rank, not once per poll


def test_heartbeats_of_an_earlier_attempt_are_not_this_attempts(tmp_path):
    attempts, live, run = _attempts(tmp_path)
    old = Heartbeat(pid=1, rank=0, world_size=1, step=50, phase="train", time=live.tree.launched_at - 60)
    write_heartbeat(run.heartbeat(0), old)
    live.heartbeats.at_launch = HeartbeatReader.on_disk(run)  # on disk before the launch, as the real launch records
    # ... and one written after the launch by a straggler of another attempt, its clock ahead
    write_heartbeat(run.heartbeat(1), Heartbeat(pid=2, rank=1, world_size=2, step=51, phase="train",
                                                time=time.time() + 3600, attempt_id="an-earlier-attempt"))
    attempts._read_heartbeats(live)
    assert live.beats == {}


def test_a_beat_of_this_attempt_counts_whatever_its_ranks_clock_says(tmp_path):
    """Ties by attempt id, ages by what this supervisor saw: a rank 1 h behind is neither a leftover
    nor silent for an hour; a rank 1 h ahead that stops beating still ages."""
    attempts, live, run = _attempts(tmp_path)
    _beat(run, 0, 7, attempt_id="this-attempt", seq=3)
    write_heartbeat(run.heartbeat(1), Heartbeat(pid=101, rank=1, world_size=2, step=7, phase="train",
                                                time=time.time() + 3600, attempt_id="this-attempt", seq=3))
    write_heartbeat(run.heartbeat(0), Heartbeat(pid=100, rank=0, world_size=2, step=7, phase="train",
                                                time=time.time() - 3600, attempt_id="this-attempt", seq=3))
    attempts._read_heartbeats(live)
    assert set(live.beats) == {0, 1}
    assert live.silent_s(0) < 1.0 and live.silent_s(1) < 1.0
    live.heartbeats.seen[1].at -= 30.0  # rank 1 wrote nothing new for 30 s of the supervisor's own clock
    attempts._read_heartbeats(live)  # same content: its age is not reset
    assert live.silent_s(1) >= 30.0 and live.silent_s(0) < 1.0


def test_measured_saves_set_the_checkpoint_timeout_in_force_and_supervisor_json_says_so(tmp_path):
    attempts, live, run = _attempts(tmp_path, hang_timeout=12.0)
    _beat(run, 0, 4, save_seconds=1.5, eval_seconds=2.0)
    attempts._read_heartbeats(live)
    in_force = attempts.refresh_timeouts()
    assert in_force["checkpoint"] == 30.0 and in_force["eval"] == 40.0 and in_force["train"] == 12.0
    saved = json.loads((tmp_path / "supervisor.json").read_text())["phase_timeouts"]
    assert saved["checkpoint"] == 30.0 and saved["hellaswag"] == 40.0


def test_a_restart_breakdown_from_ranks_an_hour_behind_is_measured_on_the_supervisors_clock(tmp_path):
    """The relaunched rank's start-up milestones are its own wall clock: an hour behind, they all
    looked older than the launch and no breakdown was ever written (ahead: phases of an hour)."""
    from supervisor.attempts.restart_timing import WORKER_MILESTONES, RestartTimeline

    attempts, live, run = _attempts(tmp_path)
    now = time.time()
    attempts._pending_breakdown = RestartTimeline(died_at=now - 10, noticed_at=now - 9, stopped_at=now - 8,
                                                  launched_at=now - 5)
    rank_clock = now - 3600.0
    startup = {name: rank_clock - 4.5 + 0.9 * i for i, (name, _) in enumerate(WORKER_MILESTONES)}  # first step: now
    write_heartbeat(run.heartbeat(0), Heartbeat(pid=100, rank=0, world_size=1, step=5, phase="train", time=rank_clock,
                                                attempt_id="this-attempt", seq=9, startup=startup))
    attempts._read_heartbeats(live)
    attempts._maybe_write_breakdown(live)
    (event,) = [e for e in _events(tmp_path) if e["event"] == "restart_breakdown"]
    assert abs(event["phases"]["total"] - 10.0) < 1.0, event["phases"]
    assert all(0.0 <= seconds < 60.0 for seconds in event["phases"].values()), event["phases"]
