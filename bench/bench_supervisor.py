"""Benchmark ``gpt2sup run``: restart latency against its floor, detection, supervisor CPU, status.

    python bench/bench_supervisor.py [--crashes 3] [--monitor-interval 2.0] [--hang-timeout 10]
                                     [--cpu-seconds 10] [--compile] [--no-hang] [--nproc 2]

One supervised CPU run of the tiny model (``--nproc`` processes, default 2, ``--backoff-initial
0``) has its last rank SIGKILLed ``--crashes`` times. Before each crash the floor of a restart is
measured with the run paused (SIGSTOP of the supervisor and its tree, so nothing of ours competes
for the CPU): torchrun's start (its launch to the moment the last of its ``--nproc`` workers runs
Python; they import nothing), ``python -c 'import torch'``, ``torch.load`` of the newest
checkpoint. In the same pause the DDP floor replaces the import with what a bare DDP trainer
process cannot avoid: one ``python -c`` that imports torch,
starts a gloo process group of 1, wraps an ``nn.Linear`` in DDP (whose constructor imports
torch._dynamo) and destroys the group. With 2 processes the worker uses DDP and the DDP floor is
the fair one; with ``--nproc 1`` it does not (a group of one is not wrapped) and the plain floor
is. Rounds interleave, so a change in the machine's load hits both sides; medians are reported.
Each restart's phases come from its ``restart_breakdown`` event (events.jsonl), the restart
latency from the kill to the first resumed step's heartbeat.

The default backoff (5 s for a first failure, counted from the end of the attempt so validation
overlaps it) is reported as what it would add to the median restart. Then: a hang (SIGSTOP of a
rank) in a second run with ``--hang-timeout``, the loader's seek at an early and a late position,
``gpt2sup status``, and with ``--compile`` the time to the first step of a ``--compile`` run's
first attempt vs its relaunch (the inductor cache lives in the run directory).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from supervisor import policy
from supervisor.attempts.restart_timing import PHASES

NPROC = 2  # the default of --nproc
FLOOR = ("torchrun start", "import torch", "checkpoint load")
DDP_PROCESS = "import torch + gloo group of 1 + DDP"
DDP_FLOOR = ("torchrun start", DDP_PROCESS, "checkpoint load")
# One process's whole life as a bare DDP trainer starts it: the DDP floor's middle part.
DDP_SCRIPT = (
    "import os, sys, torch, torch.distributed as dist\n"
    "os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=sys.argv[1])\n"
    "dist.init_process_group('gloo', rank=0, world_size=1)\n"
    "torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 4))\n"
    "dist.destroy_process_group()\n"
)


def worker_args(nproc: int) -> list[str]:
    return [
        "--model", "tiny", "--max_steps", "100000", "--checkpoint_interval", "5",
        "--eval_interval", "0", "--hellaswag_interval", "0", "--generate_interval", "0",
        "--micro_batch_size", "2", "--seq_len", "32", "--total_batch_size", str(2 * 32 * nproc),
    ]


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["OMP_NUM_THREADS"] = "1"
    e["PYTHONUNBUFFERED"] = "1"
    return e


def gpt2sup(*args: str) -> list[str]:
    return [sys.executable, "-c", "from supervisor.cli import main; main()", *args]


def events(log_dir: Path, name: str) -> list[dict]:
    path = log_dir / "events.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") == name:
            out.append(record)
    return out


def heartbeat(log_dir: Path, rank: int) -> dict | None:
    try:
        return json.loads((log_dir / "heartbeat" / f"rank{rank}.json").read_text())
    except (OSError, ValueError):
        return None


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, poll: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise SystemExit(f"bench: timed out waiting for {what}")


def wall(argv: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, cwd=ROOT, env=env(), capture_output=True, check=False)
    return time.perf_counter() - t0


def training_step_after(log_dir: Path, rank: int, after: float, min_step: int) -> dict | None:
    hb = heartbeat(log_dir, rank)
    if hb and hb.get("time", 0) > after and hb.get("phase") == "train" and hb.get("step", -1) >= min_step:
        return hb
    return None


def start_run(log_dir: Path, console: Path, *extra: str, nproc: int = NPROC, worker_flags: tuple[str, ...] = (),
              monitor_interval: float = 2.0) -> subprocess.Popen:
    return subprocess.Popen(
        gpt2sup("run", "--log-dir", str(log_dir), "--nproc-per-node", str(nproc),
                "--monitor-interval", str(monitor_interval), "--backoff-initial", "0", "--kill-grace", "3",
                "--startup-timeout", "600", *extra, "--", *worker_args(nproc), *worker_flags),
        cwd=ROOT, env=env(), stdout=open(console, "ab"), stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )


def stop_run(sup: subprocess.Popen) -> None:
    if sup.poll() is None:
        sup.send_signal(signal.SIGTERM)
        try:
            sup.wait(120)
        except subprocess.TimeoutExpired:
            sup.send_signal(signal.SIGTERM)
            sup.wait(60)


def run_tree(log_dir: Path, sup: subprocess.Popen) -> list[int]:
    try:
        state = json.loads((log_dir / "supervisor.json").read_text())
    except (OSError, ValueError):
        return [sup.pid]
    return [sup.pid, *[p["pid"] for p in state.get("processes", [])]]


def signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def newest_checkpoint(log_dir: Path) -> Path:
    return max((p for p in log_dir.glob("model_*.pt") if not p.is_symlink()), key=lambda p: p.name)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# torchrun's workers for the floor: each writes the wall time its interpreter got this far, then exits.
STAMP_SCRIPT = "import os, sys, time\nopen(os.path.join(sys.argv[1], os.environ['LOCAL_RANK']), 'w').write(repr(time.time()))\n"


def torchrun_start(nproc: int) -> float:
    """Launch of torchrun -> the last of its ``nproc`` workers running Python (what the restart's
    own ``torchrun_start`` phase spans; torchrun's teardown after the workers exit is not in it)."""
    with tempfile.TemporaryDirectory(prefix="bench_torchrun.") as work:
        script = Path(work) / "stamp.py"
        script.write_text(STAMP_SCRIPT)
        launched = time.time()
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                        str(nproc), str(script), work], cwd=ROOT, env=env(), capture_output=True, check=False)
        stamps = [float((Path(work) / str(rank)).read_text()) for rank in range(nproc)
                  if (Path(work) / str(rank)).exists()]
    return max(stamps) - launched if len(stamps) == nproc else float("nan")


def measure_floor(ckpt: Path, nproc: int) -> dict[str, float]:
    """Every part of both floors (FLOOR, DDP_FLOOR), each timed once."""
    load = subprocess.run(
        [sys.executable, "-c",
         ("import sys, time, torch; t = time.perf_counter(); "
          "torch.load(sys.argv[1], map_location='cpu', weights_only=True); print(time.perf_counter() - t)"),
         str(ckpt)],
        cwd=ROOT, env=env(), capture_output=True, text=True, check=False,
    )
    return {
        "torchrun start": torchrun_start(nproc),
        "import torch": wall([sys.executable, "-c", "import torch"]),
        DDP_PROCESS: wall([sys.executable, "-c", DDP_SCRIPT, str(free_port())]),
        "checkpoint load": float(load.stdout.strip().splitlines()[-1]) if load.returncode == 0 else float("nan"),
    }


def floor_of(parts: dict[str, float], names: tuple[str, ...] = FLOOR) -> float:
    return sum(parts[name] for name in names)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def crash_rounds(args: argparse.Namespace, tmp: Path, rows: list[tuple[str, str, str]]) -> Path:
    log_dir = tmp / "run"
    victim_rank = args.nproc - 1  # rank 1 of 2; with --nproc 1 the only rank
    sup = start_run(log_dir, tmp / "console.txt", "--hang-timeout", "120", nproc=args.nproc,
                    monitor_interval=args.monitor_interval)
    floors: list[dict[str, float]] = []  # every part of both floors, per round
    dynamo: list[float] = []  # not in the plain floor: DDP's constructor imports torch._dynamo
    restarts: list[float] = []
    detections: list[float] = []
    phases: list[dict[str, float]] = []
    try:
        wait_for(lambda: training_step_after(log_dir, victim_rank, 0, 6), 600, "training to start")
        proc = psutil.Process(sup.pid)
        c0, t0 = proc.cpu_times(), time.monotonic()
        time.sleep(args.cpu_seconds)
        c1, t1 = proc.cpu_times(), time.monotonic()
        cpu = (c1.user + c1.system - c0.user - c0.system) / (t1 - t0)
        rows.append(("supervisor CPU while watching", f"{100 * cpu:.2f}% of a core",
                     f"goal < 1%; monitor interval {args.monitor_interval:g}s, {args.cpu_seconds:g}s sample"))
        after = 0.0
        for round_number in range(args.crashes):
            # -- the floor, with the supervised run paused ------------------------------------
            wait_for(lambda after=after: training_step_after(log_dir, victim_rank, after, 0)
                     and len(list(log_dir.glob("model_*.pt"))) > 0, 600, "a checkpoint")
            tree = run_tree(log_dir, sup)
            signal_all(tree, signal.SIGSTOP)
            try:
                floors.append(measure_floor(newest_checkpoint(log_dir), args.nproc))
                dynamo.append(wall([sys.executable, "-c", "import torch._dynamo"]) - floors[-1]["import torch"])
            finally:
                signal_all(list(reversed(tree)), signal.SIGCONT)
            # -- a crash: SIGKILL the last rank ----------------------------------------------
            step_now = (heartbeat(log_dir, victim_rank) or {}).get("step", 0)
            wait_for(lambda s=step_now: training_step_after(log_dir, victim_rank, 0, s + 2), 300,
                     "steps after the pause")
            victim = heartbeat(log_dir, victim_rank)
            killed_at = time.time()
            os.kill(victim["pid"], signal.SIGKILL)
            crashed = wait_for(lambda n=round_number: events(log_dir, "crashed")[n:], 120, "the crashed event")[0]
            detections.append(crashed["time"] - killed_at)
            relaunch = wait_for(lambda n=round_number: events(log_dir, "launched")[n + 1:], 300, "the relaunch")[0]
            valid = [e for e in events(log_dir, "checkpoint_valid") if e.get("checkpoint") and e["time"] > killed_at]
            resume_step = valid[-1]["step"] if valid else -1
            resumed = wait_for(lambda r=relaunch, s=resume_step: training_step_after(log_dir, 0, r["time"], s + 1),
                               300, "the first resumed step")
            restarts.append(resumed["time"] - killed_at)
            breakdown = wait_for(lambda n=round_number: events(log_dir, "restart_breakdown")[n:], 120,
                                 "the restart_breakdown event")[0]
            phases.append(breakdown.get("phases", {}))
            after = time.time()
            floor_now, ddp_now = floor_of(floors[-1]), floor_of(floors[-1], DDP_FLOOR)
            print(f"round {round_number + 1}: restart {restarts[-1]:.2f}s, floor {floor_now:.2f}s "
                  f"({restarts[-1] / floor_now:.2f}x), DDP floor {ddp_now:.2f}s ({restarts[-1] / ddp_now:.2f}x); "
                  f"{breakdown['message']}", flush=True)
    finally:
        stop_run(sup)

    floor_parts = {name: median([f[name] for f in floors]) for name in floors[0]} if floors else {}
    floor = median([floor_of(f) for f in floors])
    ddp_floor = median([floor_of(f, DDP_FLOOR) for f in floors])
    restart = median(restarts)
    fair = "DDP floor" if args.nproc > 1 else "floor"  # the worker wraps its model in DDP only with 2+ ranks
    rows.append(("crash detection (SIGKILL -> crashed event)", f"{median(detections):.2f}s",
                 f"median of {len(detections)}; rank death seen at once (pidfd), torchrun cut after its summary"))
    rows.append(("restart latency (SIGKILL -> first resumed step)", f"{restart:.2f}s",
                 f"median of {len(restarts)}: {', '.join(f'{r:.2f}' for r in restarts)}; backoff 0"))
    rows.append(("restart floor (measured alone, same rounds)", f"{floor:.2f}s",
                 (f"median of {len(floors)}: {', '.join(f'{floor_of(f):.2f}' for f in floors)}; "
                  f"{' + '.join(FLOOR)}")))
    rows.append(("restart DDP floor (same rounds)", f"{ddp_floor:.2f}s",
                 (f"median of {len(floors)}: {', '.join(f'{floor_of(f, DDP_FLOOR):.2f}' for f in floors)}; "
                  f"{' + '.join(DDP_FLOOR)}")))
    for name, value in floor_parts.items():
        rows.append((f"  floor: {name}", f"{value:.3f}s", "median"))
    rows.append(("RESTART / FLOOR", f"{restart / floor:.2f}x",
                 "goal <= 1.2x" + (" (the fair floor: no DDP with 1 process)" if fair == "floor" else "")))
    rows.append(("RESTART / DDP FLOOR", f"{restart / ddp_floor:.2f}x",
                 "goal <= 1.2x" + (" (the fair floor: the worker uses DDP)" if fair == "DDP floor" else
                                   " (not the fair floor: no DDP with 1 process)")))
    rows.append(("  not in the floor: import torch._dynamo after torch", f"{median(dynamo):.2f}s",
                 "DDP's constructor imports it (in the DDP floor); the worker's optimizer does not"))
    rows.append(("  per-round ratio to the floor", ", ".join(f"{r / floor_of(f):.2f}" for r, f in zip(restarts, floors)),
                 ""))
    rows.append(("  per-round ratio to the DDP floor",
                 ", ".join(f"{r / floor_of(f, DDP_FLOOR):.2f}" for r, f in zip(restarts, floors)), ""))
    rows.append(("restart breakdown (restart_breakdown events, median)", "", ""))
    for phase in (*PHASES, "total"):
        values = [p[phase] for p in phases if phase in p]
        if values:
            rows.append((f"  {phase}", f"{median(values):.3f}s", ", ".join(f"{v:.2f}" for v in values)))
    validation = median([p["validation"] for p in phases if "validation" in p])
    delay = policy.backoff_delay(1, policy.BackoffConfig())
    cost = policy.remaining_backoff(delay, validation)
    rows.append(("default backoff's cost (first failure)", f"+{cost:.2f}s",
                 (f"{delay:g}s counted from the failure, {validation:.2f}s of it spent validating; "
                  f"restart would be {restart + cost:.2f}s")))
    return log_dir


def hang_round(args: argparse.Namespace, tmp: Path, rows: list[tuple[str, str, str]]) -> None:
    log_dir = tmp / "hang"
    sup = start_run(log_dir, tmp / "hang_console.txt", "--hang-timeout", str(args.hang_timeout), nproc=args.nproc,
                    monitor_interval=args.monitor_interval)
    victim_rank = args.nproc - 1
    try:
        wait_for(lambda: training_step_after(log_dir, victim_rank, 0, 3), 600, "training to start")
        victim = heartbeat(log_dir, victim_rank)
        stopped_at = time.time()
        os.kill(victim["pid"], signal.SIGSTOP)
        hung = wait_for(lambda: events(log_dir, "hung"), 120 + args.hang_timeout, "the hung event")[0]
        last_beat = max(heartbeat(log_dir, r)["time"] for r in range(args.nproc))
        rows.append(("hang detection (SIGSTOP -> hung event)", f"{hung['time'] - stopped_at:.2f}s",
                     (f"configured timeout {args.hang_timeout:g}s; {hung['time'] - last_beat:.2f}s after the "
                      "last heartbeat")))
        evidence = wait_for(lambda: events(log_dir, "evidence_captured"), 120, "evidence")[0]
        rows.append(("hang evidence capture", f"{evidence['time'] - hung['time']:.2f}s",
                     f"{len(evidence.get('files', []))} files (py-spy, /proc, faulthandler)"))
    finally:
        stop_run(sup)


def loader_seek(rows: list[tuple[str, str, str]]) -> None:
    """ShardedTokenLoader.load_state_dict at the start vs near the end of a 50M-token shard."""
    import numpy as np

    from worker.data.shards import ShardedTokenLoader

    with tempfile.TemporaryDirectory(prefix="bench_seek_") as tmp:
        tokens = np.lib.format.open_memmap(Path(tmp) / "d_train_000000.npy", mode="w+", dtype=np.uint16,
                                           shape=(50_000_000,))
        tokens[:] = 7
        del tokens
        np.save(Path(tmp) / "d_val_000000.npy", np.zeros(100_000, dtype=np.uint16))
        loader = ShardedTokenLoader(tmp, "train", 8, 1024, 0, 1, 1)
        times = {}
        for name, position in (("early", 8192), ("late", 49_000_000)):
            samples = []
            for _ in range(5):
                t0 = time.perf_counter()
                loader.load_state_dict({"shard_index": 0, "position": position})
                loader.next_batch()
                samples.append(time.perf_counter() - t0)
            times[name] = min(samples)
    rows.append(("loader seek + first batch, early position", f"{times['early'] * 1e3:.3f}ms",
                 "token 8,192 of a 50M-token shard (best of 5)"))
    rows.append(("loader seek + first batch, late position", f"{times['late'] * 1e3:.3f}ms",
                 f"token 49,000,000 ({times['late'] / times['early']:.2f}x the early one)"))


def compile_rounds(tmp: Path, rows: list[tuple[str, str, str]], nproc: int) -> None:
    """--compile: time to the first step of the first attempt vs the relaunch after a crash."""
    log_dir = tmp / "compile"
    sup = start_run(log_dir, tmp / "compile_console.txt", "--hang-timeout", "600", nproc=nproc,
                    worker_flags=("--compile",))
    firsts: list[float] = []
    try:
        def first_step_s() -> float | None:
            beats = [heartbeat(log_dir, r) for r in range(nproc)]
            marks = [(b or {}).get("startup") or {} for b in beats]
            if not all("first_step_done" in m and "process_start" in m for m in marks):
                return None
            return max(m["first_step_done"] for m in marks) - min(m["process_start"] for m in marks)

        firsts.append(wait_for(first_step_s, 1200, "the first compiled step", poll=0.5))
        old = {heartbeat(log_dir, r)["pid"] for r in range(nproc)}

        def relaunched() -> bool:
            beats = [heartbeat(log_dir, r) for r in range(nproc)]
            return all(b is not None and b["pid"] not in old for b in beats)

        os.kill(heartbeat(log_dir, nproc - 1)["pid"], signal.SIGKILL)
        firsts.append(wait_for(lambda: relaunched() and first_step_s(), 1200,
                               "the relaunch's first compiled step", poll=0.5))
    finally:
        stop_run(sup)
    cache = log_dir / "compile_cache"
    size = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file()) if cache.exists() else 0
    rows.append(("--compile: process start -> first step, attempt 1", f"{firsts[0]:.2f}s", "empty compile cache"))
    rows.append(("--compile: process start -> first step, attempt 2", f"{firsts[1]:.2f}s",
                 f"cache {cache.name}/ in the run directory, {size / 1e6:.1f} MB"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crashes", type=int, default=3)
    parser.add_argument("--monitor-interval", type=float, default=2.0)
    parser.add_argument("--hang-timeout", type=float, default=10.0)
    parser.add_argument("--cpu-seconds", type=float, default=10.0)
    parser.add_argument("--no-hang", action="store_true", help="skip the hang round")
    parser.add_argument("--compile", action="store_true", help="also time --compile's first vs later attempt")
    parser.add_argument("--nproc", type=int, choices=(1, 2), default=NPROC,
                        help="worker processes (1: no DDP, the plain floor is the fair one; default: %(default)s)")
    args = parser.parse_args()

    rows: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory(prefix="bench_sup_") as tmp_name:
        tmp = Path(tmp_name)
        log_dir = crash_rounds(args, tmp, rows)
        if not args.no_hang:
            hang_round(args, tmp, rows)
        loader_seek(rows)
        t0 = time.perf_counter()
        for _ in range(5):
            subprocess.run(gpt2sup("status", "--log-dir", str(log_dir)), cwd=ROOT, env=env(), capture_output=True,
                           check=False)
        rows.append(("gpt2sup status", f"{(time.perf_counter() - t0) / 5:.3f}s", "mean of 5"))
        if args.compile:
            compile_rounds(tmp, rows, args.nproc)

    width = max(len(r[0]) for r in rows)
    vwidth = max(len(r[1]) for r in rows)
    print(f"{'measure':<{width}}  {'value':>{vwidth}}  note")
    print("-" * (width + vwidth + 40))
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>{vwidth}}  {note}")


if __name__ == "__main__":
    main()
