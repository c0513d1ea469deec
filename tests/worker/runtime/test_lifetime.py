"""worker.runtime.lifetime: telling torchrun's teardown from a stop request, and the start-up milestones."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from worker.runtime import lifetime, startup_clock
from worker.runtime.lifetime import (
    StopRequest,
    SupervisorWatch,
    gone_peers,
    looks_like_peer_loss,
)


def _beat(directory: Path, rank: int, pid: int, when: float, host: str | None = None) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"rank{rank}.json").write_text(json.dumps(
        {"rank": rank, "pid": pid, "time": when, "hostname": host or socket.gethostname()}))


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_peer_whose_process_is_gone_is_named(tmp_path):
    now = time.time()
    _beat(tmp_path, 0, os.getpid(), now)
    _beat(tmp_path, 1, _dead_pid(), now)
    assert gone_peers(tmp_path, rank=0, since=now - 10) == [1]


def test_live_peers_old_heartbeats_and_other_hosts_do_not_count(tmp_path):
    now = time.time()
    _beat(tmp_path, 1, os.getppid(), now)  # alive
    _beat(tmp_path, 2, _dead_pid(), now - 100)  # an earlier attempt's
    _beat(tmp_path, 3, _dead_pid(), now, host="another-node")
    assert gone_peers(tmp_path, rank=0, since=now - 10) == []


def test_this_attempts_peers_are_judged_by_its_id_and_the_files_write_not_their_clocks(tmp_path, monkeypatch):
    """Ranks an hour behind the kernel's clock: a gone peer's beat looked older than this process
    (never named: the rank waited out torchrun's teardown) and a live one's looked written before
    its process started (a reused pid: named gone)."""
    monkeypatch.setenv("GPT2SUP_ATTEMPT_ID", "7-2-abcd")
    behind = time.time() - 3600

    def beat(rank: int, pid: int, attempt: str, when: float) -> None:
        (tmp_path / f"rank{rank}.json").write_text(json.dumps(
            {"rank": rank, "pid": pid, "time": when, "hostname": socket.gethostname(), "attempt_id": attempt}))

    beat(1, _dead_pid(), "7-2-abcd", behind)  # gone
    beat(2, os.getppid(), "7-2-abcd", behind)  # alive (started before its file was written)
    beat(3, _dead_pid(), "7-1-ef01", time.time() + 3600)  # an earlier attempt's, its clock ahead
    assert gone_peers(tmp_path, rank=0, since=time.time() - 10) == [1]


def test_a_reused_pid_is_not_alive(tmp_path):
    now = time.time()
    _beat(tmp_path, 1, os.getpid(), now - 1e6)  # our pid, but "written" long before we started
    assert gone_peers(tmp_path, rank=0, since=now - 2e6) == [1]


@pytest.mark.parametrize("exc, lost", [
    (RuntimeError("[gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:1"), True),
    (RuntimeError("Connection reset by peer"), True),
    (type("DistBackendError", (RuntimeError,), {})("anything"), True),
    (ValueError("shapes do not match"), False),
    (KeyboardInterrupt(), False),
])
def test_peer_loss_is_recognised_by_type_or_gloos_words(exc, lost):
    assert looks_like_peer_loss(exc) is lost


def _stop(tmp_path: Path, supervised: bool = True) -> StopRequest:
    stop = StopRequest(SupervisorWatch(os.getppid(), 0.0) if supervised else None)
    stop.attach(tmp_path, None, 0)
    stop._started = time.time() - 5
    return stop


def test_the_supervisors_request_is_its_file_written_since_this_process_started(tmp_path):
    stop = _stop(tmp_path)
    assert not stop._supervisor_asked()
    (tmp_path / lifetime.STOP_REQUEST_NAME).write_text(json.dumps({"time": time.time() - 3600}))
    assert not stop._supervisor_asked()  # an earlier attempt's
    (tmp_path / lifetime.STOP_REQUEST_NAME).write_text(json.dumps({"time": time.time(), "pid": 1}))
    assert stop._supervisor_asked()


def test_sigterm_with_live_peers_and_no_request_still_asks_to_save(tmp_path):
    """SLURM signals every process at once, before the supervisor writes its request."""
    _beat(tmp_path / "heartbeat", 1, os.getppid(), time.time())
    stop = _stop(tmp_path)
    stop._handle(15, None)
    assert stop.requested() and stop.reason == "stop requested (SIGTERM)" and stop.unrequested_sigterm


def test_a_bare_run_treats_sigterm_as_a_save_request_whatever_its_peers(tmp_path):
    _beat(tmp_path / "heartbeat", 1, _dead_pid(), time.time())
    stop = _stop(tmp_path, supervised=False)
    stop._handle(15, None)
    assert stop.requested() and not stop.unrequested_sigterm


def test_sigterm_without_a_request_while_a_peer_is_gone_exits_at_once(tmp_path):
    """Run in a child: the handler ends the process with os._exit(1) and writes the heartbeat."""
    run = tmp_path / "run"
    _beat(run / "heartbeat", 1, _dead_pid(), time.time() + 1)
    code = f"""
import os, signal, sys, time
from shared.run_dir import RunDir
from worker.runtime.lifetime import StopRequest, SupervisorWatch
from worker.runtime.telemetry import HeartbeatWriter
os.environ["GPT2SUP_SUPERVISOR"] = "{os.getpid()}:0"
stop = StopRequest(SupervisorWatch({os.getpid()}, 0.0))
stop.install()
stop._started = time.time() - 5
run_dir = RunDir.at({str(run)!r})
stop.attach(run_dir.root, HeartbeatWriter(run_dir, 0, 2, 10), 0)  # as worker.train_gpt2.main does
os.kill(os.getpid(), signal.SIGTERM)
time.sleep(30)
print("still alive")
"""
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[3], capture_output=True, check=False,
                          text=True, timeout=60)
    assert done.returncode == 1 and "still alive" not in done.stdout, done.stderr
    assert time.monotonic() - started < 20
    beat = json.loads((run / "heartbeat" / "rank0.json").read_text())
    assert beat["status"] == "failed" and "no save" in beat["message"] and "rank 1 is gone" in beat["message"]


def test_the_excepthook_ends_a_torn_down_rank_at_once_and_keeps_the_traceback(tmp_path):
    code = f"""
import os
from worker.runtime.lifetime import StopRequest, SupervisorWatch
stop = StopRequest(SupervisorWatch({os.getpid()}, 0.0))
stop.install()
import atexit
atexit.register(lambda: print("atexit ran"))
raise RuntimeError("Connection closed by peer [127.0.0.1]:1")
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[3], capture_output=True, check=False,
                          text=True, timeout=60)
    assert done.returncode == 1
    assert "Connection closed by peer" in done.stderr and "Traceback" in done.stderr
    assert "atexit ran" not in done.stdout  # no interpreter teardown


def test_startup_milestones_keep_their_first_time_and_the_process_start():
    startup_clock.reset()
    startup_clock.mark(startup_clock.IMPORTS_DONE, 100.0)
    startup_clock.mark(startup_clock.IMPORTS_DONE, 200.0)
    marks = startup_clock.marks()
    assert marks[startup_clock.IMPORTS_DONE] == 100.0 and startup_clock.PROCESS_START in marks
    assert list(marks) == [m for m in startup_clock.MILESTONES if m in marks]
    startup_clock.reset()


def test_the_supervisors_request_for_this_attempt_counts_whatever_the_clocks_say(tmp_path, monkeypatch):
    """The supervisor's clock an hour behind this rank's: its request looked older than this process
    and a stop was taken for torchrun's teardown. The attempt id decides, not the time."""
    monkeypatch.setenv("GPT2SUP_ATTEMPT_ID", "7-2-abcd")
    stop = _stop(tmp_path)
    request = tmp_path / lifetime.STOP_REQUEST_NAME
    request.write_text(json.dumps({"time": time.time() - 3600, "pid": 1, "attempt_id": "7-2-abcd"}))
    assert stop._supervisor_asked()
    request.write_text(json.dumps({"time": time.time() + 3600, "pid": 1, "attempt_id": "7-1-ef01"}))
    assert not stop._supervisor_asked()  # an earlier attempt's, however new its time looks
