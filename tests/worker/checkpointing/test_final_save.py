"""A run ends as finished only with its final state on disk (issue: "finished" means it is saved).

Real workers on real small tmpfs disks: a disk too small for the last checkpoint ends with exit 7
and ``finished_without_checkpoint`` (recorded even on a disk with not a byte free), never exit 0;
a stop whose checkpoint cannot be written ends with exit 9; space freed while the worker retries its final
save lets it finish normally. The free-space estimate counts the tied embedding once and says its
margin.
"""
from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator

import pytest
import torch

from shared.exit_codes import WorkerExit
from shared.run_dir import RunDir
from tests.worker.helpers import (
    FAST_ARGS,
    MB,
    checkpoint_steps,
    fill_leaving_free,
    read_heartbeat,
    read_metrics,
    staging_files,
    wait_for,
)
from worker.checkpointing.checkpoint import (
    FREE_SPACE_MARGIN_BYTES,
    CheckpointManager,
    tensor_storage_bytes,
)
from worker.checkpointing.train_state import TrainProgress, compose_checkpoint
from worker.model import GPT, build_config

# Real training processes or probe children: the end-to-end layer, run by CI, not the inner loop.
pytestmark = pytest.mark.slow

class _Loader:
    def state_dict(self) -> dict[str, int]:
        return {"shard_index": 0, "position": 0}


def tiny_checkpoint_state() -> dict:
    torch.manual_seed(0)
    model = GPT(build_config("tiny"))
    optimizer = model.configure_optimizers(0.1, 1e-3, "cpu")
    model(torch.zeros((1, 8), dtype=torch.long), torch.zeros((1, 8), dtype=torch.long))[1].backward()
    optimizer.step()  # AdamW's moment buffers exist, as in a real checkpoint
    return compose_checkpoint(model, optimizer, TrainProgress(step=1), _Loader(), "cpu", {})


def test_the_size_estimate_counts_the_tied_embedding_once_and_matches_the_file(tmp_path):
    state = tiny_checkpoint_state()
    assert state["model"]["lm_head.weight"].data_ptr() == state["model"]["transformer.wte.weight"].data_ptr()
    estimate = tensor_storage_bytes(state)
    manager = CheckpointManager(RunDir.at(tmp_path), interval=1, log=lambda _: None)
    written = manager.save(1, state).size_bytes
    # The file holds each storage once plus a little pickle/zip overhead; counting the 12.9 MB
    # embedding twice would overshoot by a third.
    assert written * 0.97 < estimate <= written, (estimate, written)


def test_the_60_mb_disk_of_the_issue_ends_with_exit_7_not_finished(launcher, mount_tmpfs):
    mnt = mount_tmpfs(60)
    run = mnt / "run"
    launch = launcher.run(run, [*FAST_ARGS, "--max_steps", "20", "--final_save_retry_s", "2"])
    assert launch.proc.returncode == WorkerExit.FINAL_SAVE_FAILED, launch.output_tail()

    assert [m["step"] for m in read_metrics(run)] == list(range(20)), "training itself must go on"
    # A tiny checkpoint is ~40 MB: with the tied embedding counted once the first one fits
    # (40 MB + 16.8 MB margin < 62.9 MB), the later ones cannot.
    assert checkpoint_steps(run) == [8]
    assert staging_files(run) == []
    beat = read_heartbeat(run)
    assert beat["status"] == "finished_without_checkpoint" and beat["step"] == 19
    assert beat["last_checkpoint"] == "model_00008.pt"
    assert "final checkpoint (step 19) could not be written" in beat["message"]
    margin_mb = f"{FREE_SPACE_MARGIN_BYTES / 1e6:.1f} MB margin"
    assert margin_mb in beat["message"] and "MB free" in beat["message"], beat["message"]
    assert "train_gpt2: error: the final checkpoint (step 19)" in launch.stderr()
    assert "retrying every" in launch.stdout()


def past_its_first_checkpoint(launcher, run, args: list[str]):
    """A worker started on ``run`` and waited for until its first checkpoint is on disk."""
    launch = launcher.start(run, args)
    wait_for(lambda: (run / "latest_checkpoint.pt").exists() or not launch.alive(), 240, "the first checkpoint")
    assert launch.alive(), launch.output_tail()
    return launch


@contextlib.contextmanager
def frozen(launch) -> Iterator[None]:
    """The worker stopped (SIGSTOP) while the body fills the disk, so its next save meets it full."""
    os.kill(launch.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(launch.pid, signal.SIGCONT)


def test_a_disk_at_100_percent_through_the_last_step_still_records_the_ending_in_the_heartbeat(launcher, mount_tmpfs):
    """Not a byte free: the heartbeat is rewritten in its own block, so the ending is not lost."""
    mnt = mount_tmpfs(160)
    run = mnt / "run"
    launch = past_its_first_checkpoint(launcher, run, [*FAST_ARGS, "--max_steps", "20", "--final_save_retry_s", "1"])
    with frozen(launch):
        ballast = fill_leaving_free(mnt, 0)
        step_when_full = read_heartbeat(run)["step"]
    try:
        assert launch.wait() == WorkerExit.FINAL_SAVE_FAILED, launch.output_tail()
        beat = read_heartbeat(run)
    finally:
        ballast.unlink()
    assert step_when_full < 19 and beat["step"] == 19, (step_when_full, beat)
    assert beat["status"] == "finished_without_checkpoint", beat
    assert "final checkpoint (step 19) could not be written" in beat["message"]


def test_a_final_save_that_fails_then_finds_space_during_the_retry_window_finishes(launcher, mount_tmpfs):
    mnt = mount_tmpfs(160)
    run = mnt / "run"
    launch = past_its_first_checkpoint(launcher, run, [*FAST_ARGS, "--max_steps", "12", "--final_save_retry_s", "300"])
    with frozen(launch):
        ballast = fill_leaving_free(mnt, 20 * MB)

    def retrying():
        assert launch.alive(), f"the worker gave up instead of retrying:\n{launch.output_tail()}"
        beat = read_heartbeat(run)
        return beat and beat["phase"] == "checkpoint" and "retrying the final checkpoint" in (beat["message"] or "")

    wait_for(retrying, 240, "the worker to retry its final save")
    assert not (run / "model_00011.pt").exists()
    ballast.unlink()  # the operator frees space

    assert launch.wait() == 0, launch.output_tail()
    assert checkpoint_steps(run) == [8, 11]
    assert RunDir.at(run).resolve_latest_link().name == "model_00011.pt"
    assert torch.load(run / "model_00011.pt", weights_only=True)["step"] == 11
    beat = read_heartbeat(run)
    assert beat["status"] == "finished" and beat["last_checkpoint"] == "model_00011.pt"
    assert beat["save_seconds"] > 0


def test_a_stop_whose_checkpoint_cannot_be_written_fails_with_exit_9(launcher, mount_tmpfs):
    mnt = mount_tmpfs(160)
    run = mnt / "run"
    launch = past_its_first_checkpoint(launcher, run, [*FAST_ARGS, "--max_steps", "1000", "--final_save_retry_s", "1"])
    with frozen(launch):
        fill_leaving_free(mnt, 20 * MB)
        os.kill(launch.pid, signal.SIGTERM)  # delivered on SIGCONT: stop at the next step boundary
    assert launch.wait() == WorkerExit.STOP_SAVE_FAILED, launch.output_tail()

    beat = read_heartbeat(run)
    assert beat["status"] == "failed", beat  # not "stopped": the stop's state is not on disk
    assert f"the stop request's checkpoint (step {beat['step']}) could not be written" in beat["message"]
    assert checkpoint_steps(run) == [8]
