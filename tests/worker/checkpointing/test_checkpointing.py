"""CheckpointManager under stress: crashes mid-write, pruning, weights-only starts, a full disk,
and the file format itself (docs/checkpoints.md). Real worker processes, real signals, a real tmpfs.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from shared.checkpoint_format import FORMAT_VERSION, REQUIRED_KEYS
from shared.exit_codes import WorkerExit
from shared.run_dir import RunDir, step_from_checkpoint_name
from tests.worker.helpers import (
    FAST_ARGS,
    FINAL_CHECKPOINT,
    MB,
    checkpoint_steps,
    fill_leaving_free,
    load_checkpoint,
    read_heartbeat,
    read_metrics,
    run_ok,
    staging_files,
    wait_for,
)

# Real training processes or probe children: the end-to-end layer, run by CI, not the inner loop.
pytestmark = pytest.mark.slow

def assert_complete_checkpoint(path: Path) -> dict[str, Any]:
    """Loads with weights_only=True and holds every key of the format."""
    checkpoint = load_checkpoint(path)
    missing = [key for key in REQUIRED_KEYS if key not in checkpoint]
    assert not missing, f"{path.name} lacks {missing}"
    assert checkpoint["step"] == step_from_checkpoint_name(path.name)
    return checkpoint


def linked_checkpoint(run: Path) -> Path:
    link = run / "latest_checkpoint.pt"
    assert link.is_symlink(), "latest_checkpoint.pt is not a symlink"
    assert "/" not in os.readlink(link), "the link must be relative so the run dir can move"
    target = RunDir.at(run).resolve_latest_link()
    assert target is not None, f"latest_checkpoint.pt -> {os.readlink(link)} does not resolve to a file"
    return target


# ----------------------------------------------------------------------------- tests


def test_sigkill_while_writing_a_checkpoint_keeps_the_link_on_a_complete_file(launcher, tmp_path):
    run = tmp_path / "run"
    args = [*FAST_ARGS, "--max_steps", "10", "--checkpoint_interval", "2", "--eval_interval", "0"]
    launch = launcher.start(run, args)

    # Poll fast; kill the instant a staging file exists while an earlier checkpoint is complete.
    deadline = time.monotonic() + 240
    while True:
        assert launch.alive(), f"worker exited before a second save began:\n{launch.output_tail()}"
        assert time.monotonic() < deadline, "no checkpoint write was ever seen"
        try:
            names = os.listdir(run)
        except FileNotFoundError:
            names = []
        if any(n.endswith(".pt.tmp") for n in names) and any(step_from_checkpoint_name(n) is not None for n in names):
            os.kill(launch.pid, signal.SIGKILL)
            break
        time.sleep(0.0005)
    assert launch.wait(30) == -signal.SIGKILL

    stale = staging_files(run)
    assert stale, "the kill landed after the write finished; nothing was interrupted"
    target = linked_checkpoint(run)
    checkpoint = assert_complete_checkpoint(target)
    stale_step = int(stale[0].split("_")[1].split(".")[0])
    print(f"killed while writing {stale}; latest_checkpoint.pt -> {target.name}")
    assert checkpoint["step"] < stale_step

    # Resume, stopping before the interrupted step comes round again, so only the start-up clean-up
    # can remove the stale staging file. A shorter run changes the LR schedule: say it is meant.
    resume_steps = checkpoint["step"] + 2
    assert resume_steps <= stale_step
    resumed = run_ok(launcher, run, [*args, "--max_steps", str(resume_steps), "--auto_resume",
                                     "--allow_config_change"])
    assert f"resumed from {target} (step {checkpoint['step']})" in resumed.stdout()
    assert staging_files(run) == []
    assert [m["step"] for m in read_metrics(run)] == list(range(resume_steps))
    assert_complete_checkpoint(linked_checkpoint(run))


def test_keep_last_n_checkpoints_keeps_exactly_the_newest(launcher, tmp_path):
    run = tmp_path / "run"
    launch = run_ok(launcher, run, [*FAST_ARGS, "--max_steps", "14", "--checkpoint_interval", "2",
                                    "--eval_interval", "0", "--keep_last_n_checkpoints", "3"])
    # Saves at 2, 4, ..., 12 and the last step 13: seven saves, four pruned.
    assert checkpoint_steps(run) == [10, 12, 13]
    assert linked_checkpoint(run).name == "model_00013.pt"
    assert launch.stdout().count("pruned old checkpoint") == 4
    for step in (10, 12, 13):
        assert_complete_checkpoint(run / f"model_{step:05d}.pt")


def test_pretrained_checkpoint_loads_weights_only(launcher, ref_bare, default_data_dir, tmp_path):
    """Weights equal the file's; step, optimizer and data position start fresh."""
    from worker.data.shards import ShardedTokenLoader
    from worker.model import GPT, build_config

    source_path = ref_bare / FINAL_CHECKPOINT
    source = load_checkpoint(source_path)
    run = tmp_path / "run"
    # One step at learning rate 0: AdamW then leaves every weight exactly as loaded, so the saved
    # model must equal the pretrained file bit for bit.
    launch = run_ok(launcher, run, [*FAST_ARGS, "--max_steps", "1", "--max_lr", "0", "--dropout", "0.0",
                                    "--pretrained_checkpoint", str(source_path)])
    assert "loaded pretrained weights" in launch.stdout()
    saved = assert_complete_checkpoint(run / "model_00000.pt")

    for name, tensor in source["model"].items():
        assert torch.equal(saved["model"][name], tensor), f"{name} differs from the pretrained file"
    assert saved["step"] == 0
    assert [m["step"] for m in read_metrics(run)] == [0]
    step_counts = {float(state["step"]) for state in saved["optimizer"]["state"].values()}
    assert step_counts == {1.0}, f"optimizer was not fresh: step counts {step_counts} (source had 24)"
    assert saved["train_loader_state"] == {"shard_index": 0, "position": 128}, "data did not start at 0"

    # The step-0 loss is the loss of the pretrained weights on the first batch, not of a random init.
    def first_batch_loss(model: GPT) -> float:
        loader = ShardedTokenLoader(default_data_dir, "train", 2, 32, 0, 1, 2)
        model.eval()
        with torch.no_grad():
            return sum(model(*loader.next_batch())[1].item() / 2 for _ in range(2))

    config = build_config("tiny")
    pretrained = GPT(config)
    pretrained.load_state_dict(source["model"])
    torch.manual_seed(1337)
    random_init = GPT(config)
    expected, fresh = first_batch_loss(pretrained), first_batch_loss(random_init)
    step0 = read_metrics(run)[0]["loss"]
    assert abs(expected - fresh) > 0.05, (expected, fresh)  # the check below can tell them apart
    assert step0 == pytest.approx(expected, abs=1e-4), f"step-0 loss {step0}, pretrained {expected}, random {fresh}"


def test_nearly_full_disk_skips_the_save_keeps_the_previous_trains_on_but_never_ends_finished(launcher, mount_tmpfs):
    mnt = mount_tmpfs(160)
    run = mnt / "run"
    # saves due at 8, 16 and 19; no retry window, so the unsaved last step ends the run at once
    args = [*FAST_ARGS, "--max_steps", "20", "--final_save_retry_s", "0"]
    launch = launcher.start(run, args)
    wait_for(lambda: (run / "latest_checkpoint.pt").exists() or not launch.alive(), 240, "the first checkpoint")
    assert launch.alive(), launch.output_tail()
    # Freeze the worker while the disk fills up, so the next save certainly meets a full disk.
    os.kill(launch.pid, signal.SIGSTOP)
    try:
        fill_leaving_free(mnt, 20 * MB)  # a checkpoint is ~40 MB
    finally:
        os.kill(launch.pid, signal.SIGCONT)
    assert launch.wait() == WorkerExit.FINAL_SAVE_FAILED, launch.output_tail()

    assert [m["step"] for m in read_metrics(run)] == list(range(20)), "training did not go on"
    assert checkpoint_steps(run) == [8]
    assert linked_checkpoint(run).name == "model_00008.pt"
    assert_complete_checkpoint(run / "model_00008.pt")
    assert staging_files(run) == []
    log = (run / "log.txt").read_text()
    assert "16 checkpoint_failed" in log and "19 checkpoint_failed" in log, log
    beat = read_heartbeat(run)
    assert beat["status"] == "finished_without_checkpoint"  # the final state is not on disk
    assert beat["last_checkpoint"] == "model_00008.pt"
    assert beat["message"] and "final checkpoint (step 19)" in beat["message"], beat["message"]


def test_disk_full_during_the_write_is_not_fatal(mount_tmpfs):
    """ENOSPC in the middle of torch.save (the free-space estimate was too optimistic)."""
    from worker.checkpointing.checkpoint import CheckpointManager

    mnt = mount_tmpfs(24)
    messages: list[str] = []
    manager = CheckpointManager(RunDir.at(mnt), interval=1, log=messages.append)
    assert manager.save(1, {"w": torch.zeros(250_000)}).saved
    # The estimate is the previous file's size (1 MB), so the pre-check passes and the write of
    # 40 MB runs into the 24 MB limit.
    try:
        outcome = manager.save(2, {"w": torch.zeros(10_000_000)})
    except Exception as exc:  # noqa: BLE001 - the point is that nothing escapes
        pytest.fail(f"a full disk during the write crashed the save: {type(exc).__name__}: {str(exc)[:200]}")
    assert not outcome.saved and outcome.error and "disk full" in outcome.error
    assert staging_files(mnt) == []
    assert linked_checkpoint(mnt).name == "model_00001.pt"
    assert torch.equal(load_checkpoint(mnt / "model_00001.pt")["w"], torch.zeros(250_000))
    assert any("disk full" in m for m in messages)
    assert manager.save(3, {"w": torch.ones(250_000)}).saved  # the next save, with room, works
    assert linked_checkpoint(mnt).name == "model_00003.pt"


def test_checkpoint_files_are_plain_weights_only_data(ref_bare):
    from torch.serialization import get_unsafe_globals_in_checkpoint

    from worker.model import build_config

    allowed_leaves = (torch.Tensor, int, float, str, bool, type(None))

    def walk(value: Any, where: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                assert isinstance(key, (str, int)), f"{where}: key {key!r}"
                walk(item, f"{where}[{key!r}]")
        elif isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                walk(item, f"{where}[{index}]")
        else:
            assert isinstance(value, allowed_leaves), f"{where} is a {type(value).__module__}.{type(value).__name__}"

    steps = checkpoint_steps(ref_bare)
    assert steps == [8, 16, 23]
    for step in steps:
        path = ref_bare / f"model_{step:05d}.pt"
        assert get_unsafe_globals_in_checkpoint(path) == [], "the file needs globals weights_only refuses"
        checkpoint = assert_complete_checkpoint(path)
        walk(checkpoint, path.name)
        assert checkpoint["format_version"] == FORMAT_VERSION
        assert checkpoint["config"] == build_config("tiny", dropout=0.1).to_dict()
        assert isinstance(checkpoint["val_loss"], float)
        assert checkpoint["rng_state"].dtype == torch.uint8
        assert checkpoint["cuda_rng_state"] is None  # made on CPU
        assert set(checkpoint["train_loader_state"]) == {"shard_index", "position"}
        name, keys, *_ = checkpoint["numpy_rng_state"]
        assert name == "MT19937" and keys.dtype == torch.int64 and keys.numel() == 624
