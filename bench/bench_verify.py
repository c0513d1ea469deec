"""What does validating a checkpoint cost, next to its floors?

    python bench/bench_verify.py [--n-layer 6 --n-embd 384] [--repeat 3] [--dir /tmp]

Builds one real checkpoint (tests/checkpoint_factory.py: model + stepped AdamW, ~364 MB with the
defaults) in a temporary directory and times, warm page cache (the file was just written and read
once before timing; nothing is dropped, so these are not cold-disk numbers):

- raw read        read the whole file sequentially in 8 MB chunks: the floor for the CRC pass
- crc32 in memory zlib.crc32 over the bytes already in memory: the compute part of the CRC pass
- zip-crc         shared.checkpoint_crc.check_zip_crc (what runs before every restart)
- import torch    a bare ``python -c "import torch"`` child: the floor for any probe
- load-probe      the probe child (import torch + torch.load(weights_only, mmap) + checks)
- load-probe deep the same with --deep (touches every tensor)
- validate        validate_checkpoint end to end (file, size, zip-crc, probe)

Prints a table: median and min seconds over --repeat runs, and MB/s where it means something.
"""
from __future__ import annotations

import argparse
import functools
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared.checkpoint_crc import check_zip_crc
from shared.checkpoint_validation import run_probe, validate_checkpoint  # noqa: E402

CHUNK = 8 * 1024 * 1024


def raw_read(path: Path) -> None:
    with open(path, "rb", buffering=0) as handle:
        while handle.read(CHUNK):
            pass


def crc_in_memory(data: bytes) -> None:
    view = memoryview(data)
    crc = 0
    for start in range(0, len(view), CHUNK):
        crc = zlib.crc32(view[start:start + CHUNK], crc)


def bare_import_torch() -> None:
    subprocess.run([sys.executable, "-c", "import torch"], check=True)


def probe(path: Path, deep: bool) -> None:
    outcome = run_probe(path, deep=deep, size_bytes=path.stat().st_size, timeout=600)
    if outcome.verdict is None or not outcome.verdict["ok"]:
        raise SystemExit(f"probe failed on the benchmark file: {outcome.error or outcome.verdict['reason']}")


def validate(path: Path) -> None:
    result = validate_checkpoint(path, probe_timeout=600)
    if not result.ok:
        raise SystemExit(f"validation failed on the benchmark file: {result.reason}")


def crc_check(path: Path) -> None:
    ok, detail = check_zip_crc(path)
    if not ok:
        raise SystemExit(f"CRC check failed on the benchmark file: {detail}")


def timed(fn: Callable[[], None], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-layer", type=int, default=6)
    parser.add_argument("--n-embd", type=int, default=384)
    parser.add_argument("--n-head", type=int, default=6)
    parser.add_argument("--block-size", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where to build the temporary checkpoint")
    args = parser.parse_args()

    from tests.checkpoint_factory import make_checkpoint  # imports torch: only here

    config = {"block_size": args.block_size, "vocab_size": 50304, "n_layer": args.n_layer,
              "n_head": args.n_head, "n_embd": args.n_embd, "dropout": 0.0}
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench_verify_") as tmp:
        path = Path(tmp) / "model_00100.pt"
        t0 = time.perf_counter()
        make_checkpoint(path, 100, config)
        size = path.stat().st_size
        print(f"checkpoint: {path.name} {size / 1e6:.1f} MB (n_layer {args.n_layer}, n_embd {args.n_embd}), "
              f"built in {time.perf_counter() - t0:.1f}s; python {sys.version.split()[0]}, "
              f"{os.cpu_count()} CPUs; warm page cache (nothing dropped)")
        raw_read(path)  # warm the cache so every row below reads from memory
        data = path.read_bytes()

        rows: list[tuple[str, list[float], bool]] = [
            ("raw read (8 MB chunks)", timed(lambda: raw_read(path), args.repeat), True),
            ("crc32 in memory (zlib)", timed(functools.partial(crc_in_memory, data), args.repeat), True),
            ("zip-crc check", timed(lambda: crc_check(path), args.repeat), True),
            ("python -c 'import torch'", timed(bare_import_torch, args.repeat), False),
            ("load-probe (child)", timed(lambda: probe(path, False), args.repeat), False),
            ("load-probe --deep (child)", timed(lambda: probe(path, True), args.repeat), True),
            ("validate_checkpoint", timed(lambda: validate(path), args.repeat), False),
        ]
        del data

    print(f"\n{'what':<28}{'median s':>10}{'min s':>10}{'MB/s':>10}")
    for name, times, throughput in rows:
        median = statistics.median(times)
        rate = f"{size / 1e6 / median:,.0f}" if throughput else "-"
        print(f"{name:<28}{median:>10.3f}{min(times):>10.3f}{rate:>10}")


if __name__ == "__main__":
    main()
