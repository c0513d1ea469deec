"""``collect_snapshot`` and ``gpt2sup status`` on real run directories.

Each test writes the files a worker and a supervisor would (through the shared contract modules)
and checks what status concludes from them, including liveness judged from real pids.
"""
from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner

from shared.heartbeat import Heartbeat, write_heartbeat
from shared.run_dir import RunDir
from shared.supervisor_state import FailureRecord, SupervisorState, write_supervisor_state
from supervisor.commands.status_cmd import status
from supervisor.snapshot import collect_snapshot, read_jsonl_tail

REPO = Path(__file__).resolve().parents[2]

# Runs the real console entry point with torch made unimportable: any import of torch on the
# status path raises, which gives a traceback and a non-zero exit.
NO_TORCH_MAIN = """
import sys
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch imported by gpt2sup " + sys.argv[1])
        return None
sys.meta_path.insert(0, _NoTorch())
sys.argv = ["gpt2sup"] + sys.argv[1:]
from supervisor.cli import main
main()
"""


def dead_pid() -> tuple[int, float]:
    """A pid (and its start time) that belonged to a process which has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    create_time = psutil.Process(proc.pid).create_time()
    proc.wait()
    return proc.pid, create_time


def supervisor_state(run_dir: Path, pid: int, create_time: float, state: str = "running", **extra) -> None:
    write_supervisor_state(
        RunDir.at(run_dir).supervisor_state,
        SupervisorState(
            state=state, pid=pid, pid_create_time=create_time, hostname=socket.gethostname(),
            log_dir=str(run_dir), started_at=time.time() - 100, **extra,
        ),
    )


def heartbeat(run_dir: Path, rank: int, step: int, *, pid: int | None = None, age: float = 1.0,
              status: str = "running", max_steps: int | None = 300, now: float | None = None,
              world_size: int = 1, loss: float | None = 5.1234, tok_s: float | None = 12345.0) -> None:
    now = time.time() if now is None else now
    write_heartbeat(
        RunDir.at(run_dir).heartbeat(rank),
        Heartbeat(pid=os.getpid() if pid is None else pid, rank=rank, world_size=world_size, step=step,
                  phase="train", time=now - age, loss=loss, tokens_per_s=tok_s, status=status,
                  max_steps=max_steps),
    )


def metrics(run_dir: Path, steps: range, dt: float = 0.5) -> None:
    with open(RunDir.at(run_dir).metrics, "a") as handle:
        for s in steps:
            handle.write(json.dumps({"step": s, "loss": 6.0 - s / 1000, "lr": 6e-4, "norm": 1.0,
                                     "dt": dt, "tokens_per_s": 1000.0}) + "\n")


def checkpoint_files(run_dir: Path, sizes: dict[int, int]) -> None:
    for step, size in sizes.items():
        RunDir.at(run_dir).checkpoint(step).write_bytes(b"\0" * size)


def invoke(*args: str):
    return CliRunner().invoke(status, list(args))


# --- snapshot ----------------------------------------------------------------------------------
def test_empty_and_missing_directories_hold_no_run(tmp_path: Path) -> None:
    (tmp_path / ".gitkeep").touch()
    assert collect_snapshot(tmp_path).verdict == "no run"
    missing = collect_snapshot(tmp_path / "nope")
    assert (missing.exists, missing.has_run, missing.verdict) == (False, False, "no run")


def test_live_supervisor_with_matching_start_time_is_running(tmp_path: Path) -> None:
    me = psutil.Process()
    supervisor_state(tmp_path, me.pid, me.create_time(), attempt=2, restarts_used=1, max_restarts=10)
    snap = collect_snapshot(tmp_path)
    assert snap.verdict == "running"
    assert snap.supervisor.alive is True
    assert (snap.supervisor.attempt, snap.supervisor.restarts_used) == (2, 1)


def test_reused_pid_with_other_start_time_is_dead(tmp_path: Path) -> None:
    # Our own pid is alive, but the recorded start time is someone else's: pid reuse.
    me = psutil.Process()
    supervisor_state(tmp_path, me.pid, me.create_time() - 3600)
    snap = collect_snapshot(tmp_path)
    assert snap.supervisor.alive is False
    assert snap.verdict == "dead"


def test_dead_supervisor_reports_last_failure(tmp_path: Path) -> None:
    pid, created = dead_pid()
    failure = FailureRecord(kind="crashed", reason="rank 1 killed by SIGKILL", attempt=3, time=time.time())
    supervisor_state(tmp_path, pid, created, restarts_used=2, max_restarts=10, last_failure=failure)
    heartbeat(tmp_path, 0, 40, pid=pid, age=30)
    snap = collect_snapshot(tmp_path)
    assert snap.verdict == "dead"
    assert snap.supervisor.last_failure_reason == "rank 1 killed by SIGKILL"
    assert snap.ranks[0].pid_alive is False
    assert snap.progress.eta_s is None  # nothing is running, so no ETA


@pytest.mark.parametrize(
    ("state", "verdict"),
    [("finished", "finished"), ("stopped", "stopped"), ("gave_up", "gave up"), ("error", "crashed")],
)
def test_terminal_states_map_to_verdicts(tmp_path: Path, state: str, verdict: str) -> None:
    pid, created = dead_pid()
    supervisor_state(tmp_path, pid, created, state=state)
    assert collect_snapshot(tmp_path).verdict == verdict


def test_bare_worker_progress_eta_and_quietest_rank(tmp_path: Path) -> None:
    now = time.time() + 10  # read "10 s from now", so both heartbeats postdate our process
    heartbeat(tmp_path, 0, 100, age=1.0, now=now, world_size=2)
    heartbeat(tmp_path, 1, 99, age=7.5, now=now, world_size=2)
    metrics(tmp_path, range(0, 101), dt=0.5)
    snap = collect_snapshot(tmp_path, now=now)
    assert snap.verdict == "bare worker"
    assert snap.supervisor is None
    assert [r.rank for r in snap.ranks] == [0, 1] and all(r.pid_alive for r in snap.ranks)
    assert snap.ranks[1].age_s == pytest.approx(7.5)
    p = snap.progress
    assert (p.step, p.max_steps, p.loss, p.tokens_per_s) == (100, 300, 5.1234, 12345.0)
    assert p.fraction == pytest.approx(101 / 300)
    assert p.eta_s == pytest.approx((300 - 101) * 0.5)
    assert (p.quietest_rank, p.lagging_rank) == (1, 1)


def test_bare_worker_leftovers_without_live_pid(tmp_path: Path) -> None:
    pid, _ = dead_pid()
    heartbeat(tmp_path, 0, 50, pid=pid, status="running")
    assert collect_snapshot(tmp_path).verdict == "crashed"
    heartbeat(tmp_path, 0, 299, pid=pid, status="finished")
    assert collect_snapshot(tmp_path).verdict == "finished"
    heartbeat(tmp_path, 0, 120, pid=pid, status="stopped")
    assert collect_snapshot(tmp_path).verdict == "stopped"


def test_heartbeat_pid_started_after_the_heartbeat_is_not_its_writer(tmp_path: Path) -> None:
    # Our process is alive, but a heartbeat written before it started cannot be ours.
    started = psutil.Process().create_time()
    heartbeat(tmp_path, 0, 10, now=started, age=3600)
    snap = collect_snapshot(tmp_path)
    assert snap.ranks[0].pid_alive is False
    assert snap.verdict == "crashed"


def test_checkpoints_quarantine_and_recorded_validation(tmp_path: Path) -> None:
    checkpoint_files(tmp_path, {10: 1000, 20: 2000, 30: 3000})
    (tmp_path / "model_00040.pt.corrupt").write_bytes(b"x")
    (tmp_path / "model_00050.pt.tmp").write_bytes(b"x" * 99)
    os.symlink("model_00030.pt", tmp_path / "latest_checkpoint.pt")
    pid, created = dead_pid()
    supervisor_state(tmp_path, pid, created, newest_checkpoint=str(tmp_path / "model_00030.pt"),
                     newest_checkpoint_valid=False, newest_checkpoint_reason="truncated zip")
    ck = collect_snapshot(tmp_path).checkpoints
    assert (ck.count, ck.total_bytes) == (3, 6000)
    assert (ck.newest_name, ck.newest_step, ck.newest_bytes) == ("model_00030.pt", 30, 3000)
    assert ck.quarantined == 1
    assert ck.latest_link == "model_00030.pt"
    assert (ck.newest_valid, ck.newest_reason) == (False, "truncated zip")

    # A verdict about an older file is not repeated for the new newest one.
    checkpoint_files(tmp_path, {40: 4000})
    ck = collect_snapshot(tmp_path).checkpoints
    assert ck.newest_name == "model_00040.pt" and ck.newest_valid is None


def test_checkpoints_only_directory_is_a_stopped_run(tmp_path: Path) -> None:
    checkpoint_files(tmp_path, {10: 10})
    snap = collect_snapshot(tmp_path)
    assert (snap.has_run, snap.verdict) == (True, "stopped")


def test_disk_usage_is_that_of_the_run_directory(tmp_path: Path) -> None:
    disk = collect_snapshot(tmp_path).disk
    usage = os.statvfs(tmp_path)
    assert disk.total_bytes == usage.f_blocks * usage.f_frsize
    assert 0 <= disk.free_bytes <= disk.total_bytes


def test_metrics_tail_is_read_from_the_end(tmp_path: Path) -> None:
    # A 4 GiB sparse hole before the real lines: reading the file from the start would take
    # seconds and gigabytes; seeking from the end sees only the last lines.
    path = RunDir.at(tmp_path).metrics
    with open(path, "wb") as handle:
        handle.truncate(4 * 1024**3)
    metrics(tmp_path, range(1000, 1100), dt=0.25)
    with open(path, "a") as handle:
        handle.write('{"step": 1100, "loss": 3.0')  # a line being appended right now
    tail = read_jsonl_tail(path, 10)
    assert [r["step"] for r in tail] == list(range(1090, 1100))
    snap = collect_snapshot(tmp_path)
    assert snap.progress.step == 1099 and snap.progress.step_time_s == 0.25


def test_snapshot_survives_garbage_files(tmp_path: Path) -> None:
    run = RunDir.at(tmp_path)
    run.heartbeat_dir.mkdir()
    run.heartbeat(0).write_text("{not json")
    run.supervisor_state.write_text("[1, 2]")
    run.metrics.write_bytes(b"\xff\xfe garbage\n[]\n")
    snap = collect_snapshot(tmp_path)
    assert snap.has_run and snap.ranks == [] and snap.supervisor is None


# --- the command -----------------------------------------------------------------------------
def test_status_no_run_is_one_line_exit_1(tmp_path: Path) -> None:
    result = invoke("--log-dir", str(tmp_path))
    assert result.exit_code == 1
    assert result.output.strip() == f"no run in {tmp_path}/: no heartbeats, checkpoints or supervisor.json"
    result = invoke("--log-dir", str(tmp_path / "missing"))
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and "does not exist" in result.output


def test_status_plain_output_of_a_dead_supervisor(tmp_path: Path) -> None:
    pid, created = dead_pid()
    failure = FailureRecord(kind="hung", reason="rank 1 quiet for 120s in phase train", attempt=1, time=time.time())
    supervisor_state(tmp_path, pid, created, restarts_used=3, max_restarts=10, last_failure=failure)
    heartbeat(tmp_path, 0, 120, pid=pid)
    checkpoint_files(tmp_path, {100: 2048})
    result = invoke("--log-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    out = result.output
    assert out.splitlines()[0] == f"run {tmp_path}: dead"
    assert f"pid {pid} not running" in out
    assert "restarts 3/10" in out
    assert "last failure: hung: rank 1 quiet for 120s in phase train" in out
    assert "step 120/300" in out and "loss 5.1234" in out
    assert "model_00100.pt (step 100, 2.0 KiB)" in out
    assert "disk: " in out


def test_status_json_of_a_finished_run(tmp_path: Path) -> None:
    pid, created = dead_pid()
    supervisor_state(tmp_path, pid, created, state="finished", exit_code=0)
    heartbeat(tmp_path, 0, 299, pid=pid, status="finished")
    metrics(tmp_path, range(0, 300))
    result = invoke("--log-dir", str(tmp_path), "--json")
    assert result.exit_code == 0
    data = json.loads(result.output)
    assert data["verdict"] == "finished"
    assert data["progress"]["step"] == 299 and data["progress"]["fraction"] == 1.0
    assert data["supervisor"]["alive"] is False
    assert data["ranks"][0]["status"] == "finished"
    assert 0 <= data["disk"]["used_fraction"] <= 1


def test_status_watch_prints_timestamped_refreshes(tmp_path: Path) -> None:
    heartbeat(tmp_path, 0, 7)
    result = invoke("--log-dir", str(tmp_path), "--watch", "--interval", "0.1", "--max-updates", "2")
    assert result.exit_code == 0
    headers = [l for l in result.output.splitlines() if re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ run ", l)]
    assert len(headers) == 2 and headers[0].endswith("bare worker")


def test_status_watch_ends_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    heartbeat(tmp_path, 0, 7)
    proc = subprocess.Popen(
        [sys.executable, "-m", "supervisor.cli", "status", "--log-dir", str(tmp_path), "--watch", "--interval", "0.2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO, text=True,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        assert ready and "bare worker" in proc.stdout.readline()  # first refresh is out
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert "Traceback" not in err


def test_status_never_imports_torch(tmp_path: Path) -> None:
    check = subprocess.run(
        [sys.executable, "-c",
         "import supervisor.commands.status_cmd, sys; assert 'torch' not in sys.modules"],
        cwd=REPO, capture_output=True, text=True,
    )
    assert check.returncode == 0, check.stderr

    me = psutil.Process()
    supervisor_state(tmp_path, me.pid, me.create_time())
    heartbeat(tmp_path, 0, 5)
    checkpoint_files(tmp_path, {5: 10})
    for args in (["status"], ["status", "--json"], ["status", "--watch", "--max-updates", "1"]):
        run = subprocess.run(
            [sys.executable, "-c", NO_TORCH_MAIN, *args, "--log-dir", str(tmp_path)],
            cwd=REPO, capture_output=True, text=True, timeout=60,
        )
        assert run.returncode == 0, (args, run.stderr)
        assert "running" in run.stdout


def test_status_on_a_terminal_draws_the_panel(tmp_path: Path) -> None:
    heartbeat(tmp_path, 0, 120)
    checkpoint_files(tmp_path, {100: 10})
    primary, secondary = os.openpty()
    env = dict(os.environ, COLUMNS="120", LINES="40", TERM="xterm-256color")
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "supervisor.cli", "status", "--log-dir", str(tmp_path)],
        stdout=secondary, stderr=secondary, cwd=REPO, env=env,
    )
    os.close(secondary)
    chunks = []
    while True:
        try:
            data = os.read(primary, 65536)
        except OSError:
            break  # EIO: the child closed the terminal
        if not data:
            break
        chunks.append(data)
    os.close(primary)
    assert proc.wait(timeout=30) == 0
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode("utf-8", "replace"))
    assert "╭" in text and "╰" in text  # a panel, not plain lines
    assert "bare worker" in text and "120/300" in text and "model_00100.pt" in text
