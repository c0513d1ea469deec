"""--async_checkpoint: periodic saves written by a background thread while training goes on.

Real workers, real files, real signals. ``GPT2SUP_INJECT_SLOW_CHECKPOINT_WRITE=S`` (a slow disk:
the background write starts S seconds late) keeps a save visibly in flight long enough to act on
it; the write itself, the snapshot, the rename and the reporting are the feature's own code.

* an asynchronous run writes the same checkpoints, bit for bit, as a synchronous one;
* SIGKILL while a write is in flight: the resume starts from the previous complete checkpoint,
  never from a ``.tmp`` (even a complete-looking one), and ends bitwise equal to the reference;
* SIGTERM while a write is in flight: that write finishes, the stop's own checkpoint is written,
  exit 0, and the heartbeat named the file in flight meanwhile;
* the last step waits for a write in flight and its own checkpoint is on disk at exit;
* a background write that fails (a full disk) is a warning; training continues and ends saved;
* an exception out of the training loop waits for the write in flight, which lands complete.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import pytest

from shared.checkpoint_crc import check_zip_crc
from shared.run_dir import RunDir
from tests.worker.helpers import (
    FAST_ARGS,
    MB,
    N_STEPS,
    REPO_ROOT,
    RESUME_ARGS,
    assert_trees_equal,
    checkpoint_steps,
    fill_leaving_free,
    load_checkpoint,
    read_heartbeat,
    read_metrics,
    run_ok,
    staging_files,
    step_records,
    wait_for,
)
from worker.checkpointing.async_save import SLOW_WRITE_ENV

pytestmark = pytest.mark.slow

SLOW = {SLOW_WRITE_ENV: "3"}


def wait_for_save_in_flight(launch, name: str, timeout: float = 120.0) -> dict:
    def in_flight():
        if not launch.alive():
            raise AssertionError(f"worker exited early ({launch.proc.returncode}):\n{launch.output_tail()}")
        beat = read_heartbeat(launch.log_dir)
        return beat if beat and beat.get("save_in_flight") == name else None

    return wait_for(in_flight, timeout, f"heartbeat save_in_flight == {name}", poll=0.005)


def test_async_and_sync_runs_write_bitwise_identical_checkpoints(launcher, tmp_path):
    background = run_ok(launcher, tmp_path / "async", [*RESUME_ARGS, "--async_checkpoint"])
    synchronous = run_ok(launcher, tmp_path / "sync", [*RESUME_ARGS, "--no_async_checkpoint"])
    assert "written in the background" in background.stdout()
    assert "written in the background" not in synchronous.stdout()
    steps = checkpoint_steps(tmp_path / "async")
    assert steps == checkpoint_steps(tmp_path / "sync") == [8, 16, N_STEPS - 1]
    for step in steps:
        name = f"model_{step:05d}.pt"
        left, right = tmp_path / "async" / name, tmp_path / "sync" / name
        # Same layout too: the tied embedding stays one storage in the host snapshot.
        assert left.stat().st_size == right.stat().st_size, name
        assert_trees_equal(load_checkpoint(left), load_checkpoint(right), name)
    assert step_records(tmp_path / "async") == step_records(tmp_path / "sync")
    assert read_heartbeat(tmp_path / "async")["last_checkpoint"] == f"model_{N_STEPS - 1:05d}.pt"
    assert read_heartbeat(tmp_path / "async")["save_in_flight"] is None


def test_sigkill_while_a_write_is_in_flight_resumes_bitwise_from_the_previous_checkpoint(launcher, ref_bare, tmp_path):
    run = tmp_path / "run"
    launch = launcher.start(run, [*RESUME_ARGS, "--async_checkpoint"], env=SLOW)
    beat = wait_for_save_in_flight(launch, "model_00016.pt")
    assert beat["last_checkpoint"] == "model_00008.pt", beat  # completed before 16 was started
    launch.kill_tree(signal.SIGKILL)
    launch.wait(30)
    assert not (run / "model_00016.pt").exists()
    assert RunDir.at(run).resolve_latest_link() == run / "model_00008.pt"
    # A staging file is never a checkpoint, however complete and however high its step.
    shutil.copy(run / "model_00008.pt", run / "model_00020.pt.tmp")
    assert RunDir.at(run).newest_checkpoint().step == 8

    resumed = run_ok(launcher, run, [*RESUME_ARGS, "--auto_resume", "--async_checkpoint"])
    assert "resumed from" in resumed.stdout() and "model_00008.pt (step 8)" in resumed.stdout()
    assert staging_files(run) == []
    assert step_records(run) == step_records(ref_bare)
    assert (run / "log.txt").read_text() == (ref_bare / "log.txt").read_text()
    final = f"model_{N_STEPS - 1:05d}.pt"
    assert_trees_equal(load_checkpoint(run / final), load_checkpoint(ref_bare / final))


def test_sigterm_while_a_write_is_in_flight_finishes_it_and_saves_the_stop_step(launcher, tmp_path):
    run = tmp_path / "run"
    launch = launcher.start(run, [*FAST_ARGS, "--max_steps", "200", "--async_checkpoint"], env=SLOW)
    beat = wait_for_save_in_flight(launch, "model_00008.pt")
    assert beat["status"] == "running" and beat["step"] >= 8
    assert not (run / "model_00008.pt").exists()  # in flight: not renamed into place yet
    os.kill(launch.pid, signal.SIGTERM)
    assert launch.wait(120) == 0, launch.output_tail()

    beat = read_heartbeat(run)
    stopped = beat["step"]
    assert beat["status"] == "stopped" and beat["save_in_flight"] is None
    assert beat["last_checkpoint"] == f"model_{stopped:05d}.pt"
    assert 8 < stopped < 16, stopped  # the stop came before the next periodic save
    assert checkpoint_steps(run) == [8, stopped]
    for step in (8, stopped):
        path = run / f"model_{step:05d}.pt"
        assert check_zip_crc(path)[0]
        assert load_checkpoint(path)["step"] == step
    assert staging_files(run) == []
    assert RunDir.at(run).resolve_latest_link() == run / f"model_{stopped:05d}.pt"
    assert "saved" in launch.stdout() and "written in the background" in launch.stdout()


def test_the_last_step_waits_for_a_write_in_flight_and_is_saved(launcher, tmp_path):
    run = tmp_path / "run"
    launch = launcher.start(run, [*FAST_ARGS, "--max_steps", "10", "--async_checkpoint"], env=SLOW)
    wait_for_save_in_flight(launch, "model_00008.pt")
    assert launch.wait(120) == 0, launch.output_tail()
    assert checkpoint_steps(run) == [8, 9]
    assert load_checkpoint(run / "model_00009.pt")["step"] == 9
    beat = read_heartbeat(run)
    assert beat["status"] == "finished" and beat["last_checkpoint"] == "model_00009.pt"
    assert beat["save_in_flight"] is None


def test_a_failed_background_write_is_a_warning_and_training_continues(launcher, mount_tmpfs, tmp_path):
    disk = mount_tmpfs(160)
    run = disk / "run"
    launch = launcher.start(run, [*FAST_ARGS, "--max_steps", "20", "--async_checkpoint"], env=SLOW,
                            output_dir=tmp_path)
    wait_for_save_in_flight(launch, "model_00008.pt")
    ballast = fill_leaving_free(disk, 1 * MB)  # the disk fills while the write waits to start
    try:
        wait_for(lambda: "checkpoint of step 8" in launch.stdout() or not launch.alive(), 60,
                 "the background write's failure")
    finally:
        ballast.unlink()
    assert launch.wait(120) == 0, launch.output_tail()
    out = launch.stdout()
    assert "WARNING:" in out and "previous checkpoint kept, training continues" in out
    assert "8 checkpoint_failed" in (run / "log.txt").read_text()
    assert checkpoint_steps(run) == [16, 19]  # the failed one is skipped; later saves work
    assert staging_files(run) == []
    assert read_metrics(run)[-1]["step"] == 19
    beat = read_heartbeat(run)
    assert beat["status"] == "finished" and beat["last_checkpoint"] == "model_00019.pt"


CRASH_AFTER_A_SAVE_POINT = """
import sys
from shared.run_dir import RunDir
from worker.checkpointing.checkpoint import CheckpointManager
from worker.model import GPT, build_config
from worker.checkpointing.train_state import TrainingState, TrainProgress

class Loader:
    def state_dict(self):
        return {"shard_index": 0, "position": 0}

model = GPT(build_config("tiny"))
optimizer = model.configure_optimizers(0.1, 1e-3, "cpu")
state = TrainingState(model, optimizer, Loader(), TrainProgress(step=5), "cpu", {})
manager = CheckpointManager(RunDir.at(sys.argv[1]), interval=5, state=state, async_save=True)
assert manager.save_if_due(5, last_step=False)
assert manager._writer.in_flight is not None
raise RuntimeError("crash in the training loop")
"""


def test_an_exception_out_of_the_loop_waits_for_the_write_in_flight(launcher, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    done = subprocess.run([sys.executable, "-c", CRASH_AFTER_A_SAVE_POINT, str(run)], check=False, cwd=REPO_ROOT,
                          env=launcher.env(SLOW), capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "crash in the training loop" in done.stderr, done.stderr
    assert "waiting up to" in done.stdout and "model_00005.pt" in done.stdout
    path = run / "model_00005.pt"
    assert check_zip_crc(path)[0] and load_checkpoint(path)["step"] == 5
    assert staging_files(run) == []
    assert RunDir.at(run).resolve_latest_link() == path
