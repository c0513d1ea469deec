"""Where a restart's time goes: from the first rank's death to the first resumed step.

The supervisor notes its own moments (``RestartTimeline``: the death, when it noticed, when the
tree was gone, validation, backoff, the relaunch); each relaunched rank reports the milestones of
its own start in its heartbeat (``startup``, written by ``worker.runtime.startup_clock``). ``breakdown``
turns both into consecutive phases whose sum is the whole restart, for one ``restart_breakdown``
event in events.jsonl. Pure: no processes, no files, no clock.

    detection        first rank death (or, for a hang, its last heartbeat) -> the supervisor noticed
    tree_stop        noticed -> every process of the attempt gone (hang evidence included)
    validation       choosing the checkpoint to resume from (quarantine included)
    backoff          the wait before the relaunch
    supervisor       the rest of the supervisor's time between the attempts (disk check, journal)
    torchrun_start   launch -> the last rank's process started
    imports          -> the last rank finished importing (torch included)
    rendezvous       -> the process group is up on every rank
    checkpoint_load  -> model and optimizer restored from the file on every rank (data and model
                        set-up, the CRC check and the load itself)
    loader_seek      -> every rank's loader stands at the checkpoint's position
    first_step       -> the first resumed optimizer step is done on every rank

Every worker milestone is the latest over the ranks: the group moves at its slowest member.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

PHASES = ("detection", "tree_stop", "validation", "backoff", "supervisor", "torchrun_start", "imports",
          "rendezvous", "checkpoint_load", "loader_seek", "first_step")
# worker.runtime.startup_clock's milestones, in order, and the phase that ends at each.
WORKER_MILESTONES = (("process_start", "torchrun_start"), ("imports_done", "imports"),
                     ("rendezvous_done", "rendezvous"), ("loader_seek_start", "checkpoint_load"),
                     ("loader_positioned", "loader_seek"), ("first_step_done", "first_step"))


@dataclass
class RestartTimeline:
    """The supervisor's wall-clock moments of one restart (``time.time()`` values, None: not reached)."""

    died_at: float | None = None  # first rank death seen, or the hung rank's last heartbeat
    noticed_at: float | None = None  # the supervisor knew
    stopped_at: float | None = None  # the attempt's processes were gone
    validation_s: float = 0.0
    backoff_s: float = 0.0
    launched_at: float | None = None  # the next torchrun started

    @property
    def complete(self) -> bool:
        return None not in (self.died_at, self.noticed_at, self.stopped_at, self.launched_at)


def on_supervisor_clock(startup: Mapping[str, object] | None, rank_offset_s: float) -> Mapping[str, object] | None:
    """A rank's milestones moved onto the supervisor's wall clock, given how far the rank's clock
    runs ahead of it (negative: behind). Flags (``compiler_imported``) and junk are kept as they are."""
    if not isinstance(startup, Mapping) or rank_offset_s == 0.0:
        return startup
    return {name: float(value) - rank_offset_s if isinstance(value, (int, float)) and not isinstance(value, bool)
            else value for name, value in startup.items()}


def latest_milestones(startups: Iterable[Mapping[str, object] | None], launched_at: float) -> dict[str, float]:
    """Per milestone, the latest time any rank reached it, from this attempt's heartbeats only.

    A milestone some rank has not reported is left out (that rank has not reached it, or a fresh
    start has no checkpoint to load); junk values are ignored.
    """
    names = [name for name, _ in WORKER_MILESTONES]
    latest: dict[str, float] = {}
    missing: set[str] = set()
    seen = False
    for startup in startups:
        seen = True
        marks = startup if isinstance(startup, Mapping) else {}
        start = marks.get("process_start")
        if isinstance(start, (int, float)) and start < launched_at - 1.0:
            return {}  # a rank of an earlier attempt: not this restart's
        for name in names:
            value = marks.get(name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                missing.add(name)
                continue
            latest[name] = max(latest.get(name, float("-inf")), float(value))
    if not seen:
        return {}
    return {name: value for name, value in latest.items() if name not in missing}


def first_step_reached(startups: Iterable[Mapping[str, object] | None], launched_at: float) -> bool:
    """Every rank reported its first resumed step (the breakdown can be written)."""
    return "first_step_done" in latest_milestones(list(startups), launched_at)


def breakdown(timeline: RestartTimeline, milestones: Mapping[str, float]) -> dict[str, float]:
    """Seconds per phase (module docstring) plus ``total``; phases that cannot be measured are absent.

    Phases are differences of consecutive moments, so they add up to ``total`` (first death ->
    first resumed step) whenever every moment is known. A worker phase whose milestone is missing
    (no checkpoint: nothing to load or seek) is folded into the next one that is known.
    """
    out: dict[str, float] = {}
    if not timeline.complete:
        return out
    died, noticed, stopped, launched = (float(v) for v in (timeline.died_at, timeline.noticed_at,  # type: ignore[arg-type]
                                                           timeline.stopped_at, timeline.launched_at))
    out["detection"] = max(0.0, noticed - died)
    out["tree_stop"] = max(0.0, stopped - noticed)
    out["validation"] = max(0.0, timeline.validation_s)
    out["backoff"] = max(0.0, timeline.backoff_s)
    out["supervisor"] = max(0.0, launched - stopped - out["validation"] - out["backoff"])
    previous = launched
    for name, phase in WORKER_MILESTONES:
        if name not in milestones:
            continue
        out[phase] = max(0.0, milestones[name] - previous)
        previous = max(previous, milestones[name])
    if "first_step_done" in milestones:
        out["total"] = max(0.0, milestones["first_step_done"] - died)
    return {key: round(value, 3) for key, value in out.items()}


def describe(phases: Mapping[str, float]) -> str:
    """One line: ``restart 3.21s = detection 0.05 + tree_stop 0.40 + ...``."""
    parts = " + ".join(f"{phase} {phases[phase]:.2f}" for phase in PHASES if phase in phases)
    total = phases.get("total")
    return f"restart {total:.2f}s = {parts}" if total is not None else f"restart (incomplete): {parts}"
