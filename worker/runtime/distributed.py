"""The process group as one small object: who am I, and the few collectives the loop needs.

torchrun sets ``RANK``/``LOCAL_RANK``/``WORLD_SIZE``; without them this is a one-process run and
every collective is the identity, so the training loop never branches on "am I distributed" for
bookkeeping (only for DDP's gradient-sync switch, which is part of the math).
"""
from __future__ import annotations

import faulthandler
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from shared.vocabulary import NODE_RANK_ENV
from worker.runtime import startup_clock

TEARDOWN_LIMIT_S = 30.0
TEARDOWN_LIMIT_ENV = "GPT2SUP_TEARDOWN_LIMIT_S"  # tests shorten it (docs/worker.md)


def teardown_limit_s() -> float:
    try:
        value = float(os.environ.get(TEARDOWN_LIMIT_ENV, TEARDOWN_LIMIT_S))
    except ValueError:
        return TEARDOWN_LIMIT_S
    return value if 0 < value < float("inf") else TEARDOWN_LIMIT_S


def bound_the_teardown() -> float:
    """Once the run ended (finished, stopped, diverged: heartbeat and checkpoint written), the
    process must be gone within ``teardown_limit_s()``. Its teardown (the process group's
    ``destroy_process_group()``, interpreter exit) now and then never returns: seen twice in the
    suite, a rank that had saved and said "exiting" still there a minute later, holding its
    torchrun (and on a GPU its memory) open; pytorch issue 75097. faulthandler's watchdog runs in
    a C thread that needs no GIL (a hung C++ call may hold it, and a Python timer then never
    runs): past the limit it prints every thread's stack to stderr and exits 1. Never cancelled:
    a process that exits in time takes the watchdog with it. The supervisor reads a non-zero exit
    after every rank ended as the ending the ranks reported (docs/reliability.md)."""
    limit = teardown_limit_s()
    faulthandler.dump_traceback_later(limit, exit=True)
    return limit


def _maybe_inject_teardown_hang(rank: int) -> None:
    """Fault injection (docs/worker.md): ``GPT2SUP_INJECT_TEARDOWN_HANG=R``: rank R's teardown never returns."""
    target = os.environ.get("GPT2SUP_INJECT_TEARDOWN_HANG")
    if target is not None and target.strip() == str(rank):
        print(f"[fault injection] rank {rank} hanging in the process group's teardown", file=sys.stderr, flush=True)
        time.sleep(10**6)


@dataclass(frozen=True)
class Distributed:
    ddp: bool
    rank: int
    local_rank: int
    world_size: int
    device: str  # "cpu", "cuda", or "cuda:N" for this rank
    leader: int = 0  # the rank that writes the run's files (see setup_distributed)

    @property
    def master(self) -> bool:
        """This rank writes the run's files: checkpoints, log.txt, metrics.jsonl, run identity."""
        return self.rank == self.leader

    def barrier(self) -> None:
        if self.ddp:
            dist.barrier()

    def broadcast_from_master(self, value: Any) -> Any:
        """The leader's ``value`` on every rank (a path, a verdict): all ranks act on one decision."""
        if not self.ddp:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=self.leader)
        return box[0]

    def any_rank(self, flag: bool) -> bool:
        """True on every rank if it is true on any (e.g. a stop request): ranks must agree."""
        if not self.ddp:
            return flag
        tensor = torch.tensor([1 if flag else 0], device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return bool(tensor.item())

    def first_given(self, value: str | None) -> str | None:
        """The first non-None ``value`` of any rank (rank order), on every rank: one error or one
        stop reason for all, whichever rank saw it."""
        if not self.ddp:
            return value
        gathered: list[str | None] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return next((e for e in gathered if e is not None), None)

    def mean_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Average ``tensor`` over ranks in place (SUM then divide: gloo has no AVG)."""
        if self.ddp:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
            tensor /= self.world_size
        return tensor

    def gather_lines(self, lines: list[str]) -> list[str]:
        """Every rank's ``lines``, in rank order, on every rank (text is small: samples)."""
        if not self.ddp:
            return list(lines)
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, list(lines))
        return [line for part in gathered for line in part]

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over ranks in place (e.g. counts of an evaluation split across ranks)."""
        if self.ddp:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def shutdown(self) -> None:
        """Destroy the process group (after ``bound_the_teardown``, which bounds the time it may take)."""
        if self.ddp and dist.is_initialized():
            _maybe_inject_teardown_hang(self.rank)
            dist.destroy_process_group()


def setup_distributed(device_type: str, device: str) -> Distributed:
    """Join the process group torchrun prepared (NCCL on CUDA, gloo on CPU), or run alone."""
    startup_clock.mark(startup_clock.IMPORTS_DONE)  # everything is imported by now: set-up begins
    if "RANK" not in os.environ:
        startup_clock.mark(startup_clock.RENDEZVOUS_DONE)
        return Distributed(ddp=False, rank=0, local_rank=0, world_size=1, device=device)
    rank, local_rank, world_size = (int(os.environ[k]) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
    device = f"cuda:{local_rank}" if device_type == "cuda" else "cpu"
    if device_type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    node = os.environ.get(NODE_RANK_ENV)
    gathered: list[Any] = [None] * world_size
    dist.all_gather_object(gathered, (node, local_rank))
    startup_clock.mark(startup_clock.RENDEZVOUS_DONE)
    return Distributed(ddp=True, rank=rank, local_rank=local_rank, world_size=world_size, device=device,
                       leader=choose_leader(gathered))


def choose_leader(ranks: list[tuple[str | None, int]]) -> int:
    """The global rank that writes the run's files, from each rank's (supervisor node rank, local rank).

    Multi-node, torchrun's c10d rendezvous numbers the nodes of each round in its own order, not by
    ``--node-rank``: after a restart node 1 can host global rank 0. The run's files (checkpoints
    above all) belong with node 0's supervisor, which validates, quarantines and prunes them, so
    the writer is local rank 0 of the node whose supervisor is node 0 (``gpt2sup run`` exports its
    ``--node-rank`` as GPT2SUP_NODE_RANK). Without that (one node, a bare torchrun) it is rank 0.
    """
    for rank, (node, local_rank) in enumerate(ranks):
        if node == "0" and local_rank == 0:
            return rank
    return 0
