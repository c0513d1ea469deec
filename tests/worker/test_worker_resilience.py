"""The worker survives what it is meant to survive and stops when it must.

* A full disk mid-run (heartbeat, log.txt, metrics.jsonl writes fail with ENOSPC) is a warning:
  training goes on, the writes are retried each step, nothing logged is lost once space is back.
* The supervisor that launched the workers dies (kill -9): the ranks agree, save at the step
  boundary and exit 0 as ``stopped``, instead of training on as orphans.
* Two trainers never write one run directory: the second exits 8 naming the first's pid and
  touches none of its files.
Real processes, a real tmpfs, real signals.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

import psutil
import pytest

from shared.exit_codes import WorkerExit
from shared.run_dir import RunDir
from tests.worker.helpers import (
    FAST_ARGS,
    checkpoint_steps,
    fill_leaving_free,
    load_checkpoint,
    read_heartbeat,
    read_metrics,
    wait_for,
)
from worker.runtime.telemetry import RunLogger

# Real training processes or probe children: the end-to-end layer, run by CI, not the inner loop.
pytestmark = pytest.mark.slow

def wait_for_step(launch, step: int, rank: int = 0, timeout: float = 240.0) -> dict:
    def reached():
        assert launch.alive(), f"worker exited early ({launch.proc.returncode}):\n{launch.output_tail()}"
        beat = read_heartbeat(launch.log_dir, rank)
        return beat if beat and beat["step"] >= step else None

    return wait_for(reached, timeout, f"rank {rank} at step {step}")


def test_a_disk_filled_to_100_percent_mid_run_is_a_warning_and_training_finishes(launcher, mount_tmpfs, tmp_path):
    mnt = mount_tmpfs(160)
    run = mnt / "run"
    steps = 40
    # keep_last 2: two 40 MB checkpoints plus the one being written fit the 160 MB disk once it is freed
    launch = launcher.start(run, [*FAST_ARGS, "--max_steps", str(steps), "--final_save_retry_s", "300",
                                  "--keep_last_n_checkpoints", "2"],
                            output_dir=tmp_path)  # keep the test's view of stdout/stderr off the full disk
    wait_for(lambda: (run / "latest_checkpoint.pt").exists() or not launch.alive(), 240, "the first checkpoint")
    os.kill(launch.pid, signal.SIGSTOP)
    try:
        ballast = fill_leaving_free(mnt, 0)
    finally:
        os.kill(launch.pid, signal.SIGCONT)
    full_since = time.time()
    time.sleep(4)
    assert launch.alive(), f"the worker died of a full disk:\n{launch.output_tail()}"
    # The heartbeat goes on in its own block: silence would be judged a hang by the supervisor.
    beat_while_full = read_heartbeat(run)
    full_until = time.time()
    ballast.unlink()
    assert launch.wait() == 0, launch.output_tail()

    metrics = read_metrics(run)
    assert [m["step"] for m in metrics] == list(range(steps)), "a step's metrics were lost or doubled"
    trained_while_full = [m["step"] for m in metrics if full_since < m["time"] < full_until]
    assert trained_while_full, "no step was trained while the disk was full"
    log_steps = [int(line.split()[0]) for line in (run / "log.txt").read_text().splitlines() if " train " in line]
    assert log_steps == list(range(steps))
    beat = read_heartbeat(run)
    assert beat["status"] == "finished" and beat["step"] == steps - 1
    assert RunDir.at(run).resolve_latest_link().name == f"model_{steps - 1:05d}.pt"
    assert load_checkpoint(run / f"model_{steps - 1:05d}.pt")["step"] == steps - 1
    assert full_since + 1 < beat_while_full["time"] < full_until, (full_since, beat_while_full, full_until)
    # A step's heartbeat is written before its metrics row (whose time is taken after the step's
    # evaluations), so the step the beat names may have its row just after full_until (CI saw it):
    # it must be a step trained after the disk filled.
    assert beat_while_full["step"] in [m["step"] for m in metrics if m["time"] > full_since], beat_while_full
    stderr = launch.stderr()
    assert "cannot write its heartbeat" not in stderr, stderr[-3000:]
    # At most one warning per file for the whole episode, then one note of recovery. (An append to
    # log.txt or metrics.jsonl may still fit in its file's last page, so those warn only if they
    # failed; test_run_logger_keeps_lines_a_full_disk_refused_and_writes_them_once_space_is_back pins them.)
    for kind in ("metrics.jsonl", "log.txt"):
        assert stderr.count(f"cannot write its {kind} ") == stderr.count(f"writing its {kind} works again") <= 1
    assert "Traceback" not in stderr


def test_a_relaunch_onto_a_disk_with_not_a_byte_free_resumes_and_trains(launcher, mount_tmpfs, tmp_path):
    """A supervisor relaunching after a crash on a full disk: the resume must not die before its
    first step (trimming log.txt/metrics.jsonl to the resumed step needs no free space)."""
    mnt = mount_tmpfs(160)
    run = mnt / "run"
    args = [*FAST_ARGS, "--max_steps", "16", "--final_save_retry_s", "0"]
    crashed = launcher.start(run, args, env={"GPT2SUP_INJECT_CRASH_AT_STEP": "10"}, output_dir=tmp_path)
    assert crashed.wait() == WorkerExit.CRASHED, crashed.output_tail()
    assert checkpoint_steps(run) == [8]
    ballast = fill_leaving_free(mnt, 0)
    try:
        resumed = launcher.start(run, [*args, "--auto_resume"], output_dir=tmp_path)
        code = resumed.wait()
    finally:
        ballast.unlink()
    # It trained steps 9-15 on the full disk; only the final save could not be written.
    assert code == WorkerExit.FINAL_SAVE_FAILED, resumed.output_tail()
    assert [m["step"] for m in read_metrics(run)] == list(range(16)), "the resume lost or doubled metrics lines"
    assert read_heartbeat(run)["status"] == "finished_without_checkpoint"
    assert "Traceback" not in resumed.stderr()


def test_run_logger_keeps_lines_a_full_disk_refused_and_writes_them_once_space_is_back(mount_tmpfs, capsys):
    mnt = mount_tmpfs(1)
    run = RunDir.at(mnt)
    logger = RunLogger(run, enabled=True)
    logger.open(resumed_step=None)
    logger.log_line("0 train 10.000000")
    ballast = fill_leaving_free(mnt, 0)
    lines = [f"{step} train {10 - step / 1000:.6f}" + " " * 200 for step in range(1, 60)]  # > one page
    for line in lines:
        logger.log_line(line)
    assert capsys.readouterr().err.count("cannot write its log.txt (No space left on device)") == 1
    assert len(run.log_txt.read_text().splitlines()) < 60, "the disk was not full after all"
    ballast.unlink()
    logger.log_line("60 train 9.940000")
    logger.close()
    assert run.log_txt.read_text().splitlines() == ["0 train 10.000000", *lines, "60 train 9.940000"]
    assert "writing its log.txt works again" in capsys.readouterr().err


def test_workers_stop_and_save_when_their_supervisor_is_killed(launcher, tmp_path):
    run = tmp_path / "run"
    supervisor = subprocess.Popen(["sleep", "1000"])  # stands in for `gpt2sup run`
    try:
        created = psutil.Process(supervisor.pid).create_time()
        launch = launcher.start(run, [*FAST_ARGS, "--max_steps", "1000"], nproc=2,
                                env={"GPT2SUP_SUPERVISOR": f"{supervisor.pid}:{created!r}"})
        wait_for_step(launch, 3, rank=0)
        wait_for_step(launch, 3, rank=1)
        time.sleep(1.5)  # the workers have looked at the supervisor more than once: alive, so they trained on
        assert launch.alive()
        supervisor.kill()
        supervisor.wait(10)
        killed_at = read_heartbeat(run)["step"]
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait(10)
    assert launch.wait(180) == 0, launch.output_tail()

    beats = [read_heartbeat(run, rank) for rank in (0, 1)]
    stopped_at = beats[0]["step"]
    assert killed_at <= stopped_at < 999
    for beat in beats:
        assert beat["status"] == "stopped" and beat["step"] == stopped_at, beat
        assert beat["message"] == f"supervisor {supervisor.pid} on {socket.gethostname()} is gone"
    assert checkpoint_steps(run)[-1] == stopped_at
    assert RunDir.at(run).resolve_latest_link().name == f"model_{stopped_at:05d}.pt"
    assert [m["step"] for m in read_metrics(run)] == list(range(stopped_at + 1))
    assert f"supervisor {supervisor.pid} on {socket.gethostname()} is gone: saved at step {stopped_at}" in launch.stdout()


def test_a_second_worker_on_the_same_run_dir_exits_8_and_leaves_the_first_alone(launcher, tmp_path):
    run = tmp_path / "run"
    args = [*FAST_ARGS, "--max_steps", "1000", "--checkpoint_interval", "4", "--eval_interval", "0"]
    first = launcher.start(run, args)
    wait_for(lambda: 4 in checkpoint_steps(run) or not first.alive(), 240, "the first worker's checkpoint")
    assert first.alive(), first.output_tail()

    second = launcher.run(run, args)
    assert second.proc.returncode == WorkerExit.RUN_DIR_BUSY, second.output_tail()
    lines = [line for line in second.stderr().splitlines() if line.strip()]
    assert len(lines) == 1 and f"in use by another trainer (pid {first.pid})" in lines[0], lines
    assert read_heartbeat(run)["pid"] == first.pid, "the refused worker overwrote the first one's heartbeat"
    assert (run / "worker.lock").read_text().strip() == str(first.pid)

    assert first.alive()
    os.kill(first.pid, signal.SIGTERM)
    assert first.wait(120) == 0, first.output_tail()
    stopped_at = read_heartbeat(run)["step"]
    assert [m["step"] for m in read_metrics(run)] == list(range(stopped_at + 1)), "metrics.jsonl was truncated"
    for step in checkpoint_steps(run):
        assert load_checkpoint(run / f"model_{step:05d}.pt")["step"] == step
    assert checkpoint_steps(run)[-1] == stopped_at


def test_a_rank_whose_process_group_teardown_never_returns_is_gone_within_the_limit(launcher, tmp_path):
    # torch's destroy_process_group() now and then never returns (seen twice in the suite: a rank
    # that had saved and said "exiting" still there a minute later, holding torchrun open, until
    # the supervisor's stop timeout killed the tree). Everything is saved by then: the worker's
    # watchdog ends it, with the stacks of every thread, even if the hung call holds the GIL.
    run = tmp_path / "run"
    started = time.monotonic()
    launch = launcher.start(run, [*FAST_ARGS, "--max_steps", "3"], nproc=2,
                            env={"GPT2SUP_INJECT_TEARDOWN_HANG": "1", "GPT2SUP_TEARDOWN_LIMIT_S": "3"})
    code = launch.wait(120)
    assert code != 0, launch.output_tail()  # torchrun reports rank 1's watchdog exit (1)
    assert time.monotonic() - started < 100
    output = launch.output_tail()
    assert "rank 1 hanging in the process group's teardown" in output and "Timeout (0:00:03)!" in output, output
    assert "_maybe_inject_teardown_hang" in output  # the stack says where it hung
    assert read_heartbeat(run, 1)["status"] == "finished" and (run / "model_00002.pt").exists()
