"""How long a rank computes on its own each step, for the supervisor's straggler check.

With DDP every rank waits for the slowest one in the gradient all-reduce, so the *step* time is
the same on every rank and says nothing about which one is slow. What differs is the time before
the sync: the forward and backward passes of the micro-steps that do not all-reduce, and the
forward of the last one. The clock runs from the step's start to just before the last backward
(which overlaps the all-reduce), so a rank that waits for its peers is not counted as slow. With
one micro-step per step that is the forward pass alone: still the rank's own work, and enough to
tell a slow GPU or host. On CUDA the two marks are CUDA events, read after the step's existing
``synchronize``: no extra sync and no stall of the stream.
"""
from __future__ import annotations

import time
from collections import deque

import torch

WINDOW_STEPS = 20  # steps kept in the heartbeat's ``compute_s``


class ComputeClock:
    """``start()`` at the step's start, ``before_sync()`` before the last backward, ``finish()``
    after the step (after the CUDA synchronize): the last ``WINDOW_STEPS`` durations in seconds."""

    def __init__(self, device_type: str, window: int = WINDOW_STEPS) -> None:
        self.cuda = device_type == "cuda"
        self.recent: deque[float] = deque(maxlen=window)
        self._events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) \
            if self.cuda else None
        self._started = self._stopped = 0.0

    def start(self) -> None:
        if self._events is not None:
            self._events[0].record()
        self._started = self._stopped = time.perf_counter()

    def before_sync(self) -> None:
        if self._events is not None:
            self._events[1].record()
        self._stopped = time.perf_counter()

    def finish(self) -> list[float]:
        if self._events is not None:
            self.recent.append(self._events[0].elapsed_time(self._events[1]) / 1000.0)
        else:
            self.recent.append(max(0.0, self._stopped - self._started))
        return [round(value, 6) for value in self.recent]
