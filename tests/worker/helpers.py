"""Machinery for the worker's end-to-end tests: real processes, real files, real signals.

Every worker run here is a real subprocess (``python -m worker.train_gpt2``, or ``python -m
torch.distributed.run --standalone --nproc_per_node=2 -m worker.train_gpt2``) started in its own
session, so a test can SIGKILL exactly that process tree (torchrun *and* its ranks) and teardown can reap anything a failed
test left behind. Uninterrupted reference runs are expensive, so each is made once per session and
shared by every test that compares against it.

The built-in corpus is tokenized once per session into a private cache directory
(``GPT2SUP_CACHE_DIR``), so these tests never touch the user's cache.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

REPO_ROOT = Path(__file__).resolve().parents[2]

N_STEPS = 24
CHECKPOINT_INTERVAL = 8
# Small and fast: one step is a fraction of a second on a 2-core CPU. 128 tokens per step is
# 2 x 32 x (2 processes x 1 micro-step) or (1 process x 2 micro-steps): the same total batch.
FAST_ARGS = [
    "--model", "tiny", "--micro_batch_size", "2", "--seq_len", "32", "--total_batch_size", "128",
    "--generate_interval", "0", "--hellaswag_interval", "0",
    "--eval_interval", str(CHECKPOINT_INTERVAL), "--val_steps", "4",
    "--checkpoint_interval", str(CHECKPOINT_INTERVAL),
]
# The run every resume test compares against: dropout > 0 so RNG restoration matters.
RESUME_ARGS = [*FAST_ARGS, "--max_steps", str(N_STEPS), "--dropout", "0.1"]
FINAL_CHECKPOINT = f"model_{N_STEPS - 1:05d}.pt"

PROCESS_TIMEOUT_S = 300.0


# ----------------------------------------------------------------------------- small readers


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, poll: float = 0.01) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(poll)


def read_heartbeat(log_dir: Path, rank: int = 0) -> dict[str, Any] | None:
    try:
        data = json.loads((Path(log_dir) / "heartbeat" / f"rank{rank}.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_metrics(log_dir: Path) -> list[dict[str, Any]]:
    path = Path(log_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def step_records(log_dir: Path) -> list[tuple[int, float, float, float]]:
    """(step, loss, lr, grad norm) per step: everything in metrics.jsonl that is not a timing."""
    return [(m["step"], m["loss"], m["lr"], m["norm"]) for m in read_metrics(log_dir)]


def step_losses(log_dir: Path) -> list[tuple[int, float]]:
    return [(m["step"], m["loss"]) for m in read_metrics(log_dir)]


def checkpoint_steps(log_dir: Path) -> list[int]:
    from shared.run_dir import RunDir

    return [c.step for c in RunDir.at(log_dir).list_checkpoints()]


def staging_files(log_dir: Path) -> list[str]:
    return sorted(p.name for p in Path(log_dir).glob("*.tmp"))


def load_checkpoint(path: Path) -> dict[str, Any]:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def assert_trees_equal(left: Any, right: Any, where: str = "checkpoint") -> None:
    """Bitwise equality of two loaded checkpoints (or any nesting of dicts, lists and tensors)."""
    import torch

    if isinstance(left, torch.Tensor) or isinstance(right, torch.Tensor):
        assert isinstance(left, torch.Tensor) and isinstance(right, torch.Tensor), f"{where}: tensor vs non-tensor"
        assert left.dtype == right.dtype and left.shape == right.shape, (
            f"{where}: {left.dtype}{tuple(left.shape)} != {right.dtype}{tuple(right.shape)}")
        assert torch.equal(left, right), f"{where}: tensors differ"
    elif isinstance(left, dict):
        assert isinstance(right, dict), f"{where}: dict vs {type(right).__name__}"
        assert list(left.keys()) == list(right.keys()), f"{where}: keys differ: {list(left)} vs {list(right)}"
        for key in left:
            assert_trees_equal(left[key], right[key], f"{where}[{key!r}]")
    elif isinstance(left, (list, tuple)):
        assert isinstance(right, (list, tuple)) and len(left) == len(right), f"{where}: sequences differ"
        for index, (a, b) in enumerate(zip(left, right)):
            assert_trees_equal(a, b, f"{where}[{index}]")
    else:
        assert left == right, f"{where}: {left!r} != {right!r}"


# ----------------------------------------------------------------------------- processes


@dataclass
class WorkerLaunch:
    """One started worker (bare or torchrun); stdout/stderr go to files next to the run dir."""

    proc: subprocess.Popen
    log_dir: Path
    stdout_path: Path
    stderr_path: Path
    argv: list[str]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def output_tail(self, chars: int = 3000) -> str:
        return f"--- stdout ---\n{self.stdout()[-chars:]}\n--- stderr ---\n{self.stderr()[-chars:]}"

    def kill_tree(self, sig: int = signal.SIGKILL) -> None:
        """Signal the launched process and every descendant, like a node losing power.

        ``os.killpg`` on torchrun alone is not enough: torchrun starts each rank in a session of
        its own, so the ranks would survive their launcher (and, with gloo, happily finish).
        """
        try:
            root = psutil.Process(self.proc.pid)
            descendants = root.children(recursive=True)
        except psutil.NoSuchProcess:
            return
        for process in [root, *descendants]:
            try:
                process.send_signal(sig)
            except psutil.NoSuchProcess:
                pass

    def wait(self, timeout: float = PROCESS_TIMEOUT_S) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill_tree(signal.SIGKILL)
            self.proc.wait(10)
            raise AssertionError(f"worker did not exit within {timeout:.0f}s:\n{self.output_tail()}") from None


@dataclass
class WorkerLauncher:
    """Starts workers with a controlled environment and reaps stragglers after each test."""

    cache_dir: Path
    launched: list[WorkerLaunch] = field(default_factory=list)

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        # One thread everywhere: CPU float reductions depend on the thread count, and torchrun
        # would set 1 for its ranks anyway.
        env["OMP_NUM_THREADS"] = "1"
        env["PYTHONUNBUFFERED"] = "1"
        env["GPT2SUP_CACHE_DIR"] = str(self.cache_dir)
        for key in ("GPT2SUP_INJECT_CRASH_AT_STEP", "GPT2SUP_INJECT_CRASH_ONCE_FILE", "GPT2SUP_INJECT_TEARDOWN_HANG",
                    "GPT2SUP_TEARDOWN_LIMIT_S"):
            env.pop(key, None)
        env.update(extra or {})
        return env

    def start(self, log_dir: Path, args: list[str], *, nproc: int = 1,
              env: dict[str, str] | None = None, log_dir_flag: bool = True,
              output_dir: Path | None = None) -> WorkerLaunch:
        log_dir = Path(log_dir)
        log_dir.parent.mkdir(parents=True, exist_ok=True)
        if nproc == 1:
            argv = [sys.executable, "-m", "worker.train_gpt2"]
        else:
            argv = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    f"--nproc_per_node={nproc}", "-m", "worker.train_gpt2"]
        argv += (["--log_dir", str(log_dir)] if log_dir_flag else []) + list(args)
        # Output files live beside the run dir (or in ``output_dir``, e.g. off a disk a test fills),
        # so the run dir holds only what the worker writes.
        count = sum(1 for launch in self.launched if launch.log_dir == log_dir)
        output_dir = Path(output_dir) if output_dir is not None else log_dir.parent
        stdout_path = output_dir / f"{log_dir.name}.{count}.stdout"
        stderr_path = output_dir / f"{log_dir.name}.{count}.stderr"
        with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
            proc = subprocess.Popen(argv, cwd=REPO_ROOT, env=self.env(env), stdout=out, stderr=err,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        launch = WorkerLaunch(proc, log_dir, stdout_path, stderr_path, argv)
        self.launched.append(launch)
        return launch

    def run(self, log_dir: Path, args: list[str], *, nproc: int = 1, env: dict[str, str] | None = None,
            timeout: float = PROCESS_TIMEOUT_S) -> WorkerLaunch:
        launch = self.start(log_dir, args, nproc=nproc, env=env)
        launch.wait(timeout)
        return launch

    def cleanup(self) -> None:
        for launch in self.launched:
            if launch.alive():
                launch.kill_tree(signal.SIGKILL)
                try:
                    launch.proc.wait(10)
                except subprocess.TimeoutExpired:
                    pass
        self.launched = [launch for launch in self.launched if launch.alive()]


def run_ok(launcher: WorkerLauncher, log_dir: Path, args: list[str], *, nproc: int = 1) -> WorkerLaunch:
    """Run to completion and insist on exit 0 (showing the output if not)."""
    launch = launcher.run(log_dir, args, nproc=nproc)
    assert launch.proc.returncode == 0, f"worker exited {launch.proc.returncode}:\n{launch.output_tail()}"
    return launch


MB = 1024 * 1024


# ----------------------------------------------------------------------------- a small tmpfs


def fill_leaving_free(directory: Path, free_bytes: int) -> Path:
    """A ballast file that leaves about ``free_bytes`` free on ``directory``'s file system
    (0: fill it to the last byte, until the kernel says ENOSPC)."""
    ballast = directory / "ballast.bin"
    to_write = shutil.disk_usage(directory).free - free_bytes
    chunk = b"\0" * (4 * MB)
    with open(ballast, "wb", buffering=0) as handle:
        while to_write > 0 or free_bytes == 0:
            try:
                written = handle.write(chunk[: min(len(chunk), to_write)] if free_bytes else chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
            to_write -= written
    return ballast


# ----------------------------------------------------------------------------- fixtures
