"""When the worker must stop early: a stop signal, or the supervisor that launched it is gone.

SIGTERM/SIGINT (and the supervisor's death) only set a flag; the loop finishes its step, all ranks
agree, the checkpoint of that step is saved, and the worker exits 0 with status ``stopped``.
The supervisor's identity arrives as ``GPT2SUP_SUPERVISOR=<pid>:<create_time>`` (pid + start time,
so a recycled pid is not mistaken for it); without that variable nothing is watched (a bare run,
or ``gpt2sup run --workers-outlive-supervisor``). Checked at step boundaries, at most once a second:
polling is cheap, and unlike a parent-death signal it works through torchrun's extra process level.
"""
from __future__ import annotations

import signal
import socket
import sys
import time
from typing import Any

from shared.process_identity import ProcessId, same_process_alive

SUPERVISOR_ENV = "GPT2SUP_SUPERVISOR"


class SupervisorWatch:
    """Is the process named by ``<pid>:<create_time>`` still alive? (checked at most every ``period_s``)"""

    def __init__(self, pid: int, create_time: float, period_s: float = 1.0) -> None:
        self.pid, self.create_time, self.period_s = pid, create_time, period_s
        self._next_check = 0.0

    @classmethod
    def from_env(cls, environ: dict[str, str] | Any) -> SupervisorWatch | None:
        value = environ.get(SUPERVISOR_ENV)
        if not value:
            return None
        identity = ProcessId.parse(value)
        if identity is not None:
            return cls(identity.pid, identity.create_time)
        print(f"WARNING: ignoring {SUPERVISOR_ENV}={value!r} (expected <pid>:<create_time>); "
              "the supervisor's lifetime is not watched", file=sys.stderr, flush=True)
        return None

    def gone(self) -> bool:
        now = time.monotonic()
        if now < self._next_check:
            return False
        self._next_check = now + self.period_s
        return same_process_alive(self.pid, self.create_time) is None


class StopRequest:
    """A stop asked for by a signal, or by the supervisor's disappearance; ``reason`` says which."""

    def __init__(self, supervisor: SupervisorWatch | None = None) -> None:
        self.supervisor = supervisor
        self.reason: str | None = None

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.reason = self.reason or f"stop requested ({signal.Signals(signum).name})"

    def requested(self) -> bool:
        """This rank's view at a step boundary (the ranks then agree with an all-reduce)."""
        if self.reason is None and self.supervisor is not None and self.supervisor.gone():
            self.reason = f"supervisor {self.supervisor.pid} on {socket.gethostname()} is gone"
        return self.reason is not None
