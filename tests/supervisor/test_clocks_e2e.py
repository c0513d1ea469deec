"""No verdict depends on two wall clocks agreeing (docs/reliability.md): real supervised runs whose
ranks' ``time.time`` is an hour off, whose supervisor's clock steps mid-run, or both (a machine-wide
step), through ``tests.supervisor.shifted_clock``; ``time.monotonic`` is untouched, as on a real
machine. Plus torchrun itself stopped after its ranks finished and saved."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from shared.exit_codes import SupervisorExit
from tests.supervisor.helpers import (
    FINAL_CHECKPOINT,
    MAX_STEPS,
    ONE_PROCESS,
    REPO_ROOT,
    console_text,
    events_named,
    gpt2sup_argv,
    heartbeat,
    start_supervisor,
    supervisor_json,
    wait_exit,
    wait_for,
    wait_for_step,
)
from tests.supervisor.shifted_clock import SUPERVISOR_MAIN

pytestmark = pytest.mark.slow

SHIFTED_WORKER = ("--worker", "tests.supervisor.shifted_clock")
HOUR = 3600.0


def _status_json(log_dir: Path) -> dict:
    out = subprocess.run(gpt2sup_argv("status", "--log-dir", str(log_dir), "--json"), capture_output=True, text=True,
                         timeout=60, check=False, cwd=REPO_ROOT)
    return json.loads(out.stdout)


def _assert_finished_at_the_last_step(proc: subprocess.Popen, log_dir: Path) -> None:
    code = wait_exit(proc, log_dir)
    console = console_text(log_dir)
    assert code == SupervisorExit.FINISHED, console[-3000:]
    assert (log_dir / FINAL_CHECKPOINT).is_file()
    state = supervisor_json(log_dir)
    assert state["state"] == "finished", state
    finished = events_named(log_dir, "finished")[-1]["message"]
    assert f"after step {MAX_STEPS - 1}" in finished and FINAL_CHECKPOINT in finished, finished
    assert not events_named(log_dir, "hung") and not events_named(log_dir, "crashed"), console[-3000:]


def test_ranks_an_hour_behind_the_supervisor_finish_with_their_final_checkpoint(tmp_path):
    """Their beats were dropped as 'older than the launch': the run ended 'before its first step,
    final checkpoint NOT on disk (exit 5)' with the checkpoint on disk."""
    log_dir = tmp_path / "run"
    proc = start_supervisor(log_dir, *SHIFTED_WORKER, env={"GPT2SUP_TEST_RANK_CLOCK_SHIFT_S": str(-HOUR)}, **ONE_PROCESS)
    _assert_finished_at_the_last_step(proc, log_dir)


def test_a_stopped_rank_whose_clock_is_an_hour_ahead_is_found_and_status_ages_its_beat(tmp_path):
    """Its beats looked fresh for an hour: never detected, and status said 'heartbeat 0.0s ago'."""
    log_dir = tmp_path / "run"
    proc = start_supervisor(log_dir, *SHIFTED_WORKER, env={"GPT2SUP_TEST_RANK_CLOCK_SHIFT_S": str(HOUR)}, **ONE_PROCESS)
    try:
        hb = wait_for_step(log_dir, 4, rank=0)
        os.kill(hb["pid"], signal.SIGSTOP)
        stopped_at = time.monotonic()
        time.sleep(4.0)
        ranks = {r["rank"]: r for r in _status_json(log_dir)["ranks"]}
        assert ranks[0]["age_s"] >= 3.0, ranks[0]
        hung = wait_for(lambda: events_named(log_dir, "hung"), 60, "the hung event")[0]
        assert time.monotonic() - stopped_at < 8 + 15, hung  # --hang-timeout 8, polls, a loaded box
        assert hung["rank"] == 0 and "silent for" in hung["message"], hung
    finally:
        proc.send_signal(signal.SIGTERM)
        wait_exit(proc, log_dir, timeout=180)


def test_the_supervisors_clock_stepping_an_hour_ahead_mid_run_kills_no_healthy_rank(tmp_path):
    """It read 'rank 0 silent for 3602.7s' and killed a healthy rank."""
    log_dir = tmp_path / "run"
    step_file = tmp_path / "step-the-clock"
    proc = start_supervisor(log_dir, main_code=SUPERVISOR_MAIN,
                            env={"GPT2SUP_TEST_SUPERVISOR_CLOCK_SHIFT_S": str(HOUR),
                                 "GPT2SUP_TEST_SUPERVISOR_CLOCK_STEP_FILE": str(step_file)}, **ONE_PROCESS)
    wait_for_step(log_dir, 3)
    step_file.touch()
    _assert_finished_at_the_last_step(proc, log_dir)


def test_a_machine_wide_clock_step_back_mid_run_ends_at_the_real_last_step_and_goodput_stays_sane(tmp_path):
    """It ended 'finished after step 12; final checkpoint model_00010.pt' while the run had saved
    its last step, and status then showed 'goodput: -11024%'."""
    log_dir = tmp_path / "run"
    step_file = tmp_path / "step-the-clock"
    env = {"GPT2SUP_TEST_SUPERVISOR_CLOCK_SHIFT_S": str(-HOUR), "GPT2SUP_TEST_SUPERVISOR_CLOCK_STEP_FILE": str(step_file),
           "GPT2SUP_TEST_RANK_CLOCK_SHIFT_S": str(-HOUR), "GPT2SUP_TEST_RANK_CLOCK_STEP_FILE": str(step_file)}
    proc = start_supervisor(log_dir, *SHIFTED_WORKER, main_code=SUPERVISOR_MAIN, env=env, **ONE_PROCESS)
    wait_for_step(log_dir, 4)
    step_file.touch()
    _assert_finished_at_the_last_step(proc, log_dir)
    goodput = _status_json(log_dir)["goodput"]
    assert goodput is not None and 0.0 <= goodput["useful_s"] <= goodput["wall_s"], goodput


def test_torchrun_stopped_after_its_ranks_finished_and_saved_is_named_and_the_run_ends_finished(tmp_path):
    """It read 'rank 0 silent for 120.0s in phase train after step 39', spent a restart, and never
    named torchrun."""
    log_dir = tmp_path / "run"
    proc = start_supervisor(log_dir, "--checkpoint-timeout", "600", **ONE_PROCESS)
    wait_for_step(log_dir, MAX_STEPS - 3)
    torchrun_pid = next(p["pid"] for p in supervisor_json(log_dir)["processes"] if p["role"] == "torchrun")
    assert "torchrun" in " ".join(psutil.Process(torchrun_pid).cmdline())
    os.kill(torchrun_pid, signal.SIGSTOP)
    try:
        code = wait_exit(proc, log_dir, timeout=120)
    finally:
        if psutil.pid_exists(torchrun_pid):
            os.kill(torchrun_pid, signal.SIGKILL)
    console = console_text(log_dir)
    assert code == SupervisorExit.FINISHED, console[-3000:]
    assert f"torchrun (pid {torchrun_pid}) stopped responding" in console, console[-3000:]
    assert not events_named(log_dir, "restarted") and not events_named(log_dir, "hung"), console[-3000:]
    assert supervisor_json(log_dir)["restarts_used"] == 0
    assert heartbeat(log_dir, 0)["status"] == "finished"
