"""Fast in-process tests of the worker's pieces: RNG bundle, LR schedule, model shapes, the run
logger's resume truncation, and CheckpointManager's pruning and discovery rules.
"""
from __future__ import annotations

import io
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from shared.checkpoint_format import expected_model_shapes, parameter_count
from shared.run_dir import RunDir
from worker.checkpointing.checkpoint import CheckpointManager
from worker.checkpointing.rng import capture_rng_state, restore_rng_state
from worker.model import GPT, MODEL_PRESETS, build_config, cosine_lr
from worker.runtime.telemetry import RunLogger

# ----------------------------------------------------------------------------- RNG bundle


def draw_all() -> tuple[torch.Tensor, np.ndarray, list[float]]:
    """A few numbers from every generator, including the cached-Gaussian paths."""
    return (
        torch.rand(8),
        np.concatenate([np.random.rand(4), np.random.randn(3)]),
        [random.random(), random.gauss(0, 1), random.randint(0, 10**9)],
    )


def assert_same_draws(a, b) -> None:
    assert torch.equal(a[0], b[0])
    assert np.array_equal(a[1], b[1])
    assert a[2] == b[2]


def test_rng_state_round_trips_through_a_weights_only_file():
    torch.manual_seed(7)
    np.random.seed(7)
    random.seed(7)
    np.random.randn()  # leaves numpy with a cached Gaussian (has_gauss=1)
    random.gauss(0, 1)  # leaves Python with gauss_next set
    state = capture_rng_state("cpu")
    expected = draw_all()

    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)

    draw_all()  # move every generator on
    report = restore_rng_state(loaded, "cpu")
    assert report.notes == []
    assert_same_draws(draw_all(), expected)


def test_rng_restore_accepts_older_formats_and_a_cuda_checkpoint_on_cpu():
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    np_state = np.random.get_state()  # ('MT19937', uint32 ndarray, pos, has_gauss, cached)
    old_style = {
        "rng_state": torch.get_rng_state().numpy().copy(),  # a numpy uint8 array, not a tensor
        "cuda_rng_state": [torch.zeros(16, dtype=torch.uint8)],  # get_rng_state_all() from a GPU run
        "numpy_rng_state": np_state,  # the raw tuple with its ndarray
        "python_rng_state": random.getstate(),  # the raw tuple of tuples
    }
    expected = draw_all()
    draw_all()
    report = restore_rng_state(old_style, "cpu")
    assert_same_draws(draw_all(), expected)
    assert len(report.notes) == 1 and "CUDA" in report.notes[0]


# ----------------------------------------------------------------------------- LR schedule


def test_cosine_schedule_warms_up_linearly_then_decays_to_ten_percent():
    max_lr, warmup, total = 6e-4, 10, 100
    lrs = [cosine_lr(step, max_lr, warmup, total) for step in range(total + 5)]
    assert lrs[0] == pytest.approx(max_lr / warmup)
    for step in range(warmup):  # linear: (step + 1) / warmup of the peak
        assert lrs[step] == pytest.approx(max_lr * (step + 1) / warmup)
    assert lrs[warmup] == pytest.approx(max_lr)
    assert all(a >= b for a, b in zip(lrs[warmup:total], lrs[warmup + 1:total + 1]))  # decays monotonically
    assert lrs[(warmup + total) // 2] == pytest.approx(0.1 * max_lr + 0.5 * 0.9 * max_lr)  # cosine midpoint
    assert lrs[total] == pytest.approx(0.1 * max_lr)
    assert all(lr == pytest.approx(0.1 * max_lr) for lr in lrs[total:])


# ----------------------------------------------------------------------------- model


@pytest.mark.parametrize("preset", ["tiny", "mini"])
def test_model_state_dict_matches_the_shared_format(preset):
    config = build_config(preset)
    model = GPT(config)
    actual = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    assert actual == expected_model_shapes(config.to_dict())
    assert sum(p.numel() for p in model.parameters()) == parameter_count(config.to_dict())
    assert model.lm_head.weight is model.transformer.wte.weight  # tied embeddings
    assert config.vocab_size == 50304
    assert {k: getattr(config, k) for k in MODEL_PRESETS[preset]} == MODEL_PRESETS[preset]


# ----------------------------------------------------------------------------- RunLogger


def test_run_logger_drops_lines_after_the_resumed_step_and_a_half_written_line(tmp_path):
    run = RunDir.at(tmp_path)
    log_lines = ["0 train 10.900000", "0 val 10.9500", "1 train 10.800000", "2 train 10.700000",
                 "2 val 10.7000", "3 train 10.600000", "4 train 10.500000"]
    run.log_txt.write_text("\n".join(log_lines) + "\n5 train 10.4")  # the crash cut the last line
    run.metrics.write_text("".join(json.dumps({"step": s, "loss": 11.0 - s / 10}) + "\n" for s in range(5))
                           + '{"step": 5, "lo')

    logger = RunLogger(run, enabled=True)
    logger.open(resumed_step=2)
    logger.log_line("3 train 10.650000")
    logger.metrics({"step": 3, "loss": 10.65})
    logger.close()

    assert run.log_txt.read_text().splitlines() == [*log_lines[:5], "3 train 10.650000"]
    assert [json.loads(line)["step"] for line in run.metrics.read_text().splitlines()] == [0, 1, 2, 3]

    fresh = RunLogger(run, enabled=True)
    fresh.open(resumed_step=None)  # a new run starts empty files
    fresh.close()
    assert run.log_txt.read_text() == "" and run.metrics.read_text() == ""


def test_run_logger_is_silent_off_rank_zero(tmp_path):
    run = RunDir.at(tmp_path)
    run.log_txt.write_text("0 train 1.0\n")
    logger = RunLogger(run, enabled=False)
    logger.open(resumed_step=None)
    logger.log_line("1 train 1.0")
    logger.close()
    assert run.log_txt.read_text() == "0 train 1.0\n" and not run.metrics.exists()


# ----------------------------------------------------------------------------- CheckpointManager


def small_state(step: int) -> dict:
    return {"step": step, "w": torch.full((4,), float(step))}


def test_pruning_never_removes_the_file_just_written(tmp_path):
    """After a fallback to an older checkpoint, newer files exist; the fresh save must survive."""
    run = RunDir.at(tmp_path)
    manager = CheckpointManager(run, interval=1, keep_last_n=2, log=lambda _: None)
    for step in (10, 20, 30):
        assert manager.save(step, small_state(step)).saved
    assert [c.step for c in run.list_checkpoints()] == [20, 30]  # ordinary pruning: oldest goes

    outcome = manager.save(15, small_state(15))
    assert outcome.saved and outcome.path.exists()
    remaining = [c.step for c in run.list_checkpoints()]
    assert 15 in remaining and len(remaining) == 2, remaining
    assert run.resolve_latest_link() == outcome.path

    keep_one = CheckpointManager(run, interval=1, keep_last_n=1, log=lambda _: None)
    assert keep_one.save(5, small_state(5)).saved
    assert [c.step for c in run.list_checkpoints()] == [5]


def test_keep_all_by_default(tmp_path):
    run = RunDir.at(tmp_path)
    manager = CheckpointManager(run, interval=1, log=lambda _: None)
    for step in range(1, 6):
        manager.save(step, small_state(step))
    assert [c.step for c in run.list_checkpoints()] == [1, 2, 3, 4, 5]


def test_find_latest_prefers_the_link_then_the_highest_complete_step(tmp_path):
    run = RunDir.at(tmp_path)
    manager = CheckpointManager(run, interval=1, log=lambda _: None)
    assert manager.find_latest() is None
    for step in (10, 20, 30):
        manager.save(step, small_state(step))
    (tmp_path / "model_00040.pt.corrupt").write_bytes(b"quarantined")
    (tmp_path / "model_00050.pt.tmp").write_bytes(b"half a file")

    link = run.latest_link
    link.unlink()
    os.symlink("model_00020.pt", link)  # e.g. the supervisor re-pointed it after quarantining 30
    assert manager.find_latest() == run.checkpoint(20).resolve()

    link.unlink()
    os.symlink("model_00099.pt", link)  # dangling
    assert manager.find_latest() == run.checkpoint(30)

    link.unlink()
    assert manager.find_latest() == run.checkpoint(30)  # no link at all: highest step, not .tmp/.corrupt


def test_stale_staging_files_are_removed_and_nothing_else(tmp_path):
    run = RunDir.at(tmp_path)
    manager = CheckpointManager(run, interval=1, log=lambda _: None)
    manager.save(3, small_state(3))
    (tmp_path / "model_00004.pt.tmp").write_bytes(b"partial")
    (tmp_path / "model_00002.pt.corrupt").write_bytes(b"quarantined")
    removed = manager.remove_stale_staging_files()
    assert [p.name for p in removed] == ["model_00004.pt.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "latest_checkpoint.pt", "model_00002.pt.corrupt", "model_00003.pt"]


def test_save_due_rule():
    manager = CheckpointManager(RunDir.at("unused"), interval=5, is_writer=True, log=lambda _: None)
    assert [s for s in range(12) if manager.is_due(s, last_step=False)] == [5, 10]
    assert manager.is_due(11, last_step=True)
    only_last = CheckpointManager(RunDir.at("unused"), interval=0, log=lambda _: None)
    assert not any(only_last.is_due(s, last_step=False) for s in range(12)) and only_last.is_due(3, True)


def test_only_the_writer_rank_writes(tmp_path):
    manager = CheckpointManager(RunDir.at(tmp_path), interval=1, is_writer=False, log=lambda _: None)
    assert not manager.save(1, small_state(1)).saved
    assert list(tmp_path.iterdir()) == []


def test_saved_file_loads_weights_only_and_link_is_relative(tmp_path):
    run = RunDir.at(tmp_path)
    manager = CheckpointManager(run, interval=1, log=lambda _: None)
    outcome = manager.save(7, small_state(7))
    assert outcome.saved and outcome.path.name == "model_00007.pt" and outcome.size_bytes == outcome.path.stat().st_size
    assert os.readlink(run.latest_link) == "model_00007.pt"
    loaded = torch.load(run.latest_link, weights_only=True)
    assert loaded["step"] == 7 and torch.equal(loaded["w"], torch.full((4,), 7.0))
    assert run.newest_checkpoint().step == 7
    assert not list(Path(tmp_path).glob("*.tmp")) and not list(Path(tmp_path).glob("*.new"))


# ----------------------------------------------------------------------------- error messages


def test_worker_error_messages_lose_ansi_codes_and_are_shortened_only_between_sentences():
    from shared.exit_codes import WorkerExit
    from worker.errors import MAX_MESSAGE_CHARS, WorkerError, clean_message

    assert str(WorkerError("\x1b[1mcheckpoint\x1b[0m is bad.", WorkerExit.CHECKPOINT_ERROR)) == "checkpoint is bad."
    long = " ".join(f"Sentence number {i} explains one more detail." for i in range(200))
    short = clean_message(long)
    assert len(short) <= MAX_MESSAGE_CHARS
    assert short.endswith("detail. …"), short[-60:]  # whole sentences, and a mark that some were left out
    one_endless_sentence = "word " * 1000
    assert clean_message(one_endless_sentence, limit=50).endswith("word …")


def test_library_reasons_never_advise_turning_safe_loading_off():
    from worker.errors import library_reason

    torch_text = ("Weights only load failed. Re-running `torch.load` with `weights_only` set to `False` will "
                  "likely succeed, but it can result in arbitrary code execution. Do it only if you got the "
                  "file from a trusted source.\n\n\x1b[1mTrying to load unsupported GLOBAL posix.system\x1b[0m "
                  "whose module posix is blocked.\n\nCheck the documentation of torch.load to learn more.")
    assert library_reason(RuntimeError(torch_text)) == (
        "Trying to load unsupported GLOBAL posix.system whose module posix is blocked.")
    assert library_reason(ValueError("")) == "ValueError"


@pytest.mark.parametrize("ranks, leader", [
    ([(None, 0), (None, 0)], 0),  # one supervisor per node but no --node-rank, or a bare torchrun: rank 0
    ([("1", 0), ("0", 0)], 1),  # the rendezvous put node 1 first: node 0's rank still writes
    ([("1", 0), ("1", 1), ("0", 0), ("0", 1)], 2),
    ([("0", 0), ("0", 1)], 0),  # one node
])
def test_the_leader_is_node_0s_local_rank_0_whatever_global_rank_it_got(ranks, leader):
    from worker.runtime.distributed import Distributed, choose_leader

    assert choose_leader(ranks) == leader
    assert Distributed(True, leader, 0, len(ranks), "cpu", leader=leader).master
    assert not Distributed(True, (leader + 1) % len(ranks), 0, len(ranks), "cpu", leader=leader).master
