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
)
from supervisor.commands.stop_cmd import stop
from tests.supervisor.helpers import write_supervisor_state

REPO = Path(__file__).resolve().parents[2]

FAKE_SUPERVISOR = r"""
import json, os, signal, socket, sys, time
import psutil
import pytest
from shared.run_dir import RunDir
from shared.atomic_io import write_json_atomic
from shared.supervisor_state import SupervisorState
from supervisor.policy import stop_is_forced

run, marker, mode = RunDir.at(sys.argv[1]), sys.argv[2], sys.argv[3]
received = []

def write_state(state, exit_code=None):
    write_json_atomic(run.supervisor_state, SupervisorState(
        state=state, pid=os.getpid(), pid_create_time=psutil.Process().create_time(),
        hostname=socket.gethostname(), log_dir=str(run.root), started_at=time.time(), exit_code=exit_code).to_dict())

def on_signal(signum, frame):
    received.append(signal.Signals(signum).name)
    if mode == "ignore":
        return
    if mode == "needs_force" and not stop_is_forced(received):
        write_state("stopping")  # a real supervisor waits here for the worker's save
        return
    with open(marker, "w") as handle:
        json.dump(received, handle)
    write_state("stopped", exit_code=4)  # SupervisorExit.STOPPED, as `gpt2sup run` records it
    sys.exit(0)

for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
    signal.signal(signum, on_signal)
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


def test_force_sends_the_force_signal_and_says_the_save_is_skipped(tmp_path: Path) -> None:
    marker = tmp_path / "marker.json"
    proc = spawn(FAKE_SUPERVISOR, str(tmp_path), str(marker), "needs_force", ready=tmp_path / "supervisor.json")
    try:
        result = stop_cli(tmp_path, "--force", "--timeout", "20")
        assert result.exit_code == 0, result.output
        assert json.loads(marker.read_text()) == ["SIGQUIT"]
        assert proc.wait(timeout=10) == 0
        assert result.output.startswith(f"forced stop: supervisor (pid {proc.pid}): the process tree is killed "
                                        "without waiting for the save")
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
        again = stop_cli(tmp_path, "--no-wait")  # a plain repeat: idempotent, and says so
        assert again.exit_code == 0 and again.output.startswith("a stop is already under way"), again.output
        assert "changes nothing" in again.output
        time.sleep(0.3)
        assert proc.poll() is None
        second = stop_cli(tmp_path, "--force", "--timeout", "20")
        assert second.exit_code == 0, second.output
        assert json.loads(marker.read_text()) == ["SIGTERM", "SIGTERM", "SIGQUIT"]
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


# --- issue 19 item 3: a stop is a stop ------------------------------------------------------------

def _default_signals() -> None:
    """The child's verdict must not depend on the shell that ran pytest (nohup, `&`)."""
    import signal

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(signum, signal.SIG_DFL)


def _real_supervisor(log_dir: Path, *args: str, nproc: int, worker_args: list[str]) -> subprocess.Popen:
    from tests.supervisor.helpers import FAST_SUPERVISOR_ARGS, child_env, gpt2sup_argv

    argv = gpt2sup_argv("run", "--log-dir", str(log_dir), "--nproc-per-node", str(nproc), *FAST_SUPERVISOR_ARGS,
                        *args, "--", *worker_args)
    with open(f"{log_dir}.console", "ab") as console:
        return subprocess.Popen(argv, cwd=REPO, env=child_env(), stdout=console, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, preexec_fn=_default_signals)  # noqa: PLW1509 - before exec, no lock taken


def _two_plain_stops_at_once(log_dir: Path) -> list[subprocess.CompletedProcess]:
    """Two operators (or a retrying script) type `gpt2sup stop` at the same moment."""
    from tests.supervisor.helpers import child_env, gpt2sup_argv

    argv = gpt2sup_argv("stop", "--log-dir", str(log_dir), "--no-wait")
    procs = [subprocess.Popen(argv, cwd=REPO, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=60)[0] for p in procs]
    return [subprocess.CompletedProcess(p.args, p.returncode, out) for p, out in zip(procs, outputs)]


@pytest.mark.slow
def test_two_plain_stops_at_once_save_and_stop_like_one(tmp_path: Path) -> None:
    """Both requests reach the supervisor within milliseconds; it used to take the second as
    "another stop request forces" and kill the tree, losing the steps since the last save."""
    from shared.exit_codes import SupervisorExit
    from tests.supervisor.helpers import (
        WORKER_ARGS,
        console_text,
        events_named,
        heartbeat,
        wait_exit,
        wait_for_step,
    )

    log_dir = tmp_path / "run"
    proc = _real_supervisor(log_dir, nproc=2, worker_args=WORKER_ARGS)
    try:
        wait_for_step(log_dir, 2, rank=0)
        for stopped in _two_plain_stops_at_once(log_dir):
            assert stopped.returncode == 0, stopped.stdout
            assert "saves at its next step boundary" in stopped.stdout, stopped.stdout
        assert wait_exit(proc, log_dir, timeout=120) == SupervisorExit.STOPPED, console_text(log_dir)[-3000:]
        assert not any("killing" in e["message"] for e in events_named(log_dir, "stop_requested"))
        assert {heartbeat(log_dir, r)["status"] for r in (0, 1)} == {"stopped"}
        stop_step = heartbeat(log_dir, 0)["step"]
        assert (log_dir / f"model_{stop_step:05d}.pt").exists()  # the stop's own save
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.slow
def test_repeated_plain_stops_wait_for_the_save_and_only_force_skips_it(tmp_path: Path) -> None:
    """A worker that cannot reach its step boundary: plain requests, however many, keep waiting
    (up to --stop-timeout); `gpt2sup stop --force` kills the tree at once."""
    from shared.exit_codes import SupervisorExit
    from tests.supervisor.helpers import (
        console_text,
        events_named,
        one_process_worker_args,
        wait_exit,
        wait_for,
    )

    log_dir = tmp_path / "run"
    args = one_process_worker_args()
    proc = _real_supervisor(log_dir, "--worker", "tests.supervisor.stubborn_worker", "--stop-timeout", "600",
                            nproc=1, worker_args=args)
    try:
        wait_for(lambda: (log_dir / "stubborn.ready").exists(), 60, "the worker to ignore SIGTERM")
        for stopped in _two_plain_stops_at_once(log_dir):
            assert stopped.returncode == 0, stopped.stdout
            assert "saves at its next step boundary" in stopped.stdout, stopped.stdout
        wait_for(lambda: events_named(log_dir, "stop_requested"), 30, "the forwarded stop request")
        time.sleep(3)
        assert proc.poll() is None, console_text(log_dir)[-3000:]  # still waiting for the save
        assert not any("killing" in e["message"] for e in events_named(log_dir, "stop_requested"))
        again = stop_cli(log_dir, "--no-wait")  # a third, while the supervisor waits for the save
        assert again.exit_code == 0 and again.output.startswith("a stop is already under way"), again.output
        wait_for(lambda: [e for e in events_named(log_dir, "stop_requested") if "stop requested again (SIGTERM)" in
                          e["message"] and "changes nothing" in e["message"]], 30, "the repeat to be acknowledged")
        assert proc.poll() is None
        forced = stop_cli(log_dir, "--force", "--timeout", "60")
        assert forced.exit_code == 0, forced.output
        assert forced.output.startswith("forced stop: supervisor") and "without waiting for the save" in forced.output
        assert wait_exit(proc, log_dir, timeout=60) == SupervisorExit.STOPPED
        messages = [e["message"] for e in events_named(log_dir, "stop_requested")]
        assert any("forced stop request (SIGQUIT, `gpt2sup stop --force`): killing" in m for m in messages), messages
    finally:
        proc.kill()
        proc.wait()
