"""Durations reported by other processes: only finite, non-negative numbers count.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def slowest(previous: float | None, measured: object) -> float | None:
    """The larger of a remembered duration and a newly reported one (ignoring junk values)."""
    if isinstance(measured, bool) or not isinstance(measured, (int, float)):
        return previous
    if not math.isfinite(measured) or measured < 0:
        return previous
    return float(measured) if previous is None else max(previous, float(measured))


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def is_duration(value: object) -> bool:
    """A heartbeat is another process's file: only finite, non-negative numbers are used."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0

