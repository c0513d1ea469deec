"""Orphan clean-up touches only what it can prove is this run's, and never waits forever (7.2, 7.3).

The "trainers" here are plain python processes whose command line carries ``--log_dir`` (what
the proof reads), so these run in seconds; the torchrun versions live in test_resilience_e2e.py.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from shared.process_identity import ProcessId, same_process_alive
from shared.supervisor_state import ProcessRecord, SupervisorState
from supervisor.attempts.orphans import (
    find_foreign_trainers,
    orphan_stop_verdict,
    stop_orphans,
    survey_orphans,
)

# A rank: beats its heartbeat on SIGTERM (it "answers"), then exits; or ignores the request.
RANK = textwrap.dedent(
    """
    import json, os, signal, sys, time
    hb = os.path.join(sys.argv[sys.argv.index("--log_dir") + 1], "heartbeat", "rank0.json")
    def option(name, default):
        return float(sys.argv[sys.argv.index(name) + 1]) if name in sys.argv else default
    clock_offset, save_s = option("--clock-offset", 0.0), option("--save-s", 1.0)
    def beat(status):
        tmp = hb + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"pid": os.getpid(), "rank": 0, "world_size": 1, "step": 3, "phase": "train",
                       "time": time.time() + clock_offset, "status": status}, f)
        os.replace(tmp, hb)
    def on_term(*_):
        beat("running")   # answered: saving at the step boundary
        time.sleep(save_s)
        beat("stopped")
        sys.exit(0)
    if "--ignore" in sys.argv:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, on_term)
    os.makedirs(os.path.dirname(hb), exist_ok=True)
    beat("running")
    print("up", flush=True)
    time.sleep(600)
    """
)


def _start(run_dir: Path, *extra: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", RANK, "--log_dir", str(run_dir), *extra],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "up"
    return proc


def _dead_supervisor() -> ProcessId:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    ident = ProcessId.of(psutil.Process(proc.pid))
    proc.wait()
    return ident


def _state(run_dir: Path, boss: ProcessId, procs: list[subprocess.Popen], roles: list[str] | None = None) -> SupervisorState:
    records = [ProcessRecord(p.pid, psutil.Process(p.pid).create_time(), (roles or ["worker"] * len(procs))[i])
               for i, p in enumerate(procs)]
    return SupervisorState(state="running", pid=boss.pid, pid_create_time=boss.create_time,
                           hostname=socket.gethostname(), log_dir=str(run_dir), started_at=0.0, processes=records)


@pytest.fixture
def reap():
    procs: list[subprocess.Popen] = []
    yield procs
    for proc in procs:
        try:
            os.kill(proc.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
        proc.kill()
        proc.wait()


def test_a_copied_run_directory_never_touches_the_original_runs_live_processes(tmp_path, reap):
    """`cp -a runA runB` while A trains: runB's supervisor.json names A's live supervisor and ranks."""
    run_a, run_b = tmp_path / "runA", tmp_path / "runB"
    rank = _start(run_a)
    reap.append(rank)
    me = ProcessId.of(psutil.Process())  # A's supervisor: alive
    copied = _state(run_a, me, [rank])
    survey = survey_orphans(copied, run_b)
    assert survey.orphans == [] and "alive" in survey.left_alone[rank.pid]
    # Even with A's supervisor dead, A's rank trains runA, not runB: still not ours.
    survey = survey_orphans(_state(run_a, _dead_supervisor(), [rank]), run_b)
    assert survey.orphans == [] and "runA" in survey.left_alone[rank.pid]
    assert find_foreign_trainers(run_b) is None  # and nothing trains runB: B may launch
    assert same_process_alive(rank.pid, psutil.Process(rank.pid).create_time())


def test_orphans_of_a_dead_supervisor_of_this_directory_are_proven_and_asked_to_save(tmp_path, reap):
    run = tmp_path / "run"
    rank = _start(run)
    reap.append(rank)
    survey = survey_orphans(_state(run, _dead_supervisor(), [rank]), run)
    assert [p.pid for p in survey.orphans] == [rank.pid]
    report = stop_orphans(survey, run, kill_grace_s=5.0, stop_timeout_s=60.0,
                          stop_forced=lambda: False, wait=time.sleep)
    assert report.forced is None and report.pids == [rank.pid] and not report.survivors
    assert '"stopped"' in (run / "heartbeat" / "rank0.json").read_text()  # it saved and exited by itself


@pytest.mark.slow  # waits out a 2.5 s save
def test_an_orphan_whose_clock_is_an_hour_behind_that_answers_is_given_its_save_not_killed(tmp_path, reap):
    """Its answer (a beat after the request) was timed an hour before the request by its clock: it
    looked silent and was killed after the kill grace, mid-save."""
    run = tmp_path / "run"
    rank = _start(run, "--clock-offset", "-3600", "--save-s", "2.5")
    reap.append(rank)
    survey = survey_orphans(_state(run, _dead_supervisor(), [rank]), run)
    report = stop_orphans(survey, run, kill_grace_s=1.0, stop_timeout_s=60.0,
                          stop_forced=lambda: False, wait=time.sleep)
    assert report.forced is None, report.forced
    assert '"stopped"' in (run / "heartbeat" / "rank0.json").read_text()  # it saved and exited by itself


def test_a_recorded_pid_now_used_by_another_process_is_left_alone(tmp_path, reap):
    run = tmp_path / "run"
    rank = _start(run)
    reap.append(rank)
    state = _state(run, _dead_supervisor(), [rank])
    state.processes[0].create_time -= 50.0  # the record is of an older process with this pid
    assert survey_orphans(state, run).orphans == []


@pytest.mark.slow  # waits out a real kill grace twice: CI runs it, the inner loop does not
@pytest.mark.parametrize("how, why", [("sigstop", "stopped"), ("--ignore", "did not answer")])
def test_an_orphan_that_cannot_or_will_not_save_is_killed_after_the_kill_grace_not_the_stop_timeout(
    tmp_path, reap, how, why
):
    """A SIGSTOPped rank (the issue's scenario) or one ignoring SIGTERM: SIGCONT+SIGKILL, bounded."""
    run = tmp_path / "run"
    rank = _start(run, *([how] if how.startswith("--") else []))
    reap.append(rank)
    if how == "sigstop":
        os.kill(rank.pid, signal.SIGSTOP)
    survey = survey_orphans(_state(run, _dead_supervisor(), [rank]), run)
    started = time.monotonic()
    report = stop_orphans(survey, run, kill_grace_s=2.0, stop_timeout_s=600.0,
                          stop_forced=lambda: False, wait=time.sleep)
    assert time.monotonic() - started < 10
    assert report.forced and why in report.forced
    assert not psutil.pid_exists(rank.pid) or psutil.Process(rank.pid).status() == psutil.STATUS_ZOMBIE


def test_a_forced_stop_request_ends_the_orphan_clean_up_at_once(tmp_path, reap):
    run = tmp_path / "run"
    rank = _start(run, "--ignore")
    reap.append(rank)
    survey = survey_orphans(_state(run, _dead_supervisor(), [rank]), run)
    requests = iter([False, False, True, True, True])
    started = time.monotonic()
    report = stop_orphans(survey, run, kill_grace_s=60.0, stop_timeout_s=600.0,
                          stop_forced=lambda: next(requests), wait=time.sleep)
    assert time.monotonic() - started < 5
    assert report.forced == "a forced stop request"


def test_a_bare_trainer_of_this_directory_is_foreign_and_named(tmp_path, reap):
    run = tmp_path / "run"
    rank = _start(run)
    reap.append(rank)
    foreign = find_foreign_trainers(run)
    assert foreign is not None and list(foreign.processes) == [rank.pid]
    assert str(rank.pid) in foreign.describe() and str(run) in foreign.describe()
    assert find_foreign_trainers(run, own=[rank.pid]) is None


def test_the_holder_of_the_worker_lock_is_foreign_even_without_a_log_dir_argument(tmp_path, reap):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c",
         ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT);"
          " fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, str(os.getpid()).encode());"
          " print('up', flush=True); time.sleep(60)"), str(run / "worker.lock")],
        stdout=subprocess.PIPE, text=True)
    reap.append(holder)
    assert holder.stdout.readline().strip() == "up"
    foreign = find_foreign_trainers(run)
    assert foreign is not None and foreign.lock_holder == holder.pid
    assert f"pid {holder.pid}" in foreign.describe() and "worker.lock" in foreign.describe()


def test_the_orphan_verdict_waits_for_answering_ranks_and_not_for_silent_or_stopped_ones():
    kw = {"kill_grace_s": 10.0, "stop_timeout_s": 600.0}
    assert orphan_stop_verdict(5.0, stop_forced=False, silent=1, stopped=1, **kw) is None  # within grace
    assert "stopped" in orphan_stop_verdict(10.0, stop_forced=False, silent=0, stopped=1, **kw)
    assert "did not answer" in orphan_stop_verdict(10.0, stop_forced=False, silent=1, stopped=0, **kw)
    assert orphan_stop_verdict(300.0, stop_forced=False, silent=0, stopped=0, **kw) is None  # saving
    assert "stop timeout" in orphan_stop_verdict(600.0, stop_forced=False, silent=0, stopped=0, **kw)
    assert orphan_stop_verdict(0.0, stop_forced=True, silent=0, stopped=0, **kw) == "a forced stop request"


def test_a_scripts_rank_without_a_log_dir_is_proven_by_the_supervisor_named_in_its_environment(tmp_path, reap):
    # `gpt2sup run -- train.py`: the script's ranks carry no --log_dir of ours on their command
    # line; GPT2SUP_SUPERVISOR in their environment names the (now dead) supervisor that started
    # them. A process naming another supervisor, or none, is left alone.
    run = tmp_path / "run"
    run.mkdir()
    boss = _dead_supervisor()
    sleeper = [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(600)"]

    def start(token: str | None) -> subprocess.Popen:
        env = {k: v for k, v in os.environ.items() if k != "GPT2SUP_SUPERVISOR"}
        if token is not None:
            env["GPT2SUP_SUPERVISOR"] = token
        proc = subprocess.Popen(sleeper, stdout=subprocess.PIPE, text=True, env=env)
        assert proc.stdout.readline().strip() == "up"
        reap.append(proc)
        return proc

    ours, other, unnamed = start(boss.token), start(f"{boss.pid}:{boss.create_time + 100:.3f}"), start(None)
    survey = survey_orphans(_state(run, boss, [ours, other, unnamed]), run)
    assert [p.pid for p in survey.orphans] == [ours.pid]
    assert set(survey.left_alone) == {other.pid, unnamed.pid}
    assert all(reason == "no --log_dir on its command line" for reason in survey.left_alone.values())
