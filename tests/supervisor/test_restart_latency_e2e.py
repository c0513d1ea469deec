"""Restarts at the floor, end to end: a rank's death is seen at once, the survivor does not try to
save, the restart is broken down in events.jsonl, and the run still ends bit for bit."""
from __future__ import annotations

import os
import signal
import time

import pytest

from shared.exit_codes import SupervisorExit
from supervisor.attempts.restart_timing import PHASES
from tests.supervisor.helpers import (
    FINAL_CHECKPOINT,
    assert_same_weights,
    console_text,
    events_named,
    heartbeat,
    start_supervisor,
    wait_exit,
    wait_for,
    wait_for_step,
)

MONITOR_INTERVAL = 3.0  # long on purpose: detection must not wait for the poll


@pytest.mark.slow
def test_sigkill_of_one_rank_is_seen_at_once_the_survivor_exits_unsaved_and_the_restart_is_broken_down(
        tmp_path, reference_checkpoint):
    log_dir = tmp_path / "run"
    proc = start_supervisor(log_dir, "--monitor-interval", str(MONITOR_INTERVAL))
    wait_for_step(log_dir, 5, rank=1)
    victim, survivor = heartbeat(log_dir, 1), heartbeat(log_dir, 0)
    checkpoints_before = {p.name for p in log_dir.glob("model_*.pt")}
    killed_at = time.time()
    os.kill(victim["pid"], signal.SIGKILL)
    crashed = wait_for(lambda: events_named(log_dir, "crashed"), 120, "the crashed event")[0]
    assert crashed["signal"] == "SIGKILL" and crashed["rank"] == 1 and crashed["torchrun_exit"] == 1
    # torchrun's own teardown is cut once its summary is written: well inside one monitor interval
    # of the death on an idle machine; the bound leaves room for a loaded one.
    assert crashed["time"] - killed_at < MONITOR_INTERVAL + 3.0, crashed["time"] - killed_at
    after = heartbeat(log_dir, 0)
    assert after["pid"] == survivor["pid"] and after["status"] == "failed" and after["phase"] != "checkpoint"
    assert "stop" not in (after.get("message") or "").lower()[:20]  # not a stop request's save
    assert {p.name for p in log_dir.glob("model_*.pt")} <= checkpoints_before | {
        f"model_{s:05d}.pt" for s in range(0, 12, 4)}  # only periodic saves, none for the teardown

    breakdown = wait_for(lambda: events_named(log_dir, "restart_breakdown"), 240, "the restart_breakdown")[0]
    phases = breakdown["phases"]
    assert set(PHASES) | {"total"} <= set(phases), phases
    assert phases["detection"] < 1.0  # the death wakes the loop (pidfd), not the 3 s poll
    assert phases["backoff"] == 0.0 and phases["loader_seek"] < 0.5
    parts = sum(value for key, value in phases.items() if key != "total")
    assert abs(parts - phases["total"]) < 0.05
    assert breakdown["message"].startswith(f"restart {phases['total']:.2f}s = detection")

    code = wait_exit(proc, log_dir, timeout=400)
    assert code == SupervisorExit.FINISHED, console_text(log_dir)[-3000:]
    assert_same_weights(log_dir / FINAL_CHECKPOINT, reference_checkpoint)
    assert not (log_dir / "stop_request.json").exists()
