"""Wall-clock milestones of this worker process's start, for the supervisor's restart breakdown.

Each milestone is ``time.time()`` when it was first reached, kept in one process-wide dict that
every heartbeat carries as ``startup`` (``shared.heartbeat.Heartbeat.startup``):

    process_start      the process's own start (psutil create_time)
    imports_done       the worker's modules are imported (torch included): set-up begins
    rendezvous_done    the process group is up (init_process_group returned); == imports_done alone
    checkpoint_loaded  the resumed checkpoint is in memory (restore begins)
    loader_seek_start  model and optimizer state restored; the loader's position is next
    loader_positioned  the train loader stands at the checkpoint's data position
    restored           every piece of state is restored
    first_step_done    the first optimizer step of this process is done (its heartbeat is written)

A fresh start (nothing to resume) has no ``checkpoint_loaded`` / ``loader_positioned``. Marking is
a dict assignment; nothing here imports torch.

From the first step on, ``marks()`` also carries one diagnostic that is not a time:

    compiler_imported  whether ``torch._dynamo`` is imported in this process by now (a bool,
                       read at every call). Without ``--compile`` a 1-process run never imports
                       it (``worker.runtime.compiler_import``); with 2+ processes DDP's constructor does
                       (~2.5 s of a restart on a 2-core CPU).
"""
from __future__ import annotations

import os
import sys
import time

PROCESS_START = "process_start"
IMPORTS_DONE = "imports_done"
RENDEZVOUS_DONE = "rendezvous_done"
CHECKPOINT_LOADED = "checkpoint_loaded"
LOADER_SEEK_START = "loader_seek_start"
LOADER_POSITIONED = "loader_positioned"
RESTORED = "restored"
FIRST_STEP_DONE = "first_step_done"
COMPILER_IMPORTED = "compiler_imported"
MILESTONES = (PROCESS_START, IMPORTS_DONE, RENDEZVOUS_DONE, CHECKPOINT_LOADED, LOADER_SEEK_START, LOADER_POSITIONED,
              RESTORED, FIRST_STEP_DONE)

_marks: dict[str, float] = {}


def _process_start() -> float | None:
    try:
        import psutil

        return float(psutil.Process(os.getpid()).create_time())
    except Exception:  # noqa: BLE001 - a missing milestone is no reason to fail a start
        return None


def mark(name: str, when: float | None = None) -> None:
    """Record ``name`` the first time it is reached (later calls keep the first time)."""
    if name not in _marks:
        _marks[name] = time.time() if when is None else when
    if PROCESS_START not in _marks:
        start = _process_start()
        if start is not None:
            _marks[PROCESS_START] = start


def marks() -> dict[str, float | bool]:
    """A copy of the milestones reached so far, rounded to the millisecond (and, from the first
    step on, ``compiler_imported``: module docstring)."""
    out: dict[str, float | bool] = {name: round(_marks[name], 3) for name in MILESTONES if name in _marks}
    if FIRST_STEP_DONE in _marks:
        out[COMPILER_IMPORTED] = "torch._dynamo" in sys.modules
    return out


def reset() -> None:
    """Forget every milestone (tests)."""
    _marks.clear()
