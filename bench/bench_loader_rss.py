"""Peak memory of ShardedTokenLoader on a 100M-token shard (goal: loader delta < 300 MB).

Why a benchmark and not a test: memory numbers depend on the machine, so the project keeps
performance in scripts that print a table.

Each measurement runs in a fresh subprocess so nothing the parent touched (writing the shard,
other runs) pollutes it. Peak RSS is ``getrusage(RUSAGE_SELF).ru_maxrss``; the final split of
RSS into anonymous memory (what a loader really costs) and file-backed pages (the memory-mapped
shard pages it touched, reclaimable page cache) comes from /proc/self/status.

    python bench/bench_loader_rss.py                 # 100M tokens, 300 micro-batches of 16x1024
    python bench/bench_loader_rss.py --full-pass     # also read the whole shard once
    python bench/bench_loader_rss.py --naive         # also build-nanogpt's load-everything way
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
GOAL_MB = 300.0

CHILD = r"""
import json, resource, sys, time
mode, data_dir, B, T, batches = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
import numpy, torch  # the baseline: what any training process has already paid for

def status_kb(field):
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0

read = 0
t0 = time.perf_counter()
if mode == "loader":
    from worker.data.shards import ShardedTokenLoader
    loader = ShardedTokenLoader(data_dir, "train", B, T)
    checksum = 0
    for _ in range(batches):
        x, y = loader.next_batch()
        checksum += int(x[0, 0])  # touch the data
        read += 1
elif mode == "naive":  # build-nanogpt: np.load the shard, then torch.tensor(..., dtype=long)
    import glob
    npt = numpy.load(sorted(glob.glob(data_dir + "/*_train_*.npy"))[0]).astype(numpy.int32)
    tokens = torch.tensor(npt, dtype=torch.long)
    for i in range(batches):
        buf = tokens[i * B * T : (i + 1) * B * T + 1]
        x, y = buf[:-1].view(B, T), buf[1:].view(B, T)
        read += 1
elapsed = time.perf_counter() - t0
print(json.dumps({
    "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "end_mb": status_kb("VmRSS") / 1024,
    "anon_mb": status_kb("RssAnon") / 1024,
    "file_mb": status_kb("RssFile") / 1024,
    "batches": read,
    "seconds": elapsed,
}))
"""


def make_shard(directory: Path, num_tokens: int) -> Path:
    """A 100M-token shard written in chunks through a memmap (never whole in this process)."""
    import numpy as np

    path = directory / "bench_train_000001.npy"
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint16, shape=(num_tokens,))
    chunk = 8_000_000
    rng = np.random.default_rng(0)
    for start in range(0, num_tokens, chunk):
        stop = min(start + chunk, num_tokens)
        out[start:stop] = rng.integers(0, 50257, size=stop - start, dtype=np.uint16)
    out.flush()
    del out
    return path


def measure(mode: str, data_dir: Path, B: int, T: int, batches: int) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(data_dir), str(B), str(T), str(batches)],
        capture_output=True, text=True, env=env, check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"{mode} child failed: {result.stderr.strip().splitlines()[-1:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=100_000_000)
    parser.add_argument("--micro_batch_size", type=int, default=16)
    parser.add_argument("--seq_len", type=int, default=1024)
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--full-pass", action="store_true", help="also read the whole shard once")
    parser.add_argument("--naive", action="store_true",
                        help="also measure loading the whole shard as int64 (about 1 GB)")
    parser.add_argument("--tmp_dir", default=None, help="where to write the shard (default: $TMPDIR)")
    args = parser.parse_args()
    B, T = args.micro_batch_size, args.seq_len

    with tempfile.TemporaryDirectory(dir=args.tmp_dir) as tmp:
        data_dir = Path(tmp)
        t0 = time.perf_counter()
        make_shard(data_dir, args.tokens)
        print(f"shard: {args.tokens:,} uint16 tokens ({args.tokens * 2 / 2**20:.0f} MiB) "
              f"written in {time.perf_counter() - t0:.1f}s; micro-batch {B}x{T}", file=sys.stderr)

        rows = [("baseline: import torch, numpy", measure("baseline", data_dir, B, T, 0))]
        rows.append((f"loader, {args.batches} micro-batches",
                     measure("loader", data_dir, B, T, args.batches)))
        if args.full_pass:
            full = (args.tokens - 1) // (B * T)
            rows.append((f"loader, full pass ({full} micro-batches)",
                         measure("loader", data_dir, B, T, full)))
        if args.naive:
            rows.append((f"naive int64 tensor, {args.batches} micro-batches",
                         measure("naive", data_dir, B, T, args.batches)))

    base, base_end = rows[0][1]["peak_mb"], rows[0][1]["end_mb"]
    header = (f"{'run':<42} {'peak RSS':>9} {'delta':>7} {'end RSS':>8} {'delta':>7} "
              f"{'anon':>7} {'file':>7} {'time':>7}  goal (peak delta)")
    print(header)
    print("-" * len(header))
    for name, r in rows:
        delta = r["peak_mb"] - base
        goal = "" if name.startswith("baseline") else (
            f"< {GOAL_MB:.0f} MB {'ok' if delta < GOAL_MB else 'MISSED'}")
        print(f"{name:<42} {r['peak_mb']:>7.0f}MB {delta:>5.0f}MB {r['end_mb']:>6.0f}MB "
              f"{r['end_mb'] - base_end:>5.0f}MB {r['anon_mb']:>5.0f}MB {r['file_mb']:>5.0f}MB "
              f"{r['seconds']:>6.2f}s  {goal}")
    print("peak = getrusage maxrss (the baseline's peak is set while importing torch); end = VmRSS "
          "after the reads, split into anon (heap) and file (touched pages of the memory-mapped "
          "shard: reclaimable page cache); deltas are against the baseline process")
    return 0


if __name__ == "__main__":
    sys.exit(main())
