"""``collect_snapshot`` and ``gpt2sup status`` on real run directories.

Each test writes the files a worker and a supervisor would (through the shared contract modules)
and checks what status concludes from them, including liveness judged from real pids.
"""
from __future__ import annotations

import errno
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

from shared.atomic_io import read_jsonl
from shared.events import append_event
from shared.heartbeat import Heartbeat
from shared.heartbeat import write_heartbeat as shared_write_heartbeat
from shared.run_dir import RunDir
from shared.supervisor_state import (
    FailureRecord,
    SupervisorState,
)
from supervisor.commands.status_cmd import status
from supervisor.views.snapshot import collect_snapshot
from tests.supervisor.helpers import NO_TORCH_MAIN, write_supervisor_state
from tests.supervisor.helpers import write_heartbeat_as_of_its_time as write_heartbeat

REPO = Path(__file__).resolve().parents[3]

# Runs the real console entry point with torch made unimportable: any import of torch on the
# status path raises, which gives a traceback and a non-zero exit.


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
        handle.writelines(json.dumps({"step": s, "loss": 6.0 - s / 1000, "lr": 6e-4, "norm": 1.0,
                                     "dt": dt, "tokens_per_s": 1000.0}) + "\n" for s in steps)


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
    metrics(tmp_path, range(101), dt=0.5)
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
    tail = read_jsonl(path, max_records=10)
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


def test_a_supervisor_json_that_exists_but_is_garbage_is_unreadable_not_absent(tmp_path: Path) -> None:
    """Issue 19 item 5: status said `supervisor: none (no supervisor.json)` over a damaged file."""
    from shared.supervisor_state import load_supervisor_state

    path = RunDir.at(tmp_path).supervisor_state
    assert load_supervisor_state(path).absent
    heartbeat(tmp_path, 0, 40, pid=dead_pid()[0], status="stopped")
    checkpoint_files(tmp_path, {40: 2048})
    path.write_bytes(b'{"state": "stopped", "pid": 12\x00\x00garbage')
    loaded = load_supervisor_state(path)
    assert (loaded.state, loaded.absent, loaded.unreadable) == (None, False, "not JSON")
    result = invoke("--log-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "supervisor: unreadable (supervisor.json: not JSON)" in result.output, result.output
    assert "no supervisor.json" not in result.output
    path.write_text('{"state": "stopped"}')  # JSON, but not a supervisor state
    as_json = json.loads(invoke("--log-dir", str(tmp_path), "--json").output)
    assert as_json["supervisor"] is None and as_json["supervisor_unreadable"].startswith("not a supervisor state")


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
    assert "step 121/300" in out and "loss 5.1234" in out  # 121 steps done: steps 0..120
    assert "model_00100.pt (step 100, 2.0 kB)" in out
    assert "disk: " in out


def test_status_json_of_a_finished_run(tmp_path: Path) -> None:
    pid, created = dead_pid()
    supervisor_state(tmp_path, pid, created, state="finished", exit_code=0)
    heartbeat(tmp_path, 0, 299, pid=pid, status="finished")
    metrics(tmp_path, range(300))
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
        _out, err = proc.communicate(timeout=20)
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
        cwd=REPO, capture_output=True, text=True, check=False,
    )
    assert check.returncode == 0, check.stderr

    me = psutil.Process()
    supervisor_state(tmp_path, me.pid, me.create_time())
    heartbeat(tmp_path, 0, 5)
    checkpoint_files(tmp_path, {5: 10})
    for args in (["status"], ["status", "--json"], ["status", "--watch", "--max-updates", "1"]):
        run = subprocess.run(
            [sys.executable, "-c", NO_TORCH_MAIN, *args, "--log-dir", str(tmp_path)],
            cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
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
    assert "bare worker" in text and "121/300" in text and "model_00100.pt" in text


# --- what users noticed (issue 8, part 6) -----------------------------------------------------------
def status_text(run_dir: Path) -> str:
    result = invoke("--log-dir", str(run_dir))
    assert result.exit_code == 0, result.output
    return result.output


def raw_supervisor_json(run_dir: Path, **fields) -> None:
    """Add fields the typed state may not know yet (newer writers), as a newer supervisor would."""
    path = RunDir.at(run_dir).supervisor_state
    data = json.loads(path.read_text())
    data.update(fields)
    path.write_text(json.dumps(data))


def test_before_the_first_step_a_run_reads_starting(tmp_path: Path) -> None:
    me = psutil.Process()
    supervisor_state(tmp_path, me.pid, me.create_time(), attempt=1)
    write_heartbeat(
        RunDir.at(tmp_path).heartbeat(0),
        Heartbeat(pid=me.pid, rank=0, world_size=1, step=-1, phase="startup", time=time.time() + 5,
                  status="running", max_steps=10),
    )
    snap = collect_snapshot(tmp_path, now=time.time() + 6)
    assert snap.progress.completed_steps is None and snap.progress.fraction == 0.0
    out = status_text(tmp_path)
    assert "step starting" in out and "step -1" not in out and "steps -1" not in out
    assert "steps starting" in out  # the rank line agrees


def test_a_finished_run_reads_all_steps_done(tmp_path: Path) -> None:
    pid, created = dead_pid()
    supervisor_state(tmp_path, pid, created, state="finished", exit_code=0)
    heartbeat(tmp_path, 0, 59, pid=pid, status="finished", max_steps=60)
    out = status_text(tmp_path)
    assert "step 60/60 (100.0%)" in out and "59/60" not in out
    assert out.splitlines()[0] == f"run {tmp_path}: finished (exit 0)"
    data = json.loads(invoke("--log-dir", str(tmp_path), "--json").output)
    assert data["progress"]["step"] == 59 and data["progress"]["completed_steps"] == 60


def test_disk_use_percent_is_what_df_says(tmp_path: Path) -> None:
    """df's Use% is used / (used + available), rounded up; blocks reserved for root count in neither."""
    heartbeat(tmp_path, 0, 5)

    def df_percent() -> str:
        df = subprocess.run(["df", "--output=pcent", str(tmp_path)], capture_output=True, text=True, check=True)
        return df.stdout.splitlines()[-1].strip()

    # Other tests (and other programs) write to this disk while we read it: compare only readings
    # the disk held still for (the same figure before and after ours), a few tries at most.
    for _ in range(20):
        before = df_percent()
        disk_line = next(line for line in status_text(tmp_path).splitlines() if line.startswith("disk: "))
        if df_percent() == before:
            break
    assert f"({before})" in disk_line, (disk_line, before)
    for _ in range(20):
        usage = os.statvfs(tmp_path)
        disk = collect_snapshot(tmp_path).disk
        if os.statvfs(tmp_path).f_bavail == usage.f_bavail:
            break
    assert disk.free_bytes == usage.f_bavail * usage.f_frsize


def test_a_full_tmpfs_reads_100_percent(tmp_path: Path) -> None:
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=False).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        (mount / "model_00001.pt").write_bytes(b"\0" * 200_000)
        fd = os.open(mount / "filler", os.O_WRONLY | os.O_CREAT)
        try:  # fill it to the last block
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        finally:
            os.close(fd)
        out = status_text(mount)
        assert "(100%), 0 B free" in out
        assert "model_00001.pt (step 1, 200.0 kB)" in out  # decimal units, as gpt2sup verify prints
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_sizes_are_decimal_like_verify_prints_them(tmp_path: Path) -> None:
    checkpoint_files(tmp_path, {10: 1_500_000, 20: 2_500_000})
    out = status_text(tmp_path)
    assert "checkpoints: 2 (4.0 MB), newest model_00020.pt (step 20, 2.5 MB)" in out
    assert "MiB" not in out and "GiB" not in out


def metrics_timed(run_dir: Path, rows: list[tuple[int, float]], dt: float = 0.9) -> None:
    with open(RunDir.at(run_dir).metrics, "w") as handle:
        handle.writelines(json.dumps({"step": step, "time": t, "loss": 5.0, "dt": dt, "tokens_per_s": 1000.0}) + "\n" for step, t in rows)


def test_eta_follows_a_smoothed_rate_not_the_last_step(tmp_path: Path) -> None:
    now = time.time() + 10
    heartbeat(tmp_path, 0, 99, now=now, max_steps=300)
    # 99 steps of 1 s each, then one that took 40 s (an eval on a busy machine).
    rows = [(s, now - 200 + s) for s in range(99)] + [(99, now - 200 + 98 + 40)]
    metrics_timed(tmp_path, rows)
    p = collect_snapshot(tmp_path, now=now).progress
    # The window's mean wall time per step, evals included: (137 - 0) / 99 steps.
    assert p.seconds_per_step == pytest.approx(138 / 99)
    assert p.eta_s == pytest.approx(200 * 138 / 99)
    # One more ordinary step barely moves it: no swing by minutes between refreshes.
    rows.append((100, rows[-1][1] + 1.0))
    metrics_timed(tmp_path, rows)
    heartbeat(tmp_path, 0, 100, now=now, max_steps=300)
    p2 = collect_snapshot(tmp_path, now=now).progress
    assert abs(p2.eta_s - p.eta_s) < 0.02 * p.eta_s


def test_eta_rate_starts_after_a_restart(tmp_path: Path) -> None:
    now = time.time() + 10
    heartbeat(tmp_path, 0, 79, now=now, max_steps=300)
    # Steps 0..59 at 3 s, a crash, a resume from step 49 after a 600 s pause, then 2 s steps.
    before = [(s, now - 1000 + 3 * s) for s in range(50)]
    after = [(s, now - 1000 + 3 * 49 + 600 + 2 * (s - 49)) for s in range(50, 80)]
    metrics_timed(tmp_path, before + after, dt=1.9)
    p = collect_snapshot(tmp_path, now=now).progress
    assert p.seconds_per_step == pytest.approx(2.0)
    assert p.eta_s == pytest.approx((300 - 80) * 2.0)


def test_status_shows_the_newest_val_loss_from_log_txt(tmp_path: Path) -> None:
    heartbeat(tmp_path, 0, 120)
    RunDir.at(tmp_path).log_txt.write_text(
        "0 train 10.9\n0 val 10.8123\n99 train 6.1\n100 val 6.2345\n119 train 5.9\n120 train 5.8\n"
    )
    snap = collect_snapshot(tmp_path)
    assert (snap.progress.val_step, snap.progress.val_loss) == (100, 6.2345)
    assert "val 6.2345 (step 100)" in status_text(tmp_path)
    data = json.loads(invoke("--log-dir", str(tmp_path), "--json").output)
    assert data["progress"]["val_loss"] == 6.2345


def test_status_and_the_progress_line_show_the_newest_hellaswag_accuracy(tmp_path: Path) -> None:
    heartbeat(tmp_path, 0, 120)
    RunDir.at(tmp_path).log_txt.write_text(
        "0 train 10.9\n0 val 10.8\n0 hella 0.2500\n100 val 6.2345\n100 hella 0.2871\n120 train 5.8\n"
    )
    progress = collect_snapshot(tmp_path).progress
    assert (progress.hellaswag_step, progress.hellaswag) == (100, 0.2871)
    assert "val 6.2345 (step 100) hella 0.2871 (step 100)" in status_text(tmp_path)
    data = json.loads(invoke("--log-dir", str(tmp_path), "--json").output)
    assert data["progress"]["hellaswag"] == 0.2871


def test_a_failure_the_run_got_past_is_shown_as_recovered(tmp_path: Path) -> None:
    me = psutil.Process()
    failed_at = time.time() + 5
    failure = FailureRecord(kind="crashed", reason="rank 0 exited with code 1", attempt=1, time=failed_at, step=40)
    supervisor_state(tmp_path, me.pid, me.create_time(), attempt=2, restarts_used=1, last_failure=failure)
    # Attempt 2 has launched but not trained yet: not recovered.
    heartbeat(tmp_path, 0, 40, now=failed_at + 3, age=0)
    snap = collect_snapshot(tmp_path, now=failed_at + 4)
    assert snap.supervisor.last_failure_recovered is False
    # It trained past the failed step after the failure: recovered.
    heartbeat(tmp_path, 0, 45, now=failed_at + 20, age=0)
    snap = collect_snapshot(tmp_path, now=failed_at + 21)
    assert snap.supervisor.last_failure_recovered is True
    assert "last failure: crashed (recovered): rank 0 exited with code 1" in status_text(tmp_path)


def test_a_failure_the_run_gave_up_on_is_not_recovered(tmp_path: Path) -> None:
    pid, created = dead_pid()
    failure = FailureRecord(kind="crashed", reason="no progress", attempt=3, time=time.time() - 50)
    supervisor_state(tmp_path, pid, created, state="gave_up", attempt=4, last_failure=failure, exit_code=3)
    heartbeat(tmp_path, 0, 45, pid=pid, status="failed")
    out = status_text(tmp_path)
    assert "last failure: crashed: no progress" in out and "recovered" not in out
    assert out.splitlines()[0] == f"run {tmp_path}: gave up (exit 3)"


def replay_event(run_dir: Path, **details) -> None:
    append_event(RunDir.at(run_dir).events, "replay_check", source="worker", **details)


def test_status_shows_the_newest_replay_check_and_warns_on_a_mismatch(tmp_path: Path) -> None:
    heartbeat(tmp_path, 0, 60)
    events = RunDir.at(tmp_path).events
    replay_event(tmp_path, resumed_step=20, steps_compared=5, equal=True, first_mismatch=None,
                 message="5 re-done steps match")
    out = status_text(tmp_path)
    assert "replay check: 5 re-done step(s) after the resume at step 20 matched" in out
    assert "WARNING" not in out
    replay_event(tmp_path, resumed_step=40, steps_compared=7, equal=False,
                 first_mismatch={"step": 43, "before": 5.123456, "after": 5.123999}, message="mismatch at 43")
    for _ in range(12):  # later, unrelated events must not hide it
        append_event(events, "launched", attempt=3)
    snap = collect_snapshot(tmp_path)
    assert snap.replay_check.equal is False and snap.replay_check.resumed_step == 40
    line = next(line for line in status_text(tmp_path).splitlines() if "replay check" in line)
    assert line.startswith("WARNING: replay check: MISMATCH after the resume at step 40")
    assert "step 43: loss 5.123456 before, 5.123999 after" in line


def test_status_shows_the_timeout_in_force_for_each_ranks_phase(tmp_path: Path) -> None:
    me = psutil.Process()
    supervisor_state(tmp_path, me.pid, me.create_time())
    raw_supervisor_json(tmp_path, phase_timeouts={"startup": 1800, "train": 120.0, "eval": 1200, "checkpoint": 600})
    now = time.time() + 10
    heartbeat(tmp_path, 0, 30, now=now, world_size=2)
    write_heartbeat(RunDir.at(tmp_path).heartbeat(1),
                    Heartbeat(pid=me.pid, rank=1, world_size=2, step=30, phase="eval", time=now - 2,
                              status="running", max_steps=300))
    snap = collect_snapshot(tmp_path, now=now)
    assert snap.supervisor.phase_timeouts["train"] == 120.0
    assert [r.phase_timeout_s for r in snap.ranks] == [120.0, 1200.0]
    out = status_text(tmp_path)
    assert "rank 0 " in out and "(timeout 120s)" in out
    assert "phase eval" in out and "(timeout 1200s)" in out


@pytest.mark.parametrize(
    ("state", "exit_code", "verdict"),
    [("finished_without_checkpoint", 5, "finished without checkpoint"), ("refused", 2, "refused"),
     ("stopped", 4, "stopped")],
)
def test_terminal_states_show_their_exit_codes(tmp_path: Path, state: str, exit_code: int, verdict: str) -> None:
    pid, created = dead_pid()
    supervisor_state(tmp_path, pid, created, state=state, exit_code=exit_code)
    snap = collect_snapshot(tmp_path)
    assert snap.verdict == verdict
    assert status_text(tmp_path).splitlines()[0] == f"run {tmp_path}: {verdict} (exit {exit_code})"


def test_a_bare_worker_that_could_not_save_its_last_step_says_so(tmp_path: Path) -> None:
    pid, _ = dead_pid()
    heartbeat(tmp_path, 0, 59, pid=pid, status="finished_without_checkpoint", max_steps=60)
    assert collect_snapshot(tmp_path).verdict == "finished without checkpoint"


def test_a_finished_run_does_not_promise_a_validation_that_will_not_come(tmp_path: Path) -> None:
    pid, created = dead_pid()
    supervisor_state(tmp_path, pid, created, state="finished", exit_code=0)
    checkpoint_files(tmp_path, {60: 1000})
    out = status_text(tmp_path)
    assert "not validated yet" not in out
    assert "not validated by the supervisor (`gpt2sup verify` checks it)" in out


def test_a_beat_from_a_rank_whose_clock_is_off_is_aged_by_the_files_write_not_its_own_time(tmp_path: Path) -> None:
    """A rank an hour ahead that stopped 30 s ago must not read 'heartbeat 0.0s ago' (nor one an
    hour behind 'an hour ago', or dead): the age is the reader's own clock against the file's mtime."""
    me = psutil.Process()
    supervisor_state(tmp_path, me.pid, me.create_time())
    run = RunDir.at(tmp_path)
    written = time.time()
    for rank, skew in ((0, 3600.0), (1, -3600.0)):
        shared_write_heartbeat(run.heartbeat(rank), Heartbeat(pid=me.pid, rank=rank, world_size=2, step=7,
                                                              phase="train", time=written + skew, max_steps=300))
    snap = collect_snapshot(tmp_path, now=written + 30)
    assert [round(r.age_s) for r in snap.ranks] == [30, 30]
    assert all(r.pid_alive for r in snap.ranks)  # our own pid, started before the write
