"""The first thing to run on a GPU machine: does the CUDA path train fast, and resume bit for bit?

    bash bench/gpu_smoke.sh                       # GPT-2 124M on cuda, one process
    python bench/gpu_smoke.py --nproc 8           # the same with 8 GPUs (torchrun)
    python bench/gpu_smoke.py --device cpu --model tiny --micro-batch 2 --seq-len 32 \\
        --steps 12 --crash-at 5 --peak-tflops 0.1  # the script itself, on a CPU (the test suite)

Three parts, each a real run on the built-in corpus (no download):

1. Throughput: a short run with the defaults and one with ``--deterministic``; the median
   tokens/s of the steps after warm-up, and MFU = model FLOPs per token x tokens/s / peak FLOP/s.
   FLOPs per token are 6 x parameters (forward + backward of every weight) plus the attention
   term 12 x layers x seq_len x n_embd (PaLM's appendix B accounting, as nanoGPT's ``estimate_mfu``).
   The peak is bf16 dense of the GPU (a small table by device name, else ``--peak-tflops``).
2. Kill and resume: an uninterrupted ``--deterministic`` reference run, then the same run under
   ``gpt2sup run`` with rank 0 crashing once after ``--crash-at`` (``GPT2SUP_INJECT_CRASH_AT_STEP``);
   every step's loss and the final weights must equal the reference's bit for bit.
3. A one-screen summary; exit 1 if the resume was not bitwise or any run failed.
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
sys.path.insert(0, str(ROOT))

# bf16 dense tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0, "L4": 121.0,
                    "RTX 4090": 165.0, "RTX 3090": 71.0}
WARMUP_STEPS = 3  # the first steps include allocator growth (and compilation): not throughput


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda or cpu (default: %(default)s)")
    p.add_argument("--nproc", type=int, default=1, help="processes (GPUs) for every run (default: %(default)s)")
    p.add_argument("--model", default="gpt2", help="model size (default: %(default)s, GPT-2 124M)")
    p.add_argument("--micro-batch", type=int, default=16, help="sequences per forward pass (default: %(default)s)")
    p.add_argument("--seq-len", type=int, default=1024, help="tokens per sequence (default: %(default)s)")
    p.add_argument("--steps", type=int, default=30, help="optimizer steps of each run (default: %(default)s)")
    p.add_argument("--crash-at", type=int, default=12, help="rank 0 crashes once after this step (default: %(default)s)")
    p.add_argument("--compile", action="store_true", help="also pass --compile to every run")
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's peak bf16 TFLOP/s (default: by name)")
    p.add_argument("--data-dir", default=None, help="token shards for every run (default: the built-in corpus)")
    p.add_argument("--workdir", default=None, help="where the runs go (default: a new temporary directory)")
    args = p.parse_args(argv)
    if not 0 < args.crash_at < args.steps - 1:
        p.error(f"--crash-at must be between 1 and --steps - 2 ({args.steps - 2})")
    return args


def fit_micro_batch(args: argparse.Namespace) -> None:
    """Shrink the micro-batch until one step fits the smallest train shard (the built-in corpus
    has ~65k tokens per shard: 8 GPUs x 16 x 1024 would not fit), and say so."""
    import numpy as np

    from worker.data.shards import list_shards, resolve_data_dir

    smallest = min(np.load(path, mmap_mode="r").shape[0] for path in list_shards(resolve_data_dir(args.data_dir), "train"))
    fits = max(1, (smallest - 1) // (args.seq_len * args.nproc))
    if fits < args.micro_batch:
        print(f"gpu_smoke: --micro-batch {args.micro_batch} -> {fits}: a step must fit the smallest train shard "
              f"({smallest:,} tokens); pass --data-dir for larger shards", flush=True)
        args.micro_batch = fits


def peak_flops(args: argparse.Namespace) -> float:
    if args.peak_tflops is not None:
        return args.peak_tflops * 1e12
    import torch

    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    for key, tflops in PEAK_BF16_TFLOPS.items():
        if key in name:
            return tflops * 1e12
    sys.exit(f"gpu_smoke: unknown peak FLOP/s for {name!r}: pass --peak-tflops")


def flops_per_token(model: str, seq_len: int) -> tuple[float, int]:
    from worker.model import GPT, build_config

    config = build_config(model)
    n_params = sum(p.numel() for p in GPT(config).parameters())
    return 6 * n_params + 12 * config.n_layer * seq_len * config.n_embd, n_params


def worker_args(args: argparse.Namespace, *extra: str) -> list[str]:
    return ["--model", args.model, "--device", args.device, "--micro_batch_size", str(args.micro_batch),
            "--seq_len", str(args.seq_len), "--total_batch_size", str(args.micro_batch * args.seq_len * args.nproc),
            "--max_steps", str(args.steps), "--eval_interval", "0", "--hellaswag_interval", "0",
            "--generate_interval", "0", *(["--compile"] if args.compile else []),
            *(["--data_dir", args.data_dir] if args.data_dir else []), *extra]


def worker_command(args: argparse.Namespace) -> list[str]:
    if args.nproc == 1:
        return [sys.executable, "-m", "worker.train_gpt2"]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
            "-m", "worker.train_gpt2"]


def run(command: list[str], log: Path, env: dict[str, str] | None = None) -> int:
    started = time.monotonic()
    with open(log, "wb") as out:
        code = subprocess.call(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    print(f"  {'ok ' if code == 0 else 'FAILED'} exit {code} in {time.monotonic() - started:.0f}s: {log}", flush=True)
    return code


def metrics(run_dir: Path) -> dict[int, dict]:
    """The last record of each step (a resumed run logs the replayed steps again)."""
    records: dict[int, dict] = {}
    path = run_dir / "metrics.jsonl"
    for line in path.read_text().splitlines() if path.exists() else []:
        record = json.loads(line)
        if "loss" in record and "step" in record:
            records[record["step"]] = record
    return records


def throughput(args: argparse.Namespace, work: Path, label: str, *extra: str) -> float | None:
    run_dir = work / f"throughput_{label}"
    if run(worker_command(args) + ["--log_dir", str(run_dir), *worker_args(args, "--checkpoint_interval", "0", *extra)],
           work / f"throughput_{label}.log") != 0:
        return None
    rates = [r["tokens_per_s"] for step, r in sorted(metrics(run_dir).items()) if step >= WARMUP_STEPS]
    return statistics.median(rates) if rates else None


def resumed_step(run_dir: Path) -> int | None:
    """The step the supervisor resumed from after the first crash (its journal), None if none."""
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines() if line.strip()]
    kinds = [event["event"] for event in events]
    if "crashed" not in kinds:
        return None
    after = [e for e in events[kinds.index("crashed"):] if e["event"] == "checkpoint_valid"]
    return after[0].get("step") if after else None


def kill_and_resume(args: argparse.Namespace, work: Path) -> tuple[bool, str]:
    """(bitwise equal, what was compared) for a crash-and-restart under gpt2sup against a reference."""
    common = worker_args(args, "--deterministic", "--checkpoint_interval", str(max(1, args.crash_at // 2)))
    reference, supervised = work / "reference", work / "supervised"
    if run(worker_command(args) + ["--log_dir", str(reference), *common], work / "reference.log") != 0:
        return False, "the reference run failed"
    crash_env = {"GPT2SUP_INJECT_CRASH_AT_STEP": str(args.crash_at),
                 "GPT2SUP_INJECT_CRASH_ONCE_FILE": str(work / "crashed_once")}
    # Synchronous saves in the supervised run: the injected crash ends the process at once, and a
    # background write still in flight would die with it, leaving the restart nothing to resume
    # from (a rerun from scratch, trivially equal, would then pass for a resume).
    supervisor = [sys.executable, "-m", "supervisor.cli", "run", "--log-dir", str(supervised), "--max-restarts", "2",
                  "--nproc-per-node", str(args.nproc), "--backoff-initial", "0", "--", *common, "--no_async_checkpoint"]
    if run(supervisor, work / "supervised.log", crash_env) != 0:
        return False, "gpt2sup run did not finish"
    if not (work / "crashed_once").exists():
        return False, "the injected crash did not happen"
    resumed = resumed_step(supervised)
    if resumed is None or resumed > args.crash_at:
        return False, f"the restart did not resume from a validated checkpoint at or before step {args.crash_at} ({resumed})"
    want, got = metrics(reference), metrics(supervised)
    differing = [step for step in want if got.get(step, {}).get("loss") != want[step]["loss"]]
    if differing or len(got) != len(want):
        return False, f"losses differ at steps {differing[:5]} ({len(got)} vs {len(want)} steps)"
    if not same_final_weights(reference, supervised, args.steps - 1):
        return False, "every loss equal, but the final weights differ"
    return True, f"{len(want)} losses and the final weights bitwise equal after a crash at step {args.crash_at}"


def same_final_weights(left: Path, right: Path, step: int) -> bool:
    import torch

    name = f"model_{step:05d}.pt"
    a = torch.load(left / name, map_location="cpu", weights_only=True)["model"]
    b = torch.load(right / name, map_location="cpu", weights_only=True)["model"]
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="gpt2sup_gpu_smoke_"))
    work.mkdir(parents=True, exist_ok=True)
    peak = peak_flops(args)
    fit_micro_batch(args)
    per_token, n_params = flops_per_token(args.model, args.seq_len)
    print(f"gpu_smoke: {args.model} ({n_params / 1e6:.1f}M parameters) on {args.nproc} x {args.device}, "
          f"{args.steps} steps of {args.micro_batch} x {args.seq_len} tokens per process; runs in {work}", flush=True)
    fast = throughput(args, work, "default")
    deterministic = throughput(args, work, "deterministic", "--deterministic")
    equal, detail = kill_and_resume(args, work)

    def mfu(rate: float | None) -> str:
        return f"{rate:,.0f} tokens/s, MFU {100 * per_token * rate / (peak * args.nproc):.1f}%" if rate else "run failed"

    print("\n== gpu_smoke summary ==")
    print(f"throughput (median of steps >= {WARMUP_STEPS}): {mfu(fast)}")
    print(f"with --deterministic:                {mfu(deterministic)}"
          + (f" ({deterministic / fast:.2f}x)" if fast and deterministic else ""))
    print(f"model FLOPs per token {per_token / 1e9:.3f} GFLOP; peak {peak / 1e12:g} TFLOP/s per device")
    print(f"kill and resume under gpt2sup run (--deterministic): {'BITWISE EQUAL' if equal else 'NOT EQUAL'}: {detail}")
    return 0 if equal and fast and deterministic else 1


if __name__ == "__main__":
    sys.exit(main())
