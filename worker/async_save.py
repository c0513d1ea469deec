"""Checkpoints that barely stop training: snapshot on the loop, write in a background thread.

A synchronous save of GPT-2 124M (model + AdamW moments, ~1.5 GB) stops the step loop for as
long as the disk takes to swallow it: seconds to minutes. With ``--async_checkpoint`` the loop
only pays for a copy of the state into host memory (``HostSnapshot``); ``BackgroundWrite`` then
hands that copy to ``CheckpointManager.save`` in a thread, which keeps the whole protocol of a
synchronous save: free-space check, ``.tmp`` + fsync, rename, fsync of the directory, the
``latest_checkpoint.pt`` link, keep-last-N pruning after the rename, torch's zip CRC-32s.

Why a thread and not a process: torch's zip writer and ``fsync`` release the GIL for the bulk
of the work (the training thread keeps running; ``bench/bench_checkpoint.py`` measures the
stall), and a thread shares the snapshot without a second 1.5 GB copy through a pipe.

Rules the manager builds on these pieces (docs/checkpoints.md, "Asynchronous saves"):

* at most one write in flight: a save point that finds the previous write still running waits
  for it before it snapshots (the host buffers are reused, so they must be free);
* the snapshot is a deep copy captured at one step: model, optimizer, loader position, RNGs and
  progress all come from the same ``TrainingState.state_dict()`` call, copied before the next
  optimizer step can change them;
* nothing is renamed into place until it is completely written and fsynced (``save`` does that
  in order), so a write that dies half-way leaves only a ``.tmp`` that no reader ever picks;
* the interpreter's exit (a crash, an exception out of the loop, ``sys.exit``) waits a bounded
  time for an in-flight write to finish (``atexit``), so a checkpoint that was nearly written is
  not thrown away; past the bound the ``.tmp`` stays behind and is removed at the next start.

Fault injection for tests and drills: ``GPT2SUP_INJECT_SLOW_CHECKPOINT_WRITE=SECONDS`` makes the
background thread sleep that long before it writes (a slow disk), so a save is visibly in flight.
"""
from __future__ import annotations

import atexit
import copy
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

SLOW_WRITE_ENV = "GPT2SUP_INJECT_SLOW_CHECKPOINT_WRITE"
# How long process exit waits for a write in flight. Long enough for 1.5 GB on a slow disk; a
# write that needs longer is lost (its .tmp is removed at the next start), never half-renamed.
EXIT_WAIT_S = 300.0


class HostSnapshot:
    """Deep copies of a state tree into host buffers that are reused from one save to the next.

    Allocating 1.5 GB per save would churn the allocator (and on CUDA, pinned allocations are
    slow), so each source storage gets one host buffer, kept while that storage exists. Storages,
    not tensors, are copied: the tied ``wte``/``lm_head`` weight stays one storage in the copy, so
    the file is the same size and layout as a synchronous save's. On CUDA the buffers are pinned
    and the copies asynchronous, with one synchronize at the end.
    """

    def __init__(self, pin_memory: bool = False) -> None:
        self.pin_memory = pin_memory
        self._buffers: dict[tuple[int, int, str], torch.Tensor] = {}

    @property
    def nbytes(self) -> int:
        """Host memory held by the buffers (what --async_checkpoint adds to the process)."""
        return sum(buffer.numel() for buffer in self._buffers.values())

    def copy(self, state: Any) -> Any:
        """A copy of ``state`` that shares no tensor memory and no mutable container with it."""
        copied: dict[tuple[int, int, str], torch.Tensor] = {}
        result = self._copy(state, copied)
        if any(key[2] != "cpu" for key in copied) and torch.cuda.is_available():
            torch.cuda.synchronize()  # the non_blocking device-to-host copies have landed
        for key in set(self._buffers) - set(copied):  # storages that no longer exist
            del self._buffers[key]
        return result

    def _copy(self, value: Any, copied: dict[tuple[int, int, str], torch.Tensor]) -> Any:
        if isinstance(value, torch.Tensor):
            return self._copy_tensor(value, copied)
        if isinstance(value, OrderedDict):  # a module's state_dict: keep its type and ``_metadata``
            result = OrderedDict((key, self._copy(item, copied)) for key, item in value.items())
            if hasattr(value, "_metadata"):
                result._metadata = copy.deepcopy(value._metadata)  # type: ignore[attr-defined]
            return result
        if isinstance(value, dict):
            return {key: self._copy(item, copied) for key, item in value.items()}
        if isinstance(value, list):
            return [self._copy(item, copied) for item in value]
        if isinstance(value, tuple):
            return tuple(self._copy(item, copied) for item in value)
        if value is None or isinstance(value, (bool, int, float, str, bytes)):
            return value  # immutable
        raise TypeError(f"cannot snapshot a {type(value).__name__} for an asynchronous checkpoint")

    def _copy_tensor(self, tensor: torch.Tensor, copied: dict[tuple[int, int, str], torch.Tensor]) -> torch.Tensor:
        tensor = tensor.detach()
        storage = tensor.untyped_storage()
        key = (storage.data_ptr(), storage.nbytes(), str(tensor.device))
        host = copied.get(key)
        if host is None:
            host = self._buffers.get(key)
            if host is None:
                pin = self.pin_memory and tensor.device.type == "cuda"
                host = torch.empty(storage.nbytes(), dtype=torch.uint8, pin_memory=pin)
                self._buffers[key] = host
            source = torch.empty(0, dtype=torch.uint8, device=tensor.device).set_(storage)
            host.copy_(source, non_blocking=tensor.device.type == "cuda")
            copied[key] = host
        view = torch.empty(0, dtype=tensor.dtype)
        return view.set_(host.untyped_storage(), tensor.storage_offset(), tensor.size(), tensor.stride())


@dataclass
class BackgroundWrite:
    """One checkpoint being written by a thread: what it is, and, once done, how it went."""

    step: int
    name: str  # the file name it will have once renamed into place (model_N.pt)
    stall_seconds: float  # how long the step loop was stopped for the snapshot
    started: float = field(default_factory=time.perf_counter)
    outcome: Any = None  # the write's SaveOutcome once it has finished
    error: BaseException | None = None  # an unexpected exception of the write (re-raised by the loop)
    _thread: threading.Thread | None = None

    def start(self, write: Callable[[], Any]) -> None:
        def run() -> None:
            try:
                delay = float(os.environ.get(SLOW_WRITE_ENV) or 0)
                if delay > 0:
                    time.sleep(delay)  # fault injection: a slow disk
                self.outcome = write()
            except BaseException as exc:  # noqa: BLE001 - handed to the training loop, which raises it
                self.error = exc

        # A daemon thread: the interpreter's exit must not hang forever on a stuck disk;
        # ``wait_at_exit`` gives it a bounded time instead.
        self._thread = threading.Thread(target=run, name=f"checkpoint-writer-{self.step}", daemon=True)
        self._thread.start()

    @property
    def done(self) -> bool:
        return self._thread is None or not self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the write finished (True) or ``timeout`` passed (False)."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.done

    @property
    def write_seconds(self) -> float:
        return float(getattr(self.outcome, "seconds", 0.0) or 0.0)


class BackgroundWriter:
    """At most one ``BackgroundWrite`` in flight; process exit waits for it (bounded)."""

    def __init__(self, on_exit: Callable[[BackgroundWrite], None] | None = None,
                 exit_wait_s: float = EXIT_WAIT_S) -> None:
        self.pending: BackgroundWrite | None = None
        self.on_exit = on_exit
        self.exit_wait_s = exit_wait_s
        atexit.register(self._wait_at_exit)

    @property
    def in_flight(self) -> BackgroundWrite | None:
        """The write still running, if any (polling: never blocks)."""
        return self.pending if self.pending is not None and not self.pending.done else None

    def submit(self, write: BackgroundWrite, run: Callable[[], Any]) -> None:
        assert self.pending is None, "collect the previous write first: at most one save in flight"
        self.pending = write
        write.start(run)

    def collect(self, block: bool) -> BackgroundWrite | None:
        """The finished write (once), or None: nothing pending, or still running and not ``block``."""
        pending = self.pending
        if pending is None or not (pending.done or (block and pending.wait())):
            return None
        self.pending = None
        return pending

    def _wait_at_exit(self) -> None:
        pending = self.pending
        if pending is None:
            return
        if not pending.done:
            print(f"waiting up to {self.exit_wait_s:.0f}s for the checkpoint {pending.name} being written",
                  flush=True)
            pending.wait(self.exit_wait_s)
        if pending.done and self.on_exit is not None:
            try:
                self.on_exit(pending)
            except Exception as exc:  # noqa: BLE001 - the process is ending; reporting is best effort
                print(f"could not report the finished checkpoint {pending.name}: {exc}", flush=True)
