"""Worker overhead and checkpoint save cost (issue 2's "Measure and report").

    python bench/bench_worker.py                 # defaults: tiny model, 200 steps, 3 rounds
    python bench/bench_worker.py --model mini --steps 300

1. Tokens/s of the real worker loop (``worker.train_gpt2.main`` in this process, with heartbeats,
   logs, the data loader and ``--checkpoint_interval 100``) versus a bare forward/backward/clip/
   AdamW loop of the same model and batch shape in the same process. Rounds alternate so machine
   noise hits both sides alike; the table shows medians.
2. ``CheckpointManager.save`` (torch.save into .tmp, fsync, rename, fsync dir, swing the link) versus
   writing the same tensor bytes raw with numpy + fsync.
3. What the integrity check costs before a resume: the zip CRC-32 of every member
   (``shared.checkpoint_crc.check_zip_crc``, one sequential read) versus the ``torch.load`` of the
   same file that follows it, both from the page cache (a file just written, as after a restart).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.checkpoint_crc import check_zip_crc
from shared.run_dir import RunDir
from worker import train_gpt2
from worker.checkpointing.checkpoint import CheckpointManager, iter_tensors
from worker.checkpointing.train_state import TrainProgress, compose_checkpoint
from worker.model import GPT, build_config


def worker_tokens_per_s(args: argparse.Namespace, workdir: Path) -> float:
    """Steady-state tokens/s of the real loop, from metrics.jsonl timestamps (first 5 steps dropped)."""
    log_dir = workdir / "worker_run"
    shutil.rmtree(log_dir, ignore_errors=True)
    argv = ["--log_dir", str(log_dir), "--model", args.model, "--max_steps", str(args.steps),
            "--micro_batch_size", str(args.batch), "--seq_len", str(args.seq_len),
            "--total_batch_size", str(args.batch * args.seq_len * args.accum),
            "--checkpoint_interval", "100", "--eval_interval", "0", "--generate_interval", "0",
            "--hellaswag_interval", "0", "--device", "cpu"]
    code = train_gpt2.main(argv)
    assert code == 0, f"worker exited {code}"
    records = [json.loads(line) for line in (log_dir / "metrics.jsonl").read_text().splitlines()]
    steady = records[5:]
    seconds = steady[-1]["time"] - steady[0]["time"]
    tokens = (len(steady) - 1) * args.batch * args.seq_len * args.accum
    # The loop's own bookkeeping (heartbeat, log.txt, metrics.jsonl, checkpoint at step 100) runs
    # between one step's `dt` window and the next: wall time minus the summed dt is its cost.
    compute = sum(r["dt"] for r in steady[1:])
    OUTSIDE_COMPUTE.append(1 - compute / seconds)
    return tokens / seconds


OUTSIDE_COMPUTE: list[float] = []


def bare_tokens_per_s(args: argparse.Namespace) -> float:
    torch.manual_seed(0)
    model = GPT(build_config(args.model))
    optimizer = model.configure_optimizers(0.1, 1e-3, "cpu")
    x = torch.randint(0, 50257, (args.batch, args.seq_len))
    y = torch.randint(0, 50257, (args.batch, args.seq_len))
    times = []
    for _ in range(args.steps):
        optimizer.zero_grad(set_to_none=True)
        for _ in range(args.accum):
            _, loss = model(x, y)
            (loss / args.accum).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        loss.item()
        times.append(time.time())
    steady = times[5:]
    return (len(steady) - 1) * args.batch * args.seq_len * args.accum / (steady[-1] - steady[0])


def checkpoint_save_vs_raw(
    model_name: str, workdir: Path, rounds: int
) -> tuple[list[float], list[float], list[float], int]:
    torch.manual_seed(0)
    model = GPT(build_config(model_name))
    optimizer = model.configure_optimizers(0.1, 1e-3, "cpu")
    _, loss = model(torch.randint(0, 50257, (1, 16)), torch.randint(0, 50257, (1, 16)))
    loss.backward()
    optimizer.step()  # so AdamW has its moment buffers

    class _Loader:
        def state_dict(self):
            return {"shard_index": 0, "position": 0}

    state = compose_checkpoint(model, optimizer, TrainProgress(step=1), _Loader(), "cpu", {})
    tensors = list(iter_tensors(state))
    seen, unique = set(), []
    for t in tensors:  # the tied head is one storage
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            unique.append(t)
    raw_bytes = sum(t.numel() * t.element_size() for t in unique)
    run_dir = RunDir.at(workdir / "ckpt")
    run_dir.root.mkdir(parents=True, exist_ok=True)
    # keep_last_n=-1: pruning (an unlink) is not writing; old files are removed outside the timing.
    manager = CheckpointManager(run_dir, interval=1, keep_last_n=-1, log=lambda m: None)
    save_times, raw_times, nocrc_times = [], [], []
    for i in range(rounds):
        outcome = manager.save(i + 1, state)
        assert outcome.saved, outcome.error
        save_times.append(outcome.seconds)
        t0 = time.perf_counter()
        intact, detail = check_zip_crc(outcome.path)
        CRC_TIMES.append(time.perf_counter() - t0)
        assert intact, detail
        t0 = time.perf_counter()
        loaded = torch.load(outcome.path, map_location="cpu", weights_only=True)
        LOAD_TIMES.append(time.perf_counter() - t0)
        del loaded
        outcome.path.unlink()

        raw_path = workdir / "raw.bin"
        t0 = time.perf_counter()
        with open(raw_path, "wb") as handle:
            for t in unique:
                t.detach().numpy().tofile(handle)
            handle.flush()
            os.fsync(handle.fileno())
        raw_times.append(time.perf_counter() - t0)
        raw_path.unlink()

        # Attribution only: the same torch.save with zip CRC-32s off. We keep CRCs in real
        # checkpoints: they are what lets `gpt2sup verify` catch bit rot.
        torch.serialization.set_crc32_options(False)
        try:
            t0 = time.perf_counter()
            with open(raw_path, "wb") as handle:
                torch.save(state, handle)
                handle.flush()
                os.fsync(handle.fileno())
            nocrc_times.append(time.perf_counter() - t0)
        finally:
            torch.serialization.set_crc32_options(True)
        raw_path.unlink()
    return save_times, raw_times, nocrc_times, raw_bytes


CRC_TIMES: list[float] = []
LOAD_TIMES: list[float] = []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq_len", type=int, default=64)
    parser.add_argument("--accum", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--checkpoint_model", default="gpt2", help="model whose checkpoint save is timed")
    parser.add_argument("--skip_loop", action="store_true", help="only the checkpoint measurement")
    args = parser.parse_args()
    os.environ.setdefault("GPT2SUP_CACHE_DIR", str(Path(tempfile.gettempdir()) / "gpt2sup-bench-cache"))
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        bare, worker = [], []
        for _ in range(0 if args.skip_loop else args.rounds):
            bare.append(bare_tokens_per_s(args))
            worker.append(worker_tokens_per_s(args, workdir))
        save_s, raw_s, nocrc_s, nbytes = checkpoint_save_vs_raw(args.checkpoint_model, workdir, args.rounds)

    print()
    if not args.skip_loop:
        print_loop_table(args, bare, worker)
        print()
    # Disk write speed on shared virtual disks swings 2-3x between runs: show best and median.
    print(f"| checkpoint ({args.checkpoint_model}, {args.rounds} interleaved rounds) | best | median |")
    print("|---|---|---|")
    print(f"| bytes (weights + AdamW moments) | {nbytes / 1e6:,.1f} MB | |")
    rows = (("CheckpointManager.save (tmp, fsync, rename, fsync dir, link)", save_s),
            ("raw numpy tofile + fsync of the same tensors", raw_s),
            ("attribution: torch.save with zip CRC-32 off + fsync", nocrc_s))
    for label, values in rows:
        print(f"| {label} | {min(values):.3f} s | {statistics.median(values):.3f} s |")
    print(f"| save / raw (goal < 1.3x) | {min(save_s) / min(raw_s):.2f}x | "
          f"{statistics.median(save_s) / statistics.median(raw_s):.2f}x |")
    print()
    print(f"| before a resume ({args.checkpoint_model}, {args.rounds} rounds, file in page cache) | best | median |")
    print("|---|---|---|")
    print(f"| check_zip_crc: CRC-32 of every member | {min(CRC_TIMES):.3f} s | {statistics.median(CRC_TIMES):.3f} s |")
    print(f"| torch.load(weights_only=True) | {min(LOAD_TIMES):.3f} s | {statistics.median(LOAD_TIMES):.3f} s |")
    print(f"| CRC check / load | {min(CRC_TIMES) / min(LOAD_TIMES):.2f}x | "
          f"{statistics.median(CRC_TIMES) / statistics.median(LOAD_TIMES):.2f}x |")


def print_loop_table(args: argparse.Namespace, bare: list[float], worker: list[float]) -> None:
    """Best (least disturbed by other load) and median of interleaved rounds."""
    print(f"| loop ({args.model}, B={args.batch}, T={args.seq_len}, accum={args.accum}, {args.steps} steps, "
          f"{args.rounds} interleaved rounds) | best | median |")
    print("|---|---|---|")
    print(f"| bare fwd/bwd/clip/AdamW loop tokens/s | {max(bare):,.0f} | {statistics.median(bare):,.0f} |")
    print(f"| worker loop tokens/s (--checkpoint_interval 100) | {max(worker):,.0f} | {statistics.median(worker):,.0f} |")
    print(f"| worker overhead (goal < 3%) | {100 * (1 - max(worker) / max(bare)):+.2f}% | "
          f"{100 * (1 - statistics.median(worker) / statistics.median(bare)):+.2f}% |")
    print(f"| worker time outside the step's compute (heartbeat, logs, checkpoint) | "
          f"{100 * min(OUTSIDE_COMPUTE):.2f}% | {100 * statistics.median(OUTSIDE_COMPUTE):.2f}% |")
    print(f"| rounds bare / worker | {', '.join(f'{v:,.0f}' for v in bare)} | {', '.join(f'{v:,.0f}' for v in worker)} |")


if __name__ == "__main__":
    main()
