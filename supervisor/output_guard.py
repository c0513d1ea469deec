"""Console output that can fail without changing the outcome of a run.

``gpt2sup run | tee log`` stopped with Ctrl-C kills ``tee`` too; the supervisor then stops its
workers cleanly and writes its last lines into a pipe nobody reads (EPIPE). A closed terminal
(SIGHUP, ssh dropped) turns writes into EIO. Neither may turn "stopped, exit 4" into a traceback
or exit 1. The guard wraps ``sys.stdout``/``sys.stderr`` once, in the CLI entry point, so every
writer (click.echo, print, the rich live panel) is covered: the first failed write silences that
stream for the rest of the process and points its descriptor at /dev/null, so the interpreter's
own flush at exit cannot fail either.
"""
from __future__ import annotations

import io
import os
import sys
from typing import TextIO


class GuardedStream(io.TextIOBase):
    """A text stream that swallows OSError from the stream it wraps (and then stays silent)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.broken: OSError | None = None

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._stream, "encoding", "utf-8") or "utf-8"

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        return getattr(self._stream, "errors", None)

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        if self.broken is not None:
            return False
        try:
            return self._stream.isatty()
        except (OSError, ValueError):
            return False

    def fileno(self) -> int:
        return self._stream.fileno()

    def write(self, text: str) -> int:  # type: ignore[override]
        if self.broken is None:
            try:
                return self._stream.write(text)
            except OSError as exc:
                self._silence(exc)
        return len(text)

    def flush(self) -> None:
        if self.broken is None:
            try:
                self._stream.flush()
            except OSError as exc:
                self._silence(exc)

    def _silence(self, exc: OSError) -> None:
        self.broken = exc
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, self._stream.fileno())
            finally:
                os.close(devnull)
        except (OSError, ValueError, io.UnsupportedOperation):
            pass  # no descriptor to redirect: the stream object itself stays silenced


def guard_console() -> None:
    """Wrap ``sys.stdout`` and ``sys.stderr`` (idempotent)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, GuardedStream):
            setattr(sys, name, GuardedStream(stream))
