"""What does validating checkpoints cost, next to its floors, for one file and for N?

    python bench/bench_verify.py [--files 3] [--n-layer 6 --n-embd 384] [--repeat 3] [--dir /tmp]
                                 [--compare-with OTHER_CHECKOUT]

Builds N real checkpoints (tests/checkpoint_factory.py: model + stepped AdamW, ~364 MB each with
the defaults) in a temporary directory and times, warm page cache (the files were just written
and read once before timing; nothing is dropped, so these are not cold-disk numbers):

- raw read           read one file sequentially in 8 MB chunks: the floor for its CRC pass
- zip-crc            shared.checkpoint_crc.check_zip_crc on one file
- import torch       a bare ``python -c "import torch"`` child: the floor for any probe
- probe child start  import torch + the worker's model code + the first AdamW (compiler stack)
- validate 1 file    validate_checkpoint end to end (file, size, zip-crc, probe with restore)
- N files, a child each   N x validate_checkpoint: one probe child per file (the old design)
- N files, one child      validate_many: CRCs in threads, one probe child for all (``verify``)
- gpt2sup verify N files  the command in a subprocess, as a user runs it
- --compare-with: ``python -m supervisor.cli verify`` of the same files run from another
  checkout (e.g. the code before this change), for a before/after row

Prints a table: median and min seconds over --repeat runs, and MB/s where it means something.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared.checkpoint_crc import check_zip_crc
from supervisor.checkpoints.checkpoint_validation import (
    ProbeSession,
    validate_checkpoint,
    validate_many,
)

CHUNK = 8 * 1024 * 1024
ROOT = Path(__file__).resolve().parent.parent


def raw_read(path: Path) -> None:
    with open(path, "rb", buffering=0) as handle:
        while handle.read(CHUNK):
            pass


def bare_import_torch() -> None:
    subprocess.run([sys.executable, "-c", "import torch"], check=True)


def probe_child_start() -> None:
    with ProbeSession() as session:
        session.start()
        session._await_ready()  # the start alone, no file
        if session.import_seconds is None:
            raise SystemExit("the probe child did not start")


def must_pass(results: list) -> None:
    bad = [r for r in results if not r.ok]
    if bad:
        raise SystemExit(f"validation failed on a benchmark file: {bad[0].reason}")


def crc_check(path: Path) -> None:
    ok, detail = check_zip_crc(path)
    if not ok:
        raise SystemExit(f"CRC check failed on the benchmark file: {detail}")


def verify_command(paths: list[Path], checkout: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    completed = subprocess.run([sys.executable, "-m", "supervisor.cli", "verify", *map(str, paths)],
                               cwd=checkout, env=env, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise SystemExit(f"verify failed ({checkout}): {completed.stdout[-300:]}{completed.stderr[-300:]}")


def timed(fn: Callable[[], None], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def make_checkpoint(path: Path, step: int, config: dict) -> Path:
    """A real checkpoint as the worker writes it: its GPT, AdamW after one step, its checkpoint dict.

    Built from the worker's own modules (not the test factory), so the bench measures the files
    gpt2sup really validates. Imports torch: only called from main.
    """
    import torch

    from worker.checkpointing.train_state import TrainProgress, compose_checkpoint
    from worker.model import GPT, GPTConfig

    class _LoaderAtStart:
        def state_dict(self) -> dict[str, int]:
            return {"shard_index": 0, "position": 0}

    torch.manual_seed(0)
    model = GPT(GPTConfig.from_dict(config))
    optimizer = model.configure_optimizers(0.1, 6e-4, "cpu")
    for parameter in model.parameters():
        parameter.grad = torch.zeros_like(parameter)
    optimizer.step()  # AdamW creates its moments: the file holds weights + two moments, as in a run
    state = compose_checkpoint(model, optimizer, TrainProgress(step=step), _LoaderAtStart(), "cpu", {})
    torch.save(state, str(path))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=3, help="N: how many checkpoints one verify call checks")
    parser.add_argument("--n-layer", type=int, default=6)
    parser.add_argument("--n-embd", type=int, default=384)
    parser.add_argument("--n-head", type=int, default=6)
    parser.add_argument("--block-size", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where to build the temporary checkpoints")
    parser.add_argument("--compare-with", type=Path, default=None,
                        help="another checkout of gpt2sup whose `verify` to time on the same files")
    args = parser.parse_args()

    config = {"block_size": args.block_size, "vocab_size": 50304, "n_layer": args.n_layer,
              "n_head": args.n_head, "n_embd": args.n_embd, "dropout": 0.0}
    n = args.files
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench_verify_") as tmp:
        t0 = time.perf_counter()
        paths = [make_checkpoint(Path(tmp) / f"model_{100 * (i + 1):05d}.pt", 100 * (i + 1), config) for i in range(n)]
        size = paths[0].stat().st_size
        print(f"{n} checkpoint(s) of {size / 1e6:.1f} MB (n_layer {args.n_layer}, n_embd {args.n_embd}), "
              f"built in {time.perf_counter() - t0:.1f}s; python {sys.version.split()[0]}, "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; warm page cache (nothing dropped)")
        for path in paths:
            raw_read(path)  # warm the cache so every row below reads from memory

        rows: list[tuple[str, list[float], int | None]] = [
            ("raw read, 1 file", timed(lambda: raw_read(paths[0]), args.repeat), size),
            ("zip-crc, 1 file", timed(lambda: crc_check(paths[0]), args.repeat), size),
            ("python -c 'import torch'", timed(bare_import_torch, args.repeat), None),
            ("probe child start", timed(probe_child_start, args.repeat), None),
            ("validate 1 file", timed(lambda: must_pass([validate_checkpoint(paths[0])]), args.repeat), size),
            (f"{n} files, a child each", timed(lambda: must_pass([validate_checkpoint(p) for p in paths]),
                                               args.repeat), n * size),
            (f"{n} files, one child", timed(lambda: must_pass(validate_many(paths)), args.repeat), n * size),
            (f"gpt2sup verify {n} files", timed(lambda: verify_command(paths, ROOT), args.repeat), n * size),
        ]
        if args.compare_with is not None:
            rows.append((f"verify {n} files, other checkout",
                         timed(lambda: verify_command(paths, args.compare_with.resolve()), args.repeat), n * size))

    print(f"\n{'what':<34}{'median s':>10}{'min s':>10}{'MB/s':>10}")
    for name, times, nbytes in rows:
        median = statistics.median(times)
        rate = f"{nbytes / 1e6 / median:,.0f}" if nbytes else "-"
        print(f"{name:<34}{median:>10.3f}{min(times):>10.3f}{rate:>10}")


if __name__ == "__main__":
    main()
