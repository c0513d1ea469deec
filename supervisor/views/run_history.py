"""A run's whole history, read from its files: the training curves, every fault, what each fault
cost, and the goodput. ``gpt2sup report`` draws it; ``gpt2sup status`` prints its one-line goodput.

Sources (plain files, no torch):
- ``metrics.jsonl``: one record per step the run *kept*. A resume trims the records after the
  resumed step, so each step appears once, with the time it was trained for the last time;
- ``events.jsonl``: the supervisor's journal (launches, crashes, hangs, quarantines, stops...).

How time is accounted (docs/report.md says the same for users):
- wall time: the supervised time, the sum of each ``gpt2sup run`` session (first to last record
  of that session; "now" for a live one). Time between sessions (nobody was running it) is not a
  fault of the run and is left out;
- useful time: the sum of ``dt`` (forward, backward, optimizer step) of the kept steps;
- a failure's cost runs from the failed rank's last heartbeat (the progress it had made) until the
  run trained the failed step again: detection (last heartbeat -> the supervisor's verdict),
  restart (verdict -> first resumed step: evidence, stop, validation, backoff, start, load) and
  re-done steps (first resumed step -> the failed step regained). Time lost to faults is the
  union of those intervals, so a failure during a recovery is not counted twice;
- goodput = useful / wall. The rest of the wall time is the run's own overhead: start-up,
  evaluations and checkpoint saves.
"""
from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.atomic_io import read_json, read_jsonl
from shared.run_dir import DEFAULT_NAMING, CheckpointNaming, RunDir
from shared.vocabulary import EventKind

FAILURE_EVENTS = (EventKind.CRASHED, EventKind.HUNG)
# Events that are part of the normal life of a run; every other kind is a fault or an operator's act.
ROUTINE_EVENTS = frozenset({
    EventKind.SUPERVISOR_STARTED, EventKind.LAUNCHED, EventKind.CHECKPOINT_VALID, EventKind.BACKOFF,
    EventKind.EVIDENCE_CAPTURED, EventKind.FINISHED, EventKind.RESTART_BREAKDOWN,
    # The checkpoint store's routine (--checkpoint-uri): an upload per checkpoint is no fault.
    EventKind.UPLOADED, EventKind.UPLOAD_SKIPPED, EventKind.DOWNLOADED,
})
MTIME_SLACK_S = 1.0  # file times and event times come from one clock, but a save ends before its event
CURVE_KEYS = ("loss", "val_loss", "lr", "norm", "tokens_per_s", "hellaswag")


@dataclass(frozen=True)
class StepRecord:
    step: int
    time: float  # when the step finished
    values: dict[str, float]  # the finite numbers of CURVE_KEYS the record holds, and "dt"


@dataclass
class Fault:
    """One journal event worth showing on the curves: what happened, when, at which step."""

    time: float
    kind: str
    attempt: int | None
    step: int | None
    message: str
    incident: str | None = None  # a hang's evidence directory, relative to the run directory
    incident_files: list[str] = field(default_factory=list)
    checkpoint: str | None = None
    ok: bool | None = None  # a replay check: every re-done loss bitwise equal?


@dataclass(frozen=True)
class Recovery:
    """A crash or hang and what it cost (times are Unix seconds; None where the files do not say)."""

    kind: str
    attempt: int | None
    progress_at: float  # the failed rank's last heartbeat (the event time where unknown)
    failed_at: float  # the supervisor's verdict
    failed_step: int | None
    resumed_step: int | None  # the checkpoint the next attempt resumed from (-1: from scratch)
    first_step_at: float | None  # the next attempt's first trained step
    regained_at: float  # the failed step trained again (or the end of the supervised time)

    @property
    def detection_s(self) -> float:
        return max(0.0, self.failed_at - self.progress_at)

    @property
    def restart_s(self) -> float:
        end = self.first_step_at if self.first_step_at is not None else self.regained_at
        return max(0.0, end - self.failed_at)

    @property
    def redo_s(self) -> float:
        if self.first_step_at is None:
            return 0.0
        return max(0.0, self.regained_at - self.first_step_at)

    @property
    def lost_s(self) -> float:
        return max(0.0, self.regained_at - self.progress_at)

    @property
    def redone_steps(self) -> tuple[int, int] | None:
        """First and last step trained twice because of this failure (inclusive), if any."""
        if self.failed_step is None or self.resumed_step is None or self.failed_step <= self.resumed_step:
            return None
        return self.resumed_step + 1, self.failed_step


@dataclass(frozen=True)
class Goodput:
    wall_s: float
    useful_s: float
    lost_s: float  # union of the recoveries' intervals
    detection_s: float
    restart_s: float
    redo_s: float
    failures: int

    @property
    def ratio(self) -> float | None:
        """useful / wall, within 0-1 whatever the files say (a clock step can leave a step's ``dt``
        or a session's span measured across it; the ratio never reads outside 0-100%)."""
        if self.wall_s <= 0:
            return None
        return min(1.0, max(0.0, self.useful_s / self.wall_s))

    def one_line(self) -> str:
        if self.ratio is None:
            return "goodput -"
        lost = f"{format_seconds(self.lost_s)} lost to {self.failures} failure{'s' if self.failures != 1 else ''}"
        return (f"goodput {self.ratio:.0%} ({format_seconds(self.useful_s)} training of "
                f"{format_seconds(self.wall_s)} supervised; {lost})")


@dataclass
class CheckpointRow:
    name: str
    step: int | None
    size_bytes: int
    validation: str  # what the journal says about it
    quarantined: bool = False
    val_loss: float | None = None


@dataclass
class RunHistory:
    log_dir: Path
    steps: list[StepRecord]
    events: list[dict[str, Any]]
    sessions: list[tuple[float, float]]
    faults: list[Fault]
    recoveries: list[Recovery]
    checkpoints: list[CheckpointRow]
    goodput: Goodput
    max_steps: int | None = None
    state: str | None = None  # supervisor.json's state

    def series(self, key: str) -> list[tuple[int, float, float]]:
        """(step, time, value) of every kept step that measured ``key``."""
        return [(r.step, r.time, r.values[key]) for r in self.steps if key in r.values]

    @property
    def start_time(self) -> float | None:
        if self.sessions:
            return self.sessions[0][0]
        return self.steps[0].time if self.steps else None


# --- reading ---------------------------------------------------------------------------------------


def finite_number(value: Any) -> float | None:
    """``value`` as a float when it is a finite JSON number (not a bool, NaN or infinity), else None:
    the records read here are appended by other processes and may hold anything."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def step_records(metrics: list[dict[str, Any]]) -> list[StepRecord]:
    """One record per step (the last one written wins), sorted by step."""
    by_step: dict[int, StepRecord] = {}
    for record in metrics:
        step, when = record.get("step"), finite_number(record.get("time"))
        if not isinstance(step, int) or isinstance(step, bool) or when is None:
            continue
        values = {key: v for key in (*CURVE_KEYS, "dt") if (v := finite_number(record.get(key))) is not None}
        by_step[step] = StepRecord(step, when, values)
    return [by_step[s] for s in sorted(by_step)]


def sessions_of(events: list[dict[str, Any]], steps: list[StepRecord], live_until: float | None) -> list[tuple[float, float]]:
    """(start, end) of each ``gpt2sup run`` session; one span of the steps for a run without a supervisor."""
    times = sorted(t for e in events if (t := finite_number(e.get("time"))) is not None)
    starts = [t for e in events if e.get("event") == EventKind.SUPERVISOR_STARTED and (t := finite_number(e.get("time"))) is not None]
    step_times = sorted(r.time for r in steps)
    if not starts:
        if not step_times:
            return []
        first = steps[0]
        begin = first.time - first.values.get("dt", 0.0)
        return [(begin, live_until if live_until is not None else step_times[-1])]
    measured = _session_lengths(events)
    sessions = []
    starts = sorted(starts)
    for i, start in enumerate(starts):
        nxt = starts[i + 1] if i + 1 < len(starts) else math.inf
        inside = [t for t in times if start <= t < nxt] + [t for t in step_times if start <= t < nxt]
        end = max(inside)
        length = measured.get(start)
        if length is not None:  # measured on the supervisor's monotonic clock: no clock step distorts it
            end = start + length
        if nxt == math.inf and live_until is not None:
            end = max(end, live_until)
        sessions.append((start, end))
    return sessions


def _session_lengths(events: list[dict[str, Any]]) -> dict[float, float]:
    """Start time (of its ``supervisor_started`` record) -> length of each session whose records
    say how long into it they were written (``elapsed_s``, the supervisor's monotonic clock)."""
    longest: dict[float, float] = {}
    for event in events:
        key, elapsed = finite_number(event.get("session_start")), finite_number(event.get("elapsed_s"))
        if key is not None and elapsed is not None and elapsed >= 0:
            longest[key] = max(longest.get(key, 0.0), elapsed)
    lengths = {}
    for event in events:
        if event.get("event") == EventKind.SUPERVISOR_STARTED:
            start, key = finite_number(event.get("time")), finite_number(event.get("session_start"))
            if start is not None and key in longest:
                lengths[start] = max(0.0, longest[key] - (finite_number(event.get("elapsed_s")) or 0.0))
    return lengths


class _Timeline:
    """Step <-> time along the kept steps (the run's final history)."""

    def __init__(self, steps: list[StepRecord]) -> None:
        self.steps = sorted(steps, key=lambda r: r.time)  # by step is by time too, but a clock may step back
        self.times = [r.time for r in steps]
        self.by_step = {r.step: r for r in steps}

    def step_at(self, when: float) -> int | None:
        """The last kept step finished at or before ``when``."""
        index = bisect_right(self.times, when)
        return self.steps[index - 1].step if index else None

    def first_after(self, when: float, min_step: int) -> float | None:
        """When the first kept step >= ``min_step`` trained after ``when`` finished, if one did."""
        for record in self.steps[bisect_right(self.times, when):]:
            if record.step >= min_step:
                return record.time
        return None


def _next_event(events: list[dict[str, Any]], start: int, kinds: tuple[str, ...], stop_kinds: tuple[str, ...] = ()) -> dict[str, Any] | None:
    for event in events[start:]:
        kind = event.get("event")
        if kind in kinds:
            return event
        if kind in stop_kinds:
            return None
    return None


def recoveries_of(events: list[dict[str, Any]], timeline: _Timeline, end_of_time: float) -> list[Recovery]:
    found = []
    for index, event in enumerate(events):
        if event.get("event") not in FAILURE_EVENTS or (failed_at := finite_number(event.get("time"))) is None:
            continue
        beat = finite_number(event.get("last_beat_time"))
        progress_at = min(beat, failed_at) if beat is not None else failed_at
        failed_step = event.get("step") if isinstance(event.get("step"), int) and event["step"] >= 0 else None
        later = (EventKind.LAUNCHED, *FAILURE_EVENTS)
        resumed = _next_event(events, index + 1, (EventKind.CHECKPOINT_VALID,), stop_kinds=later)
        resumed_step = resumed.get("step") if resumed is not None and isinstance(resumed.get("step"), int) else None
        relaunch = _next_event(events, index + 1, (EventKind.LAUNCHED,))
        if relaunch is not None and resumed_step is None:
            resumed_step = -1  # relaunched with no checkpoint named: it started from scratch
        first_step_at = timeline.first_after(failed_at, 0) if relaunch is not None else None
        # The progress to win back: the failed step, or at least the first step after the checkpoint
        # (a rank can hang behind a peer that already saved a later step).
        candidates = [s for s in (failed_step, resumed_step + 1 if resumed_step is not None else None) if s is not None]
        regained_at = timeline.first_after(failed_at, max(candidates)) if candidates else first_step_at
        if regained_at is None:
            regained_at = end_of_time
        found.append(Recovery(str(event.get("event")), event.get("attempt"), progress_at, failed_at, failed_step,
                              resumed_step, first_step_at, max(regained_at, failed_at)))
    return found


def faults_of(events: list[dict[str, Any]], timeline: _Timeline,
              naming: CheckpointNaming = DEFAULT_NAMING) -> list[Fault]:
    faults = []
    for index, event in enumerate(events):
        kind = str(event.get("event"))
        when = finite_number(event.get("time"))
        if kind in ROUTINE_EVENTS or when is None:
            continue
        checkpoint = event.get("checkpoint") if isinstance(event.get("checkpoint"), str) else None
        step = event.get("step") if isinstance(event.get("step"), int) and event["step"] >= 0 else None
        if step is None and kind == EventKind.REPLAY_CHECK and isinstance(event.get("resumed_step"), int):
            step = event["resumed_step"]
        if step is None and checkpoint is not None:
            step = naming.step_of(checkpoint)
        if step is None:
            step = timeline.step_at(when)
        fault = Fault(when, kind, event.get("attempt"), step, str(event.get("message", "")), checkpoint=checkpoint,
                      ok=event.get("equal") if kind == EventKind.REPLAY_CHECK else None)
        if kind == EventKind.HUNG:
            evidence = _next_event(events, index + 1, (EventKind.EVIDENCE_CAPTURED,), stop_kinds=(EventKind.LAUNCHED,))
            if evidence is not None and isinstance(evidence.get("incident"), str):
                fault.incident = evidence["incident"]
                fault.incident_files = [f for f in evidence.get("files", []) if isinstance(f, str)]
        faults.append(fault)
    return faults


def checkpoint_rows(run: RunDir, events: list[dict[str, Any]], timeline: _Timeline,
                    state: dict[str, Any] | None = None) -> list[CheckpointRow]:
    """Every checkpoint file (quarantined ones too) with the journal's newest word on it.

    A name can be reused (a quarantined step saved again): an event speaks of the file on disk only
    if it came after that file was written. Without an event, the newest file's verdict is the one
    ``supervisor.json`` records, in ``gpt2sup status``'s words (valid / INVALID / not validated).
    """

    def said_of(name: str, written_at: float) -> str | None:
        for when, text in reversed(said.get(name, [])):
            if when >= written_at - MTIME_SLACK_S:
                return text
        return None

    said: dict[str, list[tuple[float, str]]] = {}
    for event in events:
        name = event.get("checkpoint")
        when = finite_number(event.get("time"))
        if not isinstance(name, str) or when is None:
            continue
        if event.get("event") == EventKind.CHECKPOINT_VALID:
            verdict = "inconclusive (used unverified)" if event.get("inconclusive") else "valid"
            seconds = finite_number(event.get("seconds"))
            said.setdefault(name, []).append(
                (when, f"{verdict}, resumed from it" + (f" (checked in {seconds:.1f}s)" if seconds is not None else "")))
        elif event.get("event") == EventKind.QUARANTINED:
            said.setdefault(name, []).append((when, f"quarantined: {event.get('reason') or event.get('message', '')}"))
    rows = []
    for item in run.list_checkpoints():
        record = timeline.by_step.get(item.step)
        text = said_of(item.path.name, _mtime(item.path)) or _recorded_verdict(item.path.name, state or {})
        rows.append(CheckpointRow(item.path.name, item.step, item.size, text,
                                  val_loss=record.values.get("val_loss") if record else None))
    try:
        corrupt = sorted(p for p in run.root.glob(f"{run.naming().pattern}.corrupt*")
                         if not p.name.endswith(".reason.json"))
    except OSError:
        corrupt = []
    for path in corrupt:
        original = path.name.split(".corrupt")[0]
        try:
            size = path.stat().st_size
        except OSError:
            continue
        quarantines = [text for _, text in said.get(original, []) if text.startswith("quarantined")]
        rows.append(CheckpointRow(path.name, run.naming().step_of(original), size,
                                  quarantines[-1] if quarantines else "quarantined", quarantined=True))
    rows.sort(key=lambda row: (row.step if row.step is not None else -1, row.quarantined))
    return rows


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _union_length(intervals: list[tuple[float, float]]) -> float:
    total, current_start, current_end = 0.0, None, None
    for start, end in sorted(intervals):
        if current_end is None or start > current_end:
            if current_end is not None:
                total += current_end - current_start
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    if current_end is not None:
        total += current_end - current_start
    return total


def goodput_of(steps: list[StepRecord], sessions: list[tuple[float, float]], recoveries: list[Recovery]) -> Goodput:
    return Goodput(
        wall_s=sum(end - start for start, end in sessions),
        useful_s=sum(r.values.get("dt", 0.0) for r in steps),
        lost_s=_union_length([(r.progress_at, r.regained_at) for r in recoveries]),
        detection_s=sum(r.detection_s for r in recoveries),
        restart_s=sum(r.restart_s for r in recoveries),
        redo_s=sum(r.redo_s for r in recoveries),
        failures=len(recoveries),
    )


def _recorded_verdict(name: str, state: dict[str, Any]) -> str:
    """``gpt2sup status``'s word for a file no event judged (the same vocabulary in both views)."""
    if name == state.get("newest_checkpoint"):
        reason = state.get("newest_checkpoint_reason")
        if state.get("newest_checkpoint_valid") is True:
            return f"valid ({reason})" if reason else "valid"
        if state.get("newest_checkpoint_valid") is False:
            return f"INVALID: {reason or 'no reason recorded'}"
    return "not validated (no restart needed it; `gpt2sup verify` checks it)"


def _supervisor_state(run: RunDir) -> dict[str, Any]:
    data = read_json(run.supervisor_state)
    return data if isinstance(data, dict) else {}


def _max_steps(run: RunDir) -> int | None:
    from shared.heartbeat import read_heartbeat

    for path in run.list_heartbeats():
        beat = read_heartbeat(path)
        if beat is not None and beat.max_steps is not None and beat.max_steps > 0:
            return beat.max_steps
    return None


def _run_events(run: RunDir) -> list[dict[str, Any]]:
    """``events.jsonl`` in time order. A multi-node run's nodes can share one file (each record
    names its ``node``); every node sees the same failures, so the run's history is one node's:
    node 0's, or the lowest node's in a node-local directory of another node."""
    records = read_jsonl(run.events)
    first = min((n for e in records if isinstance(n := e.get("node"), int)), default=None)
    events = [e for e in records if e.get("node") in (None, first)]
    return sorted(events, key=lambda e: finite_number(e.get("time")) or 0.0)


def measure_goodput(log_dir: Path | str, *, live_until: float | None = None) -> Goodput | None:
    """The goodput alone (what ``gpt2sup status`` shows); None for a directory with no steps yet."""
    run = RunDir.at(log_dir)
    steps = step_records(read_jsonl(run.metrics))
    if not steps:
        return None
    events = _run_events(run)
    sessions = sessions_of(events, steps, live_until)
    end_of_time = sessions[-1][1] if sessions else steps[-1].time
    return goodput_of(steps, sessions, recoveries_of(events, _Timeline(steps), end_of_time))


def load_history(log_dir: Path | str, *, live_until: float | None = None) -> RunHistory:
    """Everything the report shows. ``live_until``: "now" for a run that is still going."""
    run = RunDir.at(log_dir)
    steps = step_records(read_jsonl(run.metrics))
    events = _run_events(run)
    sessions = sessions_of(events, steps, live_until)
    timeline = _Timeline(steps)
    end_of_time = sessions[-1][1] if sessions else (steps[-1].time if steps else 0.0)
    recoveries = recoveries_of(events, timeline, end_of_time)
    state = _supervisor_state(run)
    return RunHistory(
        log_dir=run.root,
        steps=steps,
        events=events,
        sessions=sessions,
        faults=faults_of(events, timeline, run.naming()),
        recoveries=recoveries,
        checkpoints=checkpoint_rows(run, events, timeline, state),
        goodput=goodput_of(steps, sessions, recoveries),
        max_steps=_max_steps(run),
        state=state.get("state") if isinstance(state.get("state"), str) else None,
    )


def format_seconds(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h07m``: short enough for one status line."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
