"""One trainer per run directory: rank 0 holds ``worker.lock`` (flock) for its whole life.

Two trainers writing one directory take turns overwriting ``model_N.pt``, flip the latest link
between them and interleave ``metrics.jsonl``. The lock is taken before this worker writes anything
(not even a heartbeat, which would overwrite the running trainer's), and its verdict is broadcast
so every rank of a refused launch exits 8 together. The holder's pid is written into the file so
the refusal (and the supervisor) can name it. The kernel drops the lock when the process dies, so
a crashed worker never leaves a stale lock behind.
"""
from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager

from shared.exit_codes import WorkerExit
from shared.run_dir import RunDir
from worker.errors import WorkerError
from worker.runtime.distributed import Distributed


@contextmanager
def hold_worker_lock(run_dir: RunDir, distributed: Distributed) -> Iterator[None]:
    handle = None
    refusal: str | None = None
    if distributed.master:
        run_dir.root.mkdir(parents=True, exist_ok=True)
        handle = open(run_dir.worker_lock, "a+", encoding="utf-8")  # noqa: SIM115 - held for the whole run
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            handle = None
            refusal = (f"run directory {run_dir.root} is in use by another trainer (pid {holder}); "
                       "stop it first, or use another --log_dir")
        else:
            handle.truncate(0)
            handle.write(f"{os.getpid()}\n")
            handle.flush()
    refusal = distributed.broadcast_from_master(refusal)
    if refusal is not None:
        raise WorkerError(refusal, WorkerExit.RUN_DIR_BUSY)
    try:
        yield
    finally:
        if handle is not None:
            handle.close()  # releases the flock
