"""Checkpoints that barely stop training: capture at the save point, copy and write in a thread.

A synchronous save of GPT-2 124M (model + AdamW moments, ~1.5 GB) stops the step loop for as
long as the disk takes to swallow it: seconds to minutes. With ``--async_checkpoint`` the save
point only captures the state's structure (``HostSnapshot.prepare``: loader position, RNG states,
learning rate, step counts, and host tensors that will receive the bytes) and returns. A thread
(``BackgroundWrite``) then copies the tensor bytes into host buffers that are reused from one save
to the next (pinned on CUDA) and hands that copy to ``CheckpointManager.save``, which keeps the
whole protocol of a synchronous save: free-space check, ``.tmp`` + fsync, rename, fsync of the
directory, the ``latest_checkpoint.pt`` link, keep-last-N pruning after the rename, torch's zip
CRC-32s.

Why the copy may run late: until the next optimizer step, training only *reads* the weights and
the optimizer's moments (forward, backward, gradient clipping and evaluations write gradients and
activations, never parameters). So the copy overlaps the next step's forward and backward, and a
step pre-hook on the optimizer (registered by the manager) waits for it before the weights change.
The step loop stalls only when the copy takes longer than a forward and backward pass.

Why a thread and not a process: the copy, torch's zip writer and ``fsync`` release the GIL for
the bulk of the work, and a thread shares the buffers without another 1.5 GB trip through a pipe.
``bench/bench_checkpoint.py`` measures the stall, the write and the memory.

Rules the manager builds on these pieces (docs/checkpoints.md, "Asynchronously"):

* at most one write in flight: a save point that finds the previous write still running waits
  for it before it captures (the host buffers are reused, so they must be free);
* one instant: every piece comes from the same ``TrainingState.state_dict()`` call, and the tensor
  bytes are copied before the next optimizer step can change them;
* nothing is renamed into place until it is completely written and fsynced (``save`` does that
  in order), so a write that dies half-way leaves only a ``.tmp`` that no reader ever picks;
* the interpreter's exit (a crash, an exception out of the loop, ``sys.exit``) waits a bounded
  time for an in-flight write to finish (``atexit``), so a checkpoint that was nearly written is
  not thrown away; past the bound the ``.tmp`` stays behind and is removed at the next start.

Fault injection for tests and drills: ``GPT2SUP_INJECT_SLOW_CHECKPOINT_WRITE=SECONDS`` makes the
background thread sleep that long after the copy, before it writes (a slow disk), so a save is
visibly in flight.
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

    The copy is made in two parts (``prepare``): the tree now, the tensor bytes when the returned
    function runs (in the writer thread).

    Allocating 1.5 GB per save would churn the allocator (and on CUDA, pinned allocations are
    slow), so each source storage gets one host buffer, kept while that storage exists. Storages,
    not tensors, are copied: the tied ``wte``/``lm_head`` weight stays one storage in the copy, so
    the file is the same size and layout as a synchronous save's. On CUDA the buffers are pinned,
    so the thread's device-to-host copies run at full bus speed.
    """

    def __init__(self, pin_memory: bool = False) -> None:
        self.pin_memory = pin_memory
        self._buffers: dict[tuple[int, int, str], torch.Tensor] = {}

    @property
    def nbytes(self) -> int:
        """Host memory held by the buffers (what --async_checkpoint adds to the process)."""
        return sum(buffer.numel() for buffer in self._buffers.values())

    def prepare(self, state: Any) -> tuple[Any, Callable[[], None]]:
        """The host-side copy of ``state`` and the function that fills it.

        The returned tree already has its final shape (host tensors viewing the reused buffers, and
        copies of every container and number), but the tensor bytes are only copied when the
        returned function runs: in the writer thread, while the next step's forward and backward
        read (and never write) the same tensors. ``CheckpointManager`` makes the optimizer wait for
        that copy before it changes them (a step pre-hook).
        """
        pairs: dict[tuple[int, int, str], tuple[torch.Tensor, torch.Tensor]] = {}
        tree = self._copy(state, pairs)
        for key in set(self._buffers) - set(pairs):  # storages that no longer exist
            del self._buffers[key]

        def fill() -> None:
            for host, source in pairs.values():
                host.copy_(source)  # blocking: into pinned memory on CUDA, a plain memcpy on CPU

        return tree, fill

    def _copy(self, value: Any, copied: dict[tuple[int, int, str], tuple[torch.Tensor, torch.Tensor]]) -> Any:
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

    def _copy_tensor(self, tensor: torch.Tensor,
                     copied: dict[tuple[int, int, str], tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        tensor = tensor.detach()
        storage = tensor.untyped_storage()
        key = (storage.data_ptr(), storage.nbytes(), str(tensor.device))
        if key not in copied:
            host = self._buffers.get(key)
            if host is None:  # torch.empty touches no page: the first copy does, in the thread
                pin = self.pin_memory and tensor.device.type == "cuda"
                host = torch.empty(storage.nbytes(), dtype=torch.uint8, pin_memory=pin)
                self._buffers[key] = host
            copied[key] = (host, torch.empty(0, dtype=torch.uint8, device=tensor.device).set_(storage))
        host = copied[key][0]
        view = torch.empty(0, dtype=tensor.dtype)
        return view.set_(host.untyped_storage(), tensor.storage_offset(), tensor.size(), tensor.stride())


@dataclass
class BackgroundWrite:
    """One checkpoint being written by a thread: what it is, and, once done, how it went."""

    step: int
    name: str  # the file name it will have once renamed into place (model_N.pt)
    stall_seconds: float  # how long the step loop was stopped: the save point + waiting for the copy
    started: float = field(default_factory=time.perf_counter)
    copied: threading.Event = field(default_factory=threading.Event)  # the host copy is complete
    outcome: Any = None  # the write's SaveOutcome once it has finished
    error: BaseException | None = None  # an unexpected exception of the write (re-raised by the loop)
    _thread: threading.Thread | None = None

    def start(self, fill: Callable[[], None], write: Callable[[], Any]) -> None:
        """Run ``fill`` (the host copy), set ``copied``, then ``write``, in a thread."""

        def run() -> None:
            try:
                try:
                    fill()
                finally:
                    self.copied.set()  # also on failure: the optimizer must never wait forever
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

    def submit(self, write: BackgroundWrite, fill: Callable[[], None], run: Callable[[], Any]) -> None:
        assert self.pending is None, "collect the previous write first: at most one save in flight"
        self.pending = write
        write.start(fill, run)

    def wait_for_copy(self) -> float:
        """Block until the pending write's host copy is complete; the seconds waited."""
        pending = self.pending
        if pending is None or pending.copied.is_set():
            return 0.0
        started = time.perf_counter()
        pending.copied.wait()
        waited = time.perf_counter() - started
        pending.stall_seconds += waited
        return waited

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
