"""``gpt2sup run`` survives its own faults and touches only its own run (issue 7.1-7.3), end to end.

Real torchrun, the real worker, real pipes, real signals. Each test reproduces one scenario of
the issue exactly.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from bench.disk_fill import fill_disk, mounted_tmpfs
from shared.exit_codes import SupervisorExit
from tests.supervisor.helpers import (
    FAST_SUPERVISOR_ARGS,
    NPROC,
    ONE_PROCESS,
    REPO_ROOT,
    WORKER_ARGS,
    assert_same_weights,
    child_env,
    console_text,
    events_named,
    gpt2sup_argv,
    heartbeat,
    kill_process_tree,
    one_process_worker_args,
    read_events,
    start_supervisor,
    supervisor_json,
    wait_exit,
    wait_for,
    wait_for_step,
)

# Real training processes or probe children: the end-to-end layer, run by CI, not the inner loop.
pytestmark = pytest.mark.slow

def _alive(pid: int, create_time: float) -> bool:
    from shared.process_identity import same_process_alive

    return same_process_alive(pid, create_time) is not None


def _recorded(log_dir: Path) -> list[tuple[int, float]]:
    return [(p["pid"], p["create_time"]) for p in supervisor_json(log_dir)["processes"]]


def _run_argv(log_dir: Path, *extra: str) -> list[str]:
    return gpt2sup_argv("run", "--log-dir", str(log_dir), "--nproc-per-node", str(NPROC),
                        *FAST_SUPERVISOR_ARGS, *extra, "--", *WORKER_ARGS)


def test_run_piped_into_a_reader_that_dies_then_ctrl_c_exits_4_not_an_internal_error(tmp_path):
    """`gpt2sup run | tee log`, Ctrl-C: tee dies first, the supervisor's last lines hit a dead pipe."""
    log_dir = tmp_path / "run"
    read_end, write_end = os.pipe()
    reader = subprocess.Popen(["cat"], stdin=read_end, stdout=subprocess.DEVNULL)
    stderr_path = tmp_path / "stderr.txt"
    with open(stderr_path, "wb") as stderr:
        supervisor = subprocess.Popen(_run_argv(log_dir), cwd=REPO_ROOT, env=child_env(), stdout=write_end,
                                      stderr=stderr, stdin=subprocess.DEVNULL)
    os.close(read_end)
    os.close(write_end)
    try:
        wait_for_step(log_dir, 2, rank=0)
        reader.kill()  # Ctrl-C reaches tee too; it dies at once
        reader.wait()
        supervisor.send_signal(signal.SIGINT)
        code = supervisor.wait(180)
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait()
    errors = stderr_path.read_text(errors="replace")
    assert code == SupervisorExit.STOPPED, errors
    assert "internal error" not in errors and "Traceback" not in errors and "BrokenPipe" not in errors
    assert supervisor_json(log_dir)["state"] == "stopped"
    assert {heartbeat(log_dir, r)["status"] for r in range(NPROC)} == {"stopped"}


def test_sighup_saves_stops_exits_4_and_leaves_an_event(tmp_path):
    """Terminal closed / ssh dropped: the supervisor must not die silently over orphaned workers."""
    log_dir = tmp_path / "run"
    proc = start_supervisor(log_dir, **ONE_PROCESS)
    wait_for_step(log_dir, 2, rank=0)
    launched = _recorded(log_dir)
    worker_pid = heartbeat(log_dir, 0)["pid"]
    environ = Path(f"/proc/{worker_pid}/environ").read_bytes().split(b"\0")
    token = f"GPT2SUP_SUPERVISOR={proc.pid}:".encode()
    assert any(item.startswith(token) for item in environ), "workers are not told who supervises them"
    proc.send_signal(signal.SIGHUP)
    assert wait_exit(proc, log_dir, timeout=180) == SupervisorExit.STOPPED, console_text(log_dir)[-3000:]
    requests = events_named(log_dir, "stop_requested")
    assert requests and requests[0]["signal"] == "SIGHUP"
    assert supervisor_json(log_dir)["state"] == "stopped"
    stop_step = heartbeat(log_dir, 0)["step"]
    assert (log_dir / f"model_{stop_step:05d}.pt").exists()
    assert not any(_alive(pid, ct) for pid, ct in launched)


def test_workers_outlive_supervisor_flag_leaves_the_supervisor_unnamed(tmp_path):
    log_dir = tmp_path / "run"
    proc = start_supervisor(log_dir, "--workers-outlive-supervisor", **ONE_PROCESS)
    try:
        wait_for_step(log_dir, 1, rank=0)
        environ = Path(f"/proc/{heartbeat(log_dir, 0)['pid']}/environ").read_bytes()
        assert b"GPT2SUP_SUPERVISOR=" not in environ
    finally:
        proc.send_signal(signal.SIGTERM)
        wait_exit(proc, log_dir, timeout=180)


def test_kill_9_with_a_stopped_rank_then_run_again_kills_the_orphans_within_the_kill_grace(tmp_path, reference_checkpoint):
    """The new supervisor used to wait the full checkpoint timeout on a SIGSTOPped orphan."""
    log_dir = tmp_path / "run"
    first = start_supervisor(log_dir)
    hb = wait_for_step(log_dir, 5, rank=1)
    orphans = _recorded(log_dir)
    os.kill(hb["pid"], signal.SIGSTOP)
    first.kill()
    first.wait()
    started = time.time()
    second = start_supervisor(log_dir, "--checkpoint-timeout", "600")
    cleaned = wait_for(lambda: events_named(log_dir, "orphans_killed"), 120, "orphan clean-up")[0]
    assert cleaned["forced"] and cleaned["time"] - started < 3 + 30, cleaned  # kill grace 3 s + start-up
    assert not any(_alive(pid, ct) for pid, ct in orphans)
    code = wait_exit(second, log_dir)
    assert code == SupervisorExit.FINISHED, console_text(log_dir)[-3000:]
    assert_same_weights(log_dir / "model_00011.pt", reference_checkpoint)


def test_ctrl_c_during_the_orphan_clean_up_is_honoured(tmp_path):
    """Two Ctrl-Cs while the clean-up waits on orphans that ignore the stop request: exit 4 now."""
    log_dir = tmp_path / "run"
    stubborn = ["--worker", "tests.supervisor.stubborn_worker", "--kill-grace", "60"]
    args = one_process_worker_args()
    first = start_supervisor(log_dir, *stubborn, nproc=1, worker_args=args)
    recorded = wait_for(lambda: len(_recorded_or_empty(log_dir)) >= 2 and _recorded_or_empty(log_dir), 60,
                        "torchrun and its worker")
    wait_for(lambda: (log_dir / "stubborn.ready").exists(), 60, "the worker to ignore SIGTERM")
    first.kill()
    first.wait()
    second = start_supervisor(log_dir, *stubborn, nproc=1, worker_args=args)
    wait_for(lambda: events_named(log_dir, "supervisor_started")[1:], 60, "the second supervisor")
    time.sleep(1.0)
    second.send_signal(signal.SIGINT)
    time.sleep(0.5)
    second.send_signal(signal.SIGINT)
    assert wait_exit(second, log_dir, timeout=20) == SupervisorExit.STOPPED, console_text(log_dir)[-3000:]
    assert events_named(log_dir, "orphans_killed")[0]["forced"] == "a forced stop request"
    assert not any(_alive(pid, ct) for pid, ct in recorded)


def _recorded_or_empty(log_dir: Path) -> list[tuple[int, float]]:
    try:
        return _recorded(log_dir)
    except (OSError, ValueError, KeyError):
        return []


def _copy_unless_vanished(src: str, dst: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        shutil.copy2(src, dst)


def test_a_copy_of_a_live_run_directory_is_trained_without_touching_the_original(
        tmp_path, reference_checkpoint_one_process):
    """`cp -a runA runB` while A trains, then `gpt2sup run --log-dir runB`: A loses nothing."""
    run_a, run_b = tmp_path / "runA", tmp_path / "runB"
    first = start_supervisor(run_a, **ONE_PROCESS)
    wait_for_step(run_a, 3, rank=0)
    a_processes = _recorded(run_a)
    # events.jsonl comes along: look only at B's own. Like `cp -a`, a file that vanishes while it is
    # copied (a heartbeat's temporary file, renamed over the heartbeat) is left out, not an error.
    shutil.copytree(run_a, run_b, symlinks=True, copy_function=_copy_unless_vanished)
    copied = len(read_events(run_b))
    second = start_supervisor(run_b, **ONE_PROCESS)
    wait_for(lambda: [e for e in read_events(run_b)[copied:] if e["event"] == "launched"], 120, "B's own launch")
    assert not events_named(run_b, "orphans_killed")
    left_alone = [e for e in read_events(run_b)[copied:] if e["event"] == "warning" and "not touching" in e["message"]]
    assert left_alone and set(left_alone[0]["pids"]) <= {pid for pid, _ in a_processes}
    assert all(_alive(pid, ct) for pid, ct in a_processes)
    second.send_signal(signal.SIGTERM)
    wait_exit(second, run_b, timeout=180)
    code = wait_exit(first, run_a)
    assert code == SupervisorExit.FINISHED, console_text(run_a)[-3000:]
    assert len(events_named(run_a, "launched")) == 1 and not events_named(run_a, "crashed")
    assert_same_weights(run_a / "model_00011.pt", reference_checkpoint_one_process)


def test_a_bare_torchrun_on_the_directory_makes_run_refuse_naming_its_pids(tmp_path):
    log_dir = tmp_path / "run"
    bare = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
         "-m", "worker.train_gpt2", "--log_dir", str(log_dir), *one_process_worker_args(),
         "--max_steps", "100000"],  # still training when `gpt2sup run` looks, however slow the machine
        cwd=REPO_ROOT, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for_step(log_dir, 1, rank=0)
        ranks = {heartbeat(log_dir, 0)["pid"]}
        refused = subprocess.run(_run_argv(log_dir), check=False, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                                 env=child_env())
        assert refused.returncode == SupervisorExit.REFUSED, refused.stdout + refused.stderr
        said = refused.stdout + refused.stderr
        assert all(str(pid) in said for pid in ranks | {bare.pid}), said
        assert not events_named(log_dir, "launched")
        assert bare.poll() is None and all(psutil.pid_exists(pid) for pid in ranks)  # untouched
        assert supervisor_json(log_dir)["state"] == "refused"
    finally:
        kill_process_tree(bare.pid)  # the ranks too: they train on for 100000 steps otherwise
        bare.wait()
    assert not [p for p in psutil.process_iter(["cmdline"]) if str(log_dir) in " ".join(p.info["cmdline"] or [])]


def test_a_full_disk_mid_run_does_not_kill_the_supervisor_and_its_journal_catches_up(
        tmp_path, reference_checkpoint_one_process):
    """The run directory's disk at 100% for a while: no `internal error: OSError: [Errno 28]`."""
    with mounted_tmpfs(tmp_path / "disk", "200m") as disk:
        log_dir = disk / "run"
        proc = start_supervisor(log_dir, **ONE_PROCESS)
        victim = wait_for_step(log_dir, 5, rank=0)["pid"]
        filled_at = time.time()
        filler = fill_disk(disk)
        # A crash while the disk is full: the supervisor must record it (supervisor.json cannot be
        # rewritten: a new file needs a page) and go on.
        os.kill(victim, signal.SIGKILL)
        time.sleep(12)  # more than two disk checks
        assert proc.poll() is None, console_text(log_dir)[-3000:]
        filler.unlink()
        code = wait_exit(proc, log_dir)
        assert code == SupervisorExit.FINISHED, console_text(log_dir)[-3000:]
        assert_same_weights(log_dir / "model_00011.pt", reference_checkpoint_one_process)
        # supervisor.json is rewritten in its own block; an event may still find room in the last
        # page of events.jsonl. Whatever did not fit waited in memory and was written late, in order.
        crash = [e for e in events_named(log_dir, "crashed") if e["time"] >= filled_at]
        assert crash, read_events(log_dir)
        caught_up = events_named(log_dir, "journal_error")
        if caught_up:
            assert caught_up[0]["delayed"] >= 1 and crash[0]["time"] < caught_up[0]["time"]
        assert "internal error" not in console_text(log_dir)


def test_a_disk_full_through_the_final_save_is_neither_a_hang_nor_a_stop_but_exit_5(tmp_path):
    """The CI soak's failure: the disk at 100% from mid-run through the last step.

    Heartbeats are files on that disk, and so is torchrun's report of the workers' exit codes. The
    workers train on (a full disk is a warning), so silence must not be judged a hang, and the
    failed final save must end ``finished_without_checkpoint`` (exit 5), not "stopped" (exit 4),
    which nobody asked for.
    """
    steps = 60
    # The run directory is the mount point: its console (<log_dir>.console) stays off the full disk.
    with mounted_tmpfs(tmp_path / "run", "200m") as disk:
        log_dir = disk
        worker_args = [*one_process_worker_args(), "--max_steps", str(steps), "--final_save_retry_s", "1"]
        proc = start_supervisor(log_dir, "--hang-timeout", "3", nproc=1, worker_args=worker_args)
        beat = wait_for_step(log_dir, 9)
        filler = fill_disk(disk)
        try:
            code = wait_exit(proc, log_dir)
            console = console_text(log_dir)
            last = heartbeat(log_dir, 0)
        finally:
            filler.unlink()
        assert code == SupervisorExit.FINISHED_WITHOUT_CHECKPOINT, console[-3000:]
        assert "silent for" not in console and "stopped" not in console, console[-3000:]
        assert "NOT on disk" in console and "final checkpoint (step 59) could not be written" in console, console[-3000:]
        # The heartbeat went on through the full disk: it names the last step and the ending.
        assert last["step"] == steps - 1 > beat["step"] and last["status"] == "finished_without_checkpoint", last
