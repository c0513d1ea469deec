"""Stop requests from the outside world: SIGINT (Ctrl-C), SIGTERM, SIGHUP (terminal closed), SIGQUIT.

SIGINT, SIGTERM and SIGHUP mean "save at the next step boundary and stop": a dropped ssh session
must not leave ``supervisor.json`` saying ``running`` over orphaned workers. Repeating them changes
nothing (two ``gpt2sup stop`` at once are one request), except a second SIGINT: a second Ctrl-C at
the supervisor's own terminal forces, as does SIGQUIT (``gpt2sup stop --force``); see
``policy.stop_is_forced``. The handler only records and wakes the loop, except inside :meth:`StopSignals.interruptible` blocks, where
the loop is waiting on something it cannot poll (a checkpoint load-probe child): there the
request raises :class:`StopRequested` so the wait ends at once. It derives from BaseException on
purpose: the validation code treats an ``Exception`` as "this file is bad", and a Ctrl-C must
never quarantine a good checkpoint.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from shared.atomic_io import write_json_atomic
from supervisor.messages import signal_name
from supervisor.policy import stop_is_forced

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


class StopRequested(BaseException):
    """Raised out of an interruptible wait when a stop request arrives."""


class StopSignals:
    """Counts stop requests (``names`` records which signals asked) and cuts the loop's sleep short."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self._woken = threading.Event()
        self._interruptible = 0

    @property
    def count(self) -> int:
        return len(self.names)

    @property
    def forced(self) -> bool:
        """A request to stop now, without waiting for the save (``policy.stop_is_forced``)."""
        return stop_is_forced(self.names)

    def install(self) -> None:
        for signum in STOP_SIGNALS:
            # nohup starts us with SIGHUP ignored: the user asked to survive a closed terminal.
            if signum == signal.SIGHUP and signal.getsignal(signum) == signal.SIG_IGN:
                continue
            signal.signal(signum, self.request)
        # torchrun exiting wakes the loop at once instead of at the next poll: crash detection
        # latency is then torchrun's own, not the monitor interval.
        signal.signal(signal.SIGCHLD, self.wake)

    def request(self, signum: int | None = None, _frame: Any = None) -> None:
        """Signal-handler safe: record the request and wake the loop (``forced`` says whether to wait)."""
        self.names.append(signal_name(signum) if signum is not None else "request")
        self._woken.set()
        if self._interruptible:
            raise StopRequested(self.names[-1])

    def wake(self, *_: Any) -> None:
        self._woken.set()

    def sleep(self, seconds: float) -> None:
        """Sleep up to ``seconds``; a stop request or a child's exit ends it early."""
        self._woken.wait(max(0.0, seconds))
        self._woken.clear()

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        """Within this block a stop request raises StopRequested (one already pending does too)."""
        if self.names:
            raise StopRequested(self.names[-1])
        self._interruptible += 1
        try:
            yield
        finally:
            self._interruptible -= 1


def mark_stop_request(path: Path, reason: str | None, attempt_id: str | None = None) -> None:
    """Say, before signalling, that this SIGTERM is the supervisor's own request to save and stop
    (``RunDir.stop_request``). Workers that get a SIGTERM without it while a peer rank is gone
    know torchrun is tearing the group down, and exit without trying to save (worker/runtime/lifetime.py).
    A directory that cannot be written only costs that distinction: the workers then judge by
    their peers alone, and with every peer alive they save as asked. ``attempt_id``: the attempt
    asked (the workers match it with their own, comparing no clocks)."""
    record = {"pid": os.getpid(), "time": time.time(), "reason": reason}
    if attempt_id is not None:
        record["attempt_id"] = attempt_id
    with contextlib.suppress(OSError):
        write_json_atomic(path, record, create_parent=False)


def clear_stop_request(path: Path) -> None:
    """Before a launch: an earlier attempt's request is not this attempt's."""
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)
