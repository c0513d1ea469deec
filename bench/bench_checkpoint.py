"""Checkpoint cost at GPT-2 124M on the CPU: synchronous save vs raw bytes, and the async stall.

    python bench/bench_checkpoint.py                   # 3 interleaved rounds in /var/tmp
    python bench/bench_checkpoint.py --dir /data/bench --rounds 3

The state is the real one: GPT-2 124M (n_layer 12, n_head 12, n_embd 768, vocab 50304) and its
AdamW after one step (exp_avg, exp_avg_sq), composed by ``TrainingState.state_dict()`` exactly
as the worker saves it (~1.5 GB). Each round, in alternating order so a noisy disk hits both:

* raw:   the same unique tensor bytes written with plain ``write`` calls, then one ``fsync``;
* sync:  ``CheckpointManager.save`` (free-space check, torch.save into .tmp, zip CRC-32s filled in,
         fsync, rename, fsync of the directory, the latest link);
* torch: plain ``torch.save`` with torch's own inline CRC-32 (how saves were written before the
         CRCs were computed in parallel) and one fsync: what the sync save improves on;
* async: ``CheckpointManager.save_if_due`` with ``async_save=True``, then one real training step
         of the model (forward, backward, AdamW step at a small batch), as in the worker's loop.
         The *stall* is the time the step loop is blocked by the save: the save point itself plus
         the optimizer step's wait for the host copy (which runs in the writer thread during the
         forward/backward). The step's own time is shown next to a step without a save, since
         the copy and the write compete with it for CPU and memory bandwidth; the *write* is the
         background thread's save, timed by itself.

Printed per round: sync/raw and stall/sync; then the host memory the async snapshot buffers add
(the process RSS before the first async save and after its write, and the buffers' own size).
Goals (issue 12): sync/raw <= 1.2x in every round; stall/sync <= 10%.
Use a directory on a real disk: tmpfs would measure memory copies, not the disk.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.run_dir import RunDir
from worker.checkpointing.checkpoint import CheckpointManager, iter_tensors
from worker.checkpointing.train_state import TrainingState, TrainProgress
from worker.model import GPT, build_config


class _Loader:
    def state_dict(self) -> dict[str, int]:
        return {"shard_index": 0, "position": 4096}


def build_state() -> TrainingState:
    torch.manual_seed(0)
    model = GPT(build_config("gpt2"))
    optimizer = model.configure_optimizers(0.1, 6e-4, "cpu")
    for p in model.parameters():  # AdamW's moments without a 124M forward pass on a small CPU
        p.grad = torch.randn_like(p) * 1e-3
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return TrainingState(model, optimizer, _Loader(), TrainProgress(step=0), "cpu", train_config={"bench": True})


def train_step(state: TrainingState, tokens: int) -> float:
    """One forward/backward/AdamW step of the real model on random tokens; its seconds."""
    started = time.perf_counter()
    x = torch.randint(0, 50257, (1, tokens))
    _, loss = state.model(x, x)
    loss.backward()
    state.optimizer.step()
    state.optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - started


def unique_tensors(state: dict) -> list[torch.Tensor]:
    seen, unique = set(), []
    for t in iter_tensors(state):  # the tied wte / lm_head weight is one storage
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            unique.append(t)
    return unique


def raw_write(path: Path, tensors: list[torch.Tensor]) -> float:
    started = time.perf_counter()
    with open(path, "wb") as handle:
        handle.writelines(memoryview(t.detach().contiguous().numpy()).cast("B") for t in tensors)
        handle.flush()
        os.fsync(handle.fileno())
    seconds = time.perf_counter() - started
    path.unlink()
    return seconds


def torch_inline_crc_save(path: Path, state: dict) -> float:
    started = time.perf_counter()
    torch.serialization.set_crc32_options(True)
    torch.save(state, str(path))
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    seconds = time.perf_counter() - started
    path.unlink()
    return seconds


def fs_type(directory: Path) -> str:
    best, kind = "", "?"
    for line in Path("/proc/mounts").read_text().splitlines():
        parts = line.split()
        if len(parts) > 2 and str(directory.resolve()).startswith(parts[1]) and len(parts[1]) > len(best):
            best, kind = parts[1], parts[2]
    return kind


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="/var/tmp", help="where to write (a real disk, not tmpfs)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--step_tokens", type=int, default=64, help="tokens of the training step after each async save")
    args = parser.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    work = Path(tempfile.mkdtemp(prefix="bench_checkpoint.", dir=args.dir))
    kind = fs_type(work)
    print(f"directory {work} ({kind}){'  WARNING: tmpfs measures memory, not a disk' if kind == 'tmpfs' else ''}")
    process = psutil.Process()
    state = build_state()
    composed = state.state_dict()
    tensors = unique_tensors(composed)
    nbytes = sum(t.untyped_storage().nbytes() for t in tensors)
    print(f"state: {nbytes / 1e9:.3f} GB in {len(tensors)} tensors (GPT-2 124M + AdamW moments)")

    sync_dir, async_dir = RunDir.at(work / "sync"), RunDir.at(work / "async")
    sync_dir.root.mkdir()
    async_dir.root.mkdir()
    quiet = lambda message: None
    sync = CheckpointManager(sync_dir, interval=1, log=quiet)
    background = CheckpointManager(async_dir, interval=1, log=quiet, state=state, async_save=True)

    rows = []
    rss_before = rss_after = 0
    for index in range(args.rounds):
        os.sync()
        order = ("raw", "sync", "torch")[index % 3:] + ("raw", "sync", "torch")[:index % 3]
        times: dict[str, float] = {}
        for what in order:
            if what == "raw":
                times["raw"] = raw_write(work / "raw.bin", tensors)
            elif what == "torch":
                times["torch"] = torch_inline_crc_save(work / "torch.pt", composed)
            else:
                outcome = sync.save(index + 1, composed)
                assert outcome.saved, outcome.error
                times["sync"] = outcome.seconds
                outcome.path.unlink()
            os.sync()
        state.progress.step = index + 1
        if index == 0:
            rss_before = process.memory_info().rss
        plain_step = train_step(state, args.step_tokens)
        assert background.save_if_due(index + 1, last_step=False)
        write = background._writer.pending  # the bench looks inside on purpose: the write's own time
        step_with_save = train_step(state, args.step_tokens)  # its optimizer step waits for the copy
        write.wait()
        assert write.outcome.saved, write.outcome.error
        background._collect_background_write(block=True)
        if index == 0:
            rss_after = process.memory_info().rss
        write.outcome.path.unlink()
        rows.append((times["raw"], times["sync"], write.stall_seconds, write.outcome.seconds, plain_step, step_with_save,
                     times["torch"]))

    print()
    print("| round | raw write+fsync | sync save | sync/raw | torch.save, inline CRC (/raw) | async stall "
          "| stall/sync | background write | step without / with a save in flight |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for index, (raw, synchronous, stall, written, plain, loaded, inline) in enumerate(rows, 1):
        print(f"| {index} | {raw:.2f}s ({nbytes / raw / 1e6:.0f} MB/s) | {synchronous:.2f}s | "
              f"{synchronous / raw:.2f}x | {inline:.2f}s ({inline / raw:.2f}x) | {stall:.3f}s | "
              f"{stall / synchronous:.1%} | {written:.2f}s | {plain:.2f}s / {loaded:.2f}s |")
    ratios = [row[1] / row[0] for row in rows]
    stalls = [row[2] / row[1] for row in rows]
    print()
    print(f"sync/raw per round: {', '.join(f'{r:.2f}x' for r in ratios)}  "
          f"(goal <= 1.2x in every round: {'met' if max(ratios) <= 1.2 else 'NOT met'})")
    print(f"stall/sync per round: {', '.join(f'{r:.1%}' for r in stalls)}  "
          f"(goal <= 10%: {'met' if max(stalls) <= 0.10 else 'NOT met'})")
    print(f"host memory added by --async_checkpoint: RSS +{(rss_after - rss_before) / 1e9:.2f} GB "
          f"(snapshot buffers {background._snapshot.nbytes / 1e9:.2f} GB, kept between saves)")
    for path in (sync_dir.root, async_dir.root):
        for child in path.iterdir():
            child.unlink()
        path.rmdir()
    work.rmdir()


if __name__ == "__main__":
    main()
