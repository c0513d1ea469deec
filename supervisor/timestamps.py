"""How the supervisor writes a moment for people: one UTC format for records and plain lines.

Its own module because both the checkpoint records (a quarantine's reason file) and the views
(status, the plain console lines) use it, and neither may import the other.
"""
from __future__ import annotations

import time
from datetime import datetime, timezone


def utc_timestamp(t: float | None = None) -> str:
    """``2026-12-06T22:44:10Z`` for ``t`` (seconds since the epoch; now when None)."""
    moment = datetime.fromtimestamp(time.time() if t is None else t, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
