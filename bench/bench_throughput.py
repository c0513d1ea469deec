"""CPU tokens/s: the worker under torchrun with 1 and with 2 processes, against a bare loop.

    python bench/bench_throughput.py                    # tiny model, the CPU profile's batch, 3 rounds
    python bench/bench_throughput.py --model mini --steps 60

Every side runs the same model, sequence length and tokens per optimizer step, each as its own
process tree, with the thread count ``gpt2sup run`` gives it (cores / processes, since torchrun
alone would force one thread per process):

* bare:       one process, a plain forward/backward/clip/AdamW loop on random tokens, all cores;
* worker x1:  ``torchrun --nproc_per_node=1 -m worker.train_gpt2``, all cores, 2 micro-steps;
* worker x2:  ``torchrun --nproc_per_node=2 -m worker.train_gpt2``, cores / 2 each, gloo all-reduce.

Rounds alternate the three so machine noise hits all alike; the table shows each round's
tokens/s (median of the steps after warm-up) and the medians' ratios to the bare loop.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WARMUP = 5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--steps", type=int, default=40, help="optimizer steps per run (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    p.add_argument("--bare", action="store_true", help=argparse.SUPPRESS)  # the bare loop's own process
    p.add_argument("--accum", type=int, default=2, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def bare_loop(args: argparse.Namespace) -> None:
    """Runs in its own process; prints the steady tokens/s as JSON."""
    sys.path.insert(0, str(ROOT))
    import torch

    from worker.model import GPT, build_config

    torch.manual_seed(0)
    model = GPT(build_config(args.model))
    optimizer = model.configure_optimizers(0.1, 1e-3, "cpu")
    rates = []
    for _ in range(args.steps):
        started = time.time()
        optimizer.zero_grad(set_to_none=True)
        for _ in range(args.accum):
            x = torch.randint(0, 50257, (args.micro_batch, args.seq_len))
            _, loss = model(x, torch.roll(x, -1, dims=1))
            (loss / args.accum).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        loss.item()
        rates.append(args.micro_batch * args.seq_len * args.accum / (time.time() - started))
    print(json.dumps({"tokens_per_s": statistics.median(rates[WARMUP:])}))


def run_bare(args: argparse.Namespace) -> float:
    out = subprocess.run(
        [sys.executable, __file__, "--bare", "--model", args.model, "--micro-batch", str(args.micro_batch),
         "--seq-len", str(args.seq_len), "--steps", str(args.steps), "--accum", "2"],
        env={**os.environ, "OMP_NUM_THREADS": str(args.cores)}, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["tokens_per_s"]


def run_worker(args: argparse.Namespace, nproc: int, work: Path, round_no: int) -> float:
    log_dir = work / f"worker{nproc}_{round_no}"
    total = args.micro_batch * args.seq_len * 2
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "worker.train_gpt2", "--log_dir", str(log_dir), "--device", "cpu", "--model", args.model,
               "--micro_batch_size", str(args.micro_batch), "--seq_len", str(args.seq_len),
               "--total_batch_size", str(total), "--max_steps", str(args.steps), "--checkpoint_interval", "0",
               "--eval_interval", "0", "--hellaswag_interval", "0", "--generate_interval", "0"]
    subprocess.run(command, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": str(max(1, args.cores // nproc))},
                   capture_output=True, check=True)
    records = [json.loads(line) for line in (log_dir / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(r["tokens_per_s"] for r in records if r["step"] >= WARMUP)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.bare:
        bare_loop(args)
        return 0
    work = Path(tempfile.mkdtemp(prefix="gpt2sup_throughput_"))
    results: dict[str, list[float]] = {"bare": [], "worker x1": [], "worker x2": []}
    print(f"{args.model}, {args.micro_batch} x {args.seq_len} tokens per micro-step, "
          f"{args.micro_batch * args.seq_len * 2} tokens per step, {args.steps} steps, {args.cores} cores")
    for round_no in range(args.rounds):
        results["bare"].append(run_bare(args))
        results["worker x1"].append(run_worker(args, 1, work, round_no))
        results["worker x2"].append(run_worker(args, 2, work, round_no))
        print(f"round {round_no + 1}: " + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in results.items()), flush=True)
    bare = statistics.median(results["bare"])
    print(f"\n| side | threads per process | tokens/s (median of {args.rounds}) | vs bare |")
    print("|---|---|---|---|")
    for name, values in results.items():
        nproc = 2 if name.endswith("x2") else 1
        median = statistics.median(values)
        print(f"| {name} | {max(1, args.cores // nproc)} | {median:,.0f} | {median / bare:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
