"""The per-rank costs docs/scaling.md builds on, measured here, and what they add up to at scale.

    python bench/bench_scaling.py [--dir /tmp] [--model gpt2] [--storage-gbps 2.0] [--gpu-mtbf-h 50000]

Measured on this machine (medians; the machine's noise is in them):
- heartbeat write: one rank's ``heartbeat/rankR.json`` (atomic rewrite), per step per rank;
- heartbeat read: the supervisor reading 8 ranks' files (one node), per monitor interval;
- checkpoint save: ``torch.save`` of the model + AdamW state of ``--model`` into a file + fsync,
  beside a raw write + fsync of the same number of bytes (the disk's floor);
- CRC pass: ``check_zip_crc`` of that file (what validation and the worker's resume read first);
- import torch: a fresh interpreter's ``import torch`` (every relaunched rank pays it).

Then, for 8, 64 and 512 GPUs (8 per node, data parallel: every rank holds the whole model), what a
failure costs and how often one comes, from those numbers and two stated assumptions: the shared
storage's aggregate read bandwidth (``--storage-gbps``) and a per-GPU mean time between failures
(``--gpu-mtbf-h``; 50,000 h is about what large published training runs report).
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def median_seconds(action, repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        action()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def heartbeat_costs(directory: Path) -> tuple[float, float]:
    from shared.heartbeat import Heartbeat, read_heartbeat, write_heartbeat

    beats = [Heartbeat.from_dict({"rank": r, "world_size": 64, "pid": 1000 + r, "time": time.time(), "step": 1234,
                                  "phase": "train", "loss": 3.21, "tokens_per_s": 1.2e6, "max_steps": 19073,
                                  "last_checkpoint": "model_01000.pt", "hostname": "node-a",
                                  "compute_s": [0.31] * 20}) for r in range(8)]
    paths = [directory / f"rank{r}.json" for r in range(8)]
    write = median_seconds(lambda: write_heartbeat(paths[0], beats[0]), 200)
    for path, beat in zip(paths, beats):
        write_heartbeat(path, beat)
    read = median_seconds(lambda: [read_heartbeat(p) for p in paths], 200)
    return write, read


def training_state(model: str) -> dict:
    import torch

    from worker.model import GPT, build_config

    gpt = GPT(build_config(model))
    optimizer = gpt.configure_optimizers(0.1, 6e-4, "cpu")
    for p in gpt.parameters():  # AdamW's moments exist after a first step
        p.grad = torch.zeros_like(p)
    optimizer.step()
    return {"model": gpt.state_dict(), "optimizer": optimizer.state_dict()}


def save_costs(directory: Path, model: str) -> tuple[int, float, float, float]:
    import numpy as np
    import torch

    from shared.checkpoint_crc import check_zip_crc

    state = training_state(model)
    path = directory / "state.pt"

    def save() -> None:
        with open(path, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())

    save_s = median_seconds(save, 3)
    size = path.stat().st_size
    raw = np.ones(size, dtype=np.uint8)

    def raw_write() -> None:
        with open(directory / "raw.bin", "wb") as handle:
            handle.write(raw.data)
            handle.flush()
            os.fsync(handle.fileno())

    raw_s = median_seconds(raw_write, 3)
    crc_s = median_seconds(lambda: check_zip_crc(path), 3)
    for name in ("state.pt", "raw.bin"):
        (directory / name).unlink()
    return size, save_s, raw_s, crc_s


def import_torch_seconds() -> float:
    return median_seconds(lambda: subprocess.run([sys.executable, "-c", "import torch"], check=True), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default=None, help="where to write the test files (default: a temp dir)")
    parser.add_argument("--model", default="gpt2", help="model preset whose state is saved (default: gpt2, 124M)")
    parser.add_argument("--storage-gbps", type=float, default=2.0, help="assumed aggregate shared-storage read GB/s")
    parser.add_argument("--gpu-mtbf-h", type=float, default=50_000.0, help="assumed per-GPU mean time between failures")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        directory = Path(tmp)
        hb_write, hb_read8 = heartbeat_costs(directory)
        size, save_s, raw_s, crc_s = save_costs(directory, args.model)
    torch_s = import_torch_seconds()
    gb = size / 1e9
    print(f"measured on {os.uname().nodename} ({os.cpu_count()} cores), {time.strftime('%Y-%m-%d')}")
    print(f"  heartbeat write (1 rank, per step)      {hb_write * 1e6:8.0f} us")
    print(f"  heartbeat read (8 ranks, per poll)      {hb_read8 * 1e6:8.0f} us")
    print(f"  checkpoint of {args.model:<6} model+AdamW   {gb:8.2f} GB")
    print(f"  torch.save + fsync                      {save_s:8.2f} s  ({gb / save_s:.2f} GB/s)")
    print(f"  raw write + fsync, same bytes           {raw_s:8.2f} s  ({gb / raw_s:.2f} GB/s)")
    print(f"  zip CRC pass                            {crc_s:8.2f} s  ({gb / crc_s:.2f} GB/s)")
    print(f"  import torch (fresh interpreter)        {torch_s:8.2f} s")
    print()
    print(f"at scale (8 GPUs per node, every rank loads the checkpoint from shared storage at "
          f"{args.storage_gbps:g} GB/s aggregate, per-GPU MTBF {args.gpu_mtbf_h:,.0f} h):")
    print(f"  {'GPUs':>5} {'nodes':>5} {'hb writes/s':>11} {'restart load':>12} {'job MTBF':>9} "
          f"{'ckpt every':>10} {'lost/failure':>12} {'goodput':>7}")
    step_s = 1.0  # a training step of about a second (tokens/step fixed, more GPUs = shorter steps)
    for gpus in (8, 64, 512):
        nodes = gpus // 8
        load_s = gpus * gb / args.storage_gbps  # every rank reads the whole file
        restart_s = torch_s + crc_s + load_s + 10.0  # + ~10 s rendezvous/torchrun start/first step
        mtbf_s = args.gpu_mtbf_h * 3600 / gpus
        interval_s = math.sqrt(2 * save_s * mtbf_s)  # Young's optimal checkpoint interval
        lost_s = restart_s + interval_s / 2 + 30.0  # + detection (hang timeout at worst; crash ~1 s)
        overhead = save_s / interval_s + lost_s / mtbf_s
        print(f"  {gpus:>5} {nodes:>5} {gpus / step_s:>11.0f} {load_s:>10.1f} s {mtbf_s / 3600:>7.0f} h "
              f"{interval_s / 60:>7.0f} min {lost_s / 60:>9.1f} min {1 - overhead:>7.1%}")


if __name__ == "__main__":
    main()
