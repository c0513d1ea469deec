"""Stragglers (detection only: nothing is killed or restarted for being slow): ranks and whole
hosts that compute markedly slower than the others.
"""
from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from supervisor.policy.measures import is_duration, median

# --------------------------------------------------------------------------------------------
# Stragglers (detection only: nothing is killed or restarted for being slow)
# --------------------------------------------------------------------------------------------
STRAGGLER_RATIO = 1.2  # a rank computing this much longer than the others is a straggler
STRAGGLER_RECOVERED_RATIO = 1.1  # ... and stops being one below this (no event every interval)
STRAGGLER_MIN_SAMPLES = 10  # steps a rank must have measured before it is judged
STRAGGLER_MIN_EXCESS_S = 0.005  # ignore a difference smaller than this: timer noise on tiny steps


@dataclass(frozen=True)
class Straggler:
    """A rank whose own compute per step is consistently slower than its peers'."""

    rank: int
    median_s: float  # its median compute time per step over its recent steps
    others_median_s: float  # the median of the other ranks' medians
    ratio: float

    def describe(self, hostname: str | None = None) -> str:
        where = f" on {hostname}" if hostname else ""
        return (f"rank {self.rank}{where} is a straggler: {self.median_s * 1000:.1f} ms of compute per step, "
                f"{self.ratio:.2f}x the other ranks' {self.others_median_s * 1000:.1f} ms")



def find_stragglers(
    samples: Mapping[int, Sequence[float]],
    flagged: Collection[int] = (),
    ratio: float = STRAGGLER_RATIO,
    recovered_ratio: float = STRAGGLER_RECOVERED_RATIO,
    min_samples: int = STRAGGLER_MIN_SAMPLES,
    min_excess_s: float = STRAGGLER_MIN_EXCESS_S,
) -> list[Straggler]:
    """Ranks whose median compute time over their recent steps exceeds ``ratio`` x the median of
    the other ranks' medians.

    ``samples``: per rank, the seconds of its own compute in each recent step (the heartbeat's
    ``compute_s``; not the step time, which the gradient all-reduce makes equal on every rank).
    Medians, so one slow step (a GC pause, a page fault) is not a straggler; the other ranks,
    not all of them, so with two ranks the slow one is compared with the fast one rather than
    with a median it pulls up itself. A rank in ``flagged`` stays a straggler until it falls
    below ``recovered_ratio``, so a rank hovering at the threshold is not announced every check.
    Ranks with fewer than ``min_samples`` steps are neither judged nor used as the yardstick.
    """
    medians = {rank: median(values) for rank, values in samples.items()
               if len(values) >= min_samples and all(is_duration(v) for v in values)}
    found: list[Straggler] = []
    for rank, own in sorted(medians.items()):
        others = [m for r, m in medians.items() if r != rank]
        if not others:
            continue
        typical = median(others)
        threshold = recovered_ratio if rank in flagged else ratio
        if own - typical >= min_excess_s and own > threshold * typical:
            found.append(Straggler(rank, own, typical, own / typical if typical > 0 else math.inf))
    return found


def find_slow_hosts(
    samples: Mapping[int, Sequence[float]],
    hosts: Mapping[int, str | None],
    ratio: float = STRAGGLER_RATIO,
    min_samples: int = STRAGGLER_MIN_SAMPLES,
    min_excess_s: float = STRAGGLER_MIN_EXCESS_S,
) -> dict[str, tuple[float, float]]:
    """Whole nodes that are stragglers: host -> (its median compute per step, the other hosts').

    A node whose every rank is slow (a throttled or shared machine) hides from ``find_stragglers``
    when it holds most of the ranks; here each host's ranks are pooled into one median and compared
    with the median of the other hosts' medians. Needs at least two hosts with measured ranks.
    """
    by_host: dict[str, list[float]] = {}
    for rank, values in samples.items():
        host = hosts.get(rank)
        if host and len(values) >= min_samples and all(is_duration(v) for v in values):
            by_host.setdefault(host, []).append(median(values))
    host_medians = {host: median(values) for host, values in by_host.items()}
    slow: dict[str, tuple[float, float]] = {}
    for host, own in sorted(host_medians.items()):
        others = [m for h, m in host_medians.items() if h != host]
        if not others:
            continue
        typical = median(others)
        if own - typical >= min_excess_s and own > ratio * typical:
            slow[host] = (own, typical)
    return slow


