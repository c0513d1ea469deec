"""``gpt2sup stop`` against real processes and real signals.

A fake supervisor (or fake worker rank) is a small Python process that records itself in the run
directory exactly as the real one does, and on SIGTERM writes a marker and exits, as the real one
does after the worker has saved.
"""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner

from shared.heartbeat import read_heartbeat
from shared.run_dir import RunDir
from shared.supervisor_state import (
    SupervisorState,
    read_supervisor_state,
    write_supervisor_state,
)
from supervisor.commands.stop_cmd import stop

REPO = Path(__file__).resolve().parents[2]

FAKE_SUPERVISOR = r"""
import json, os, signal, socket, sys, time
import psutil
from shared.run_dir import RunDir
from shared.supervisor_state import SupervisorState, write_supervisor_state

run, marker, mode = RunDir.at(sys.argv[1]), sys.argv[2], sys.argv[3]
received = []

def write_state(state, exit_code=None):
    write_supervisor_state(run.supervisor_state, SupervisorState(
        state=state, pid=os.getpid(), pid_create_time=psutil.Process().create_time(),
        hostname=socket.gethostname(), log_dir=str(run.root), started_at=time.time(), exit_code=exit_code))

def on_signal(signum, frame):
    received.append(signal.Signals(signum).name)
    if mode == "ignore":
        return
    if mode == "needs_force" and len(received) < 2:
        write_state("stopping")  # a real supervisor waits here for the worker's save
        return
    with open(marker, "w") as handle:
        json.dump(received, handle)
    write_state("stopped", exit_code=4)  # SupervisorExit.STOPPED, as `gpt2sup run` records it
    sys.exit(0)

signal.signal(signal.SIGTERM, on_signal)
signal.signal(signal.SIGINT, on_signal)
write_state("running")
while True:
    time.sleep(0.02)
"""

FAKE_WORKER = r"""
import json, os, signal, sys, time
from shared.heartbeat import Heartbeat, write_heartbeat
from shared.run_dir import RunDir

run, rank, marker = RunDir.at(sys.argv[1]), int(sys.argv[2]), sys.argv[3]

def beat(status):
    write_heartbeat(run.heartbeat(rank), Heartbeat(pid=os.getpid(), rank=rank, world_size=2, step=42,
                    phase="train", time=time.time(), status=status, max_steps=100))

def on_term(signum, frame):
    beat("stopped")  # the real worker saves a checkpoint at the step boundary first
    with open(marker, "w") as handle:
        handle.write(signal.Signals(signum).name)
    sys.exit(0)

signal.signal(signal.SIGTERM, on_term)
beat("running")
while True:
    time.sleep(0.02)
"""


def spawn(script: str, *args: str, ready: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", script, *args], cwd=REPO)
    deadline = time.monotonic() + 30
    while not ready.exists():
        assert proc.poll() is None, "fake process died during start-up"
        assert time.monotonic() < deadline, "fake process never wrote its state"
        time.sleep(0.02)
    return proc


def stop_cli(run_dir: Path, *args: str):
    return CliRunner().invoke(stop, ["--log-dir", str(run_dir), *args])


def test_stop_delivers_sigterm_to_the_supervisor_and_waits(tmp_path: Path) -> None:
    marker = tmp_path / "marker.json"
    proc = spawn(FAKE_SUPERVISOR, str(tmp_path), str(marker), "graceful", ready=tmp_path / "supervisor.json")
    try:
        result = stop_cli(tmp_path, "--timeout", "20")
        assert result.exit_code == 0, result.output
        assert json.loads(marker.read_text()) == ["SIGTERM"]
        assert proc.wait(timeout=10) == 0
        assert f"stop requested: supervisor (pid {proc.pid})" in result.output
        assert f"run {tmp_path}: stopped" in result.output  # the final state, after the wait
    finally:
        proc.kill()
        proc.wait()


def test_force_sends_a_second_signal(tmp_path: Path) -> None:
    marker = tmp_path / "marker.json"
    proc = spawn(FAKE_SUPERVISOR, str(tmp_path), str(marker), "needs_force", ready=tmp_path / "supervisor.json")
    try:
        result = stop_cli(tmp_path, "--force", "--timeout", "20")
        assert result.exit_code == 0, result.output
        assert json.loads(marker.read_text()) == ["SIGTERM", "SIGINT"]
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait()


def test_force_on_a_supervisor_already_stopping_sends_one_more(tmp_path: Path) -> None:
    marker = tmp_path / "marker.json"
    proc = spawn(FAKE_SUPERVISOR, str(tmp_path), str(marker), "needs_force", ready=tmp_path / "supervisor.json")
    try:
        first = stop_cli(tmp_path, "--no-wait")
        assert first.exit_code == 0
        deadline = time.monotonic() + 10
        while read_supervisor_state(RunDir.at(tmp_path).supervisor_state).state != "stopping":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert proc.poll() is None  # one request alone waits for the save
        second = stop_cli(tmp_path, "--force", "--timeout", "20")
        assert second.exit_code == 0, second.output
        assert json.loads(marker.read_text()) == ["SIGTERM", "SIGINT"]
    finally:
        proc.kill()
        proc.wait()


def test_no_wait_returns_at_once_and_timeout_exits_1(tmp_path: Path) -> None:
    marker = tmp_path / "marker.json"
    proc = spawn(FAKE_SUPERVISOR, str(tmp_path), str(marker), "ignore", ready=tmp_path / "supervisor.json")
    try:
        result = stop_cli(tmp_path, "--no-wait")
        assert result.exit_code == 0
        result = stop_cli(tmp_path, "--timeout", "0.5")
        assert result.exit_code == 1
        assert "still running after 0.5s" in result.output
        assert proc.poll() is None  # stop never kills
    finally:
        proc.kill()
        proc.wait()


def test_bare_workers_each_get_sigterm(tmp_path: Path) -> None:
    run = RunDir.at(tmp_path)
    procs = [
        spawn(FAKE_WORKER, str(tmp_path), str(rank), str(tmp_path / f"marker{rank}"), ready=run.heartbeat(rank))
        for rank in (0, 1)
    ]
    try:
        result = stop_cli(tmp_path, "--timeout", "20")
        assert result.exit_code == 0, result.output
        for rank, proc in enumerate(procs):
            assert proc.wait(timeout=10) == 0
            assert (tmp_path / f"marker{rank}").read_text() == "SIGTERM"
            assert read_heartbeat(run.heartbeat(rank)).status == "stopped"
        assert "worker rank 0" in result.output and "worker rank 1" in result.output
        assert f"run {tmp_path}: stopped" in result.output
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def test_nothing_running_is_one_line_exit_1(tmp_path: Path) -> None:
    result = stop_cli(tmp_path)
    assert result.exit_code == 1
    assert result.output.strip() == f"nothing to stop in {tmp_path}/: no live supervisor or worker (run: no run)"

    # A finished supervisor whose pid is long gone.
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    created = psutil.Process(gone.pid).create_time()
    gone.wait()
    write_supervisor_state(
        RunDir.at(tmp_path).supervisor_state,
        SupervisorState(state="finished", pid=gone.pid, pid_create_time=created,
                        hostname=socket.gethostname(), log_dir=str(tmp_path), started_at=created),
    )
    result = stop_cli(tmp_path)
    assert result.exit_code == 1 and "(run: finished)" in result.output


def test_a_reused_pid_is_never_signalled(tmp_path: Path) -> None:
    # supervisor.json names a live process, but with another start time: not our supervisor.
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        created = psutil.Process(bystander.pid).create_time()
        write_supervisor_state(
            RunDir.at(tmp_path).supervisor_state,
            SupervisorState(state="running", pid=bystander.pid, pid_create_time=created - 1000,
                            hostname=socket.gethostname(), log_dir=str(tmp_path), started_at=created),
        )
        result = stop_cli(tmp_path, "--timeout", "1")
        assert result.exit_code == 1
        assert "(run: dead)" in result.output
        time.sleep(0.2)
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_stop_command_line_never_imports_torch(tmp_path: Path) -> None:
    from tests.supervisor.helpers import NO_TORCH_MAIN

    marker = tmp_path / "marker.json"
    proc = spawn(FAKE_SUPERVISOR, str(tmp_path), str(marker), "graceful", ready=tmp_path / "supervisor.json")
    try:
        run = subprocess.run(
            [sys.executable, "-c", NO_TORCH_MAIN, "stop", "--log-dir", str(tmp_path), "--timeout", "20"],
            cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
        )
        assert run.returncode == 0, run.stderr
        assert marker.exists() and proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait()


def test_stop_says_how_to_force_and_reports_the_run_s_own_exit_code(tmp_path: Path) -> None:
    """The request came from `gpt2sup stop`, not a terminal: no Ctrl-C advice; the final line
    names the state and exit code `gpt2sup run` recorded (4: stopped, resumable)."""
    marker = tmp_path / "marker.json"
    proc = spawn(FAKE_SUPERVISOR, str(tmp_path), str(marker), "graceful", ready=tmp_path / "supervisor.json")
    try:
        from shared.heartbeat import Heartbeat, write_heartbeat

        write_heartbeat(RunDir.at(tmp_path).heartbeat(0), Heartbeat(
            pid=proc.pid, rank=0, world_size=1, step=73, phase="train", time=time.time(),
            status="stopped", max_steps=300))
        RunDir.at(tmp_path).checkpoint(73).write_bytes(b"\0" * 10)
        result = stop_cli(tmp_path, "--timeout", "20")
        assert result.exit_code == 0, result.output
        lines = result.output.strip().splitlines()
        assert lines[0].startswith(f"stop requested: supervisor (pid {proc.pid}): the worker saves")
        assert "`gpt2sup stop --force`" in lines[0] and "Ctrl-C" not in result.output
        assert lines[-1] == (f"run {tmp_path}: stopped (exit 4), 74/300 steps done, newest checkpoint "
                             f"model_00073.pt; `gpt2sup run --log-dir {tmp_path}` resumes it")
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("checkpoint", [True, False])
def test_the_resume_hint_names_the_run_directory_that_was_stopped(tmp_path: Path, monkeypatch, checkpoint) -> None:
    """Issue 19: after `gpt2sup stop --log-dir mine` the hint said `gpt2sup run` (which acts on
    ./log); with no checkpoint yet it promised a resume there is nothing to resume from."""
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "mine"
    run_dir.mkdir()
    proc = spawn(FAKE_SUPERVISOR, str(run_dir), str(tmp_path / "marker.json"), "graceful",
                 ready=run_dir / "supervisor.json")
    try:
        if checkpoint:
            RunDir.at(run_dir).checkpoint(73).write_bytes(b"\0" * 10)
        result = CliRunner().invoke(stop, ["--log-dir", "mine", "--timeout", "20"])
        assert result.exit_code == 0, result.output
        last = result.output.strip().splitlines()[-1]
        if checkpoint:
            assert last.endswith("; `gpt2sup run --log-dir mine` resumes it"), last
        else:
            assert "resume" in last and "nothing to resume" in last and "`gpt2sup run" not in last, last
    finally:
        proc.kill()
        proc.wait()
