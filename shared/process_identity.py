"""Who a process is: pid plus start time, the one identity every part of gpt2sup compares.

A pid alone is not an identity: after a restart or a long run it may belong to anything. The
supervisor records ``<pid>:<create_time>`` of what it launched (supervisor.json) and of itself
(env ``GPT2SUP_SUPERVISOR`` for the workers); the supervisor, ``gpt2sup status`` and the worker
all check a recorded identity with :func:`same_process_alive`. psutil only, no torch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import psutil

# psutil derives create_time from the boot time and the start tick; the boot time it reads can
# differ by a second between two processes (supervisor A records, supervisor B compares), while a
# reused pid starts seconds (usually far more) later. One tolerance for every identity check.
CREATE_TIME_TOLERANCE_S = 1.0


@dataclass(frozen=True)
class ProcessId:
    """A process identity that survives pid reuse: pid plus its start time."""

    pid: int
    create_time: float

    @classmethod
    def of(cls, proc: psutil.Process) -> ProcessId:
        return cls(proc.pid, proc.create_time())

    @classmethod
    def parse(cls, token: str) -> ProcessId | None:
        """The inverse of :attr:`token`; ``None`` for anything malformed."""
        pid_text, _, time_text = token.strip().partition(":")
        try:
            pid, create_time = int(pid_text), float(time_text)
        except ValueError:
            return None
        return cls(pid, create_time) if pid > 0 and math.isfinite(create_time) else None

    @property
    def token(self) -> str:
        """``<pid>:<create_time>``: how a child learns who its supervisor is (env GPT2SUP_SUPERVISOR)."""
        return f"{self.pid}:{self.create_time:.3f}"

    def alive(self) -> psutil.Process | None:
        return same_process_alive(self.pid, self.create_time)


def same_process_alive(pid: int, create_time: float) -> psutil.Process | None:
    """The live process with this pid *and* start time, or None (gone, reused, or a zombie)."""
    try:
        proc = psutil.Process(int(pid))
        if abs(proc.create_time() - float(create_time)) > CREATE_TIME_TOLERANCE_S:
            return None
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc
    except (psutil.Error, ProcessLookupError, TypeError, ValueError):
        return None
