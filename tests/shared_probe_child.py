"""One real load-probe child per test module, for tests about verdicts rather than about the child.

``gpt2sup verify`` and ``validate_checkpoint`` each start a probe child (``python -m
worker.checkpoint_probe --serve``: an ``import torch``, about a second of CPU) and close it when
they return. A module of thirty verdict tests paid thirty of those. ``one_probe_child_per_module``
makes every session those functions open in the module borrow one real child per (timeout,
command) instead: the same child process, the same protocol and the same verdicts, started once.
A child that dies on a file is replaced by the session as in production.

The child's own life (one child per call, a crash, a hang, a start that fails) is proven by
tests that build their ``ProbeSession`` themselves, which this leaves alone: it replaces the name
only inside ``supervisor.checkpoints.checkpoint_validation``.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pytest

from supervisor.checkpoints import checkpoint_validation
from supervisor.checkpoints.checkpoint_validation import ProbeSession


class _Borrowed:
    """A ``with`` block over a shared session that leaves it open at the end."""

    def __init__(self, session: ProbeSession) -> None:
        self.session = session

    def __enter__(self) -> ProbeSession:
        return self.session

    def __exit__(self, *exc_info: object) -> None:
        return None


@contextmanager
def shared_probe_sessions() -> Iterator[dict[Any, ProbeSession]]:
    sessions: dict[Any, ProbeSession] = {}

    def borrow(timeout: float | None = None, *, command: Sequence[str] | None = None, **kwargs: Any) -> Any:
        key = (timeout, tuple(command or ()), tuple(sorted(kwargs.items())))
        if key not in sessions:
            sessions[key] = ProbeSession(timeout, command=command, **kwargs)
        return _Borrowed(sessions[key])

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(checkpoint_validation, "ProbeSession", borrow)
        try:
            yield sessions
        finally:
            for session in sessions.values():
                session.close()


@pytest.fixture(scope="module")
def one_probe_child_per_module() -> Iterator[dict[Any, ProbeSession]]:
    with shared_probe_sessions() as sessions:
        yield sessions
