"""The worker's expected failures and how their text reaches a person: one clean line.

An expected failure (bad flag, damaged checkpoint, missing data, busy run directory) is a
``WorkerError`` carrying its documented exit code; ``main`` prints it as one line and writes it into
the heartbeat, so the supervisor can quote it. Text that comes from libraries (torch's unpickler
messages carry ANSI colour codes and advise turning safe loading off) is cleaned here, and long
text is shortened at a sentence boundary, never mid-sentence.
"""
from __future__ import annotations

import re

from shared.exit_codes import WorkerExit
from shared.vocabulary import RankStatus

# The heartbeat's ``message`` limit (interface with the supervisor).
MAX_MESSAGE_CHARS = 2000
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-_]")
# Sentences of torch's unpickler text that advise loading unsafely, or only point at its docs.
_UNSAFE_ADVICE = ("weights_only", "trusted source", "documentation", "Weights only load failed")
_SENTENCE_END = re.compile(r"(?<=[.;:!?])\s+")


class WorkerError(Exception):
    """An expected failure: printed as one line, exits with ``code``.

    ``status`` is what the heartbeat says about the rank afterwards (``failed`` unless the run
    reached its end, e.g. ``finished_without_checkpoint``); ``bad_checkpoint`` names the file an
    exit 4 is about, so the supervisor quarantines exactly that file.
    """

    def __init__(self, message: str, code: WorkerExit, *, status: RankStatus = RankStatus.FAILED,
                 bad_checkpoint: str | None = None) -> None:
        super().__init__(clean_message(message))
        self.code = code
        self.status = status
        self.bad_checkpoint = bad_checkpoint


def strip_ansi(text: str) -> str:
    return _ANSI_ESCAPE.sub("", text)


def clean_message(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` without ANSI codes, at most ``limit`` chars, shortened only between sentences."""
    text = strip_ansi(text).strip()
    if len(text) <= limit:
        return text
    kept = ""
    for sentence in _SENTENCE_END.split(text):
        candidate = f"{kept} {sentence}" if kept else sentence
        if len(candidate) + 2 > limit:
            break
        kept = candidate
    if not kept:  # one endless sentence: end at a word, and say that something was left out
        kept = text[: limit - 2].rsplit(" ", 1)[0]
    return kept + " …"


def library_reason(exc: BaseException) -> str:
    """A library exception as a short reason: its first paragraph, cleaned, whole sentences only.

    torch's ``weights_only`` refusal explains how to disable safe loading; we never suggest that,
    so sentences mentioning ``weights_only`` (and pointers to torch's docs) are dropped and the first
    paragraph with something left is the reason (the caller says what to do instead).
    """
    text = strip_ansi(str(exc)).strip()
    for paragraph in re.split(r"\n\s*\n", text):
        sentences = [s for s in _SENTENCE_END.split(" ".join(paragraph.split()))
                     if s and not any(word in s for word in _UNSAFE_ADVICE)]
        if sentences:
            return clean_message(" ".join(sentences), limit=600)
    return type(exc).__name__
