"""Helpers for the end-to-end supervisor tests: start a real ``gpt2sup run``, wait, read its files.

One ``wait_for``, one way to start a supervised run; the uninterrupted reference run they are
compared with is the ``reference_checkpoint`` fixture in ``conftest.py``.
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil

from bench import disk_fill
from shared.atomic_io import write_json_atomic
from shared.supervisor_state import SupervisorState

REPO_ROOT = Path(__file__).resolve().parents[2]
NPROC = 2
MAX_STEPS = 12
FINAL_CHECKPOINT = f"model_{MAX_STEPS - 1:05d}.pt"
# Tiny and fast: one micro-batch per step on each of 2 processes.
WORKER_ARGS = [
    "--model", "tiny", "--max_steps", str(MAX_STEPS), "--checkpoint_interval", "4",
    "--eval_interval", "0", "--hellaswag_interval", "0", "--generate_interval", "0",
    "--micro_batch_size", "2", "--seq_len", "32", "--total_batch_size", str(2 * 32 * NPROC),
]


def one_process_worker_args() -> list[str]:
    """``WORKER_ARGS`` for a one-process run (``nproc=1``): the same batch per process, half the total."""
    args = list(WORKER_ARGS)
    args[args.index("--total_batch_size") + 1] = str(2 * 32)
    return args


# ``start_supervisor(log_dir, **ONE_PROCESS)``: a one-process run, compared with the
# ``reference_checkpoint_one_process`` fixture. For the scenarios where the number of ranks is
# not the point (a bad checkpoint, a full disk, a lost machine, a clock): one process less to
# start per attempt, about 3 CPU-s on the suite's 2 cores. The ones about several ranks (one
# killed or stopped while its peer waits, a crash naming its rank, every rank stopping at one
# step, stragglers, orphans) keep two.
ONE_PROCESS: dict[str, Any] = {"nproc": 1, "worker_args": one_process_worker_args()}


# Short timeouts so failures are found quickly, long enough that a loaded 2-core box does not
# produce false hangs.
FAST_SUPERVISOR_ARGS = [
    "--hang-timeout", "8", "--monitor-interval", "0.5", "--startup-timeout", "180",
    "--checkpoint-timeout", "60", "--backoff-initial", "0", "--kill-grace", "3",
]


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Same thread count for supervised and reference runs: CPU float sums depend on it."""
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    for key in ("GPT2SUP_INJECT_CRASH_AT_STEP", "GPT2SUP_INJECT_CRASH_ONCE_FILE", "GPT2SUP_INJECT_SLOW_RANK",
                "GPT2SUP_INJECT_TEARDOWN_ABORT", "GPT2SUP_INJECT_TEARDOWN_HANG", "GPT2SUP_TEARDOWN_LIMIT_S"):
        env.pop(key, None)
    env.update(extra or {})
    return env


def gpt2sup_argv(*args: str) -> list[str]:
    return [sys.executable, "-c", "from supervisor.cli import main; main()", *args]


def start_supervisor(
    log_dir: Path,
    *supervisor_args: str,
    nproc: int = NPROC,
    worker_args: list[str] | None = None,
    env: dict[str, str] | None = None,
    main_code: str | None = None,
) -> subprocess.Popen:
    """``gpt2sup run`` as a real process; its console output goes to ``<log_dir>.console``.

    ``main_code``: Python source run with ``-c`` in place of plain ``supervisor.cli.main`` (it reads
    the gpt2sup arguments from ``sys.argv[1:]``), e.g. ``shifted_clock.SUPERVISOR_MAIN``."""
    argv = gpt2sup_argv(
        "run", "--log-dir", str(log_dir), "--nproc-per-node", str(nproc),
        *FAST_SUPERVISOR_ARGS, *supervisor_args, "--", *(WORKER_ARGS if worker_args is None else worker_args),
    )
    if main_code is not None:
        argv[1:3] = ["-c", main_code]
    with open(f"{log_dir}.console", "ab") as console:
        return subprocess.Popen(argv, cwd=REPO_ROOT, env=child_env(env), stdout=console, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)


def console_text(log_dir: Path) -> str:
    try:
        return Path(f"{log_dir}.console").read_text(errors="replace")
    except OSError:
        return ""


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, poll: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def wait_exit(proc: subprocess.Popen, log_dir: Path, timeout: float = 300.0) -> int:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"supervisor did not exit in {timeout:.0f}s; console:\n{console_text(log_dir)[-3000:]}")


def read_events(log_dir: Path) -> list[dict[str, Any]]:
    path = Path(log_dir) / "events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def events_named(log_dir: Path, name: str) -> list[dict[str, Any]]:
    return [e for e in read_events(log_dir) if e.get("event") == name]


def heartbeat(log_dir: Path, rank: int) -> dict[str, Any] | None:
    try:
        return json.loads((Path(log_dir) / "heartbeat" / f"rank{rank}.json").read_text())
    except (OSError, ValueError):
        return None


def wait_for_step(log_dir: Path, step: int, timeout: float = 180.0, rank: int = 0, after: float = 0.0) -> dict:
    def ready():
        hb = heartbeat(log_dir, rank)
        return hb if hb and hb.get("time", 0) >= after and hb.get("step", -1) >= step and hb.get("phase") == "train" else None

    return wait_for(ready, timeout, f"rank {rank} to reach step {step}")


def supervisor_json(log_dir: Path) -> dict[str, Any]:
    return json.loads((Path(log_dir) / "supervisor.json").read_text())


def assert_same_weights(a: Path, b: Path) -> None:
    import torch

    left = torch.load(a, map_location="cpu", weights_only=True)["model"]
    right = torch.load(b, map_location="cpu", weights_only=True)["model"]
    assert left.keys() == right.keys()
    different = [k for k in left if not torch.equal(left[k], right[k])]
    assert not different, f"weights differ from the uninterrupted run in {different[:3]}"




@contextlib.contextmanager
def mounted_tmpfs(mount_point: Path, size: str) -> Iterator[Path]:
    """``bench.disk_fill.mounted_tmpfs`` (root only) that skips the test where mounting is refused."""
    import pytest

    try:
        mount = disk_fill.mounted_tmpfs(mount_point, size)
        mounted = mount.__enter__()
    except disk_fill.MountRefused as refused:
        pytest.skip(str(refused))
    try:
        yield mounted
    finally:
        mount.__exit__(None, None, None)


# `python -c NO_TORCH_MAIN <gpt2sup args>`: runs gpt2sup with any torch import made an error.
NO_TORCH_MAIN = """
import sys
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch imported by gpt2sup " + sys.argv[1])
        return None
sys.meta_path.insert(0, _NoTorch())
sys.argv = ["gpt2sup"] + sys.argv[1:]
from supervisor.cli import main
main()
"""


def write_heartbeat_as_of_its_time(path: Path, beat: Any) -> None:
    """``write_heartbeat``, with the file's mtime set to the beat's own ``time``: a beat written at
    that moment on a machine whose clocks agree (``status`` ages beats by the file's mtime)."""
    from shared.heartbeat import write_heartbeat

    write_heartbeat(path, beat)
    os.utime(path, (float(beat.time), float(beat.time)))


def write_supervisor_state(path: Path, state: SupervisorState) -> None:
    """Write ``supervisor.json`` as a supervisor would (the real one goes through its journal)."""
    state.updated_at = time.time()
    write_json_atomic(path, state.to_dict())


def kill_process_tree(pid: int) -> None:
    """SIGKILL ``pid`` and every descendant. ``os.killpg`` is not enough for a torchrun: it starts
    each rank in a session of its own, so the ranks would outlive it (and a long run trains on)."""
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for process in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(tree, timeout=30)
