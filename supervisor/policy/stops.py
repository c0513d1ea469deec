"""Stop requests: how long a stop may take, and when a stop is forced (no save).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from shared.vocabulary import (
    Phase,
)


def stop_allowance(timeouts: Mapping[Phase, float], configured: float | None = None) -> float:
    """How long a stop request may take: ``--stop-timeout`` when given, else (``auto``) finish the
    current step, then save. The one rule for the live run's stops and for stopping orphans."""
    if configured is not None:
        return configured
    return timeouts[Phase.TRAIN] + timeouts[Phase.CHECKPOINT]


# `gpt2sup stop --force` sends this signal; a second SIGINT (Ctrl-C at the supervisor's terminal) also forces.
FORCE_SIGNAL_NAME = "SIGQUIT"


def stop_is_forced(signal_names: Sequence[str]) -> bool:
    """Whether the stop requests received so far say "stop now, without the save".

    Plain requests (SIGTERM from ``gpt2sup stop``, SIGHUP, a first Ctrl-C) are idempotent: two
    operators or a retrying script that ask at the same moment must not lose the steps since the
    last checkpoint. Only an explicit force (``gpt2sup stop --force``: SIGQUIT) or a second Ctrl-C
    at the supervisor's own terminal (a second SIGINT) skips the save.
    """
    return FORCE_SIGNAL_NAME in signal_names or list(signal_names).count("SIGINT") >= 2


def forced_stop_reason(signal_names: Sequence[str]) -> str:
    """Words for the journal once :func:`stop_is_forced` holds."""
    if FORCE_SIGNAL_NAME in signal_names:
        return f"forced stop request ({FORCE_SIGNAL_NAME}, `gpt2sup stop --force`)"
    return "second Ctrl-C (SIGINT)"


