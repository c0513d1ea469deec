"""Replay check: after a resume, does the run re-do the lost steps exactly as before?

A resume restarts from the newest checkpoint, so the steps between that checkpoint and the crash
are trained a second time. Their losses were logged the first time (``metrics.jsonl`` keeps the
full-precision float), so comparing each re-done step's loss bit for bit with the logged one
checks, in production and for free, the promise that a resume is exact. A difference means the
data, the code, the hardware or a nondeterministic kernel changed what the run computes.

A resume that changes the training math on purpose (a longer ``--max_steps``, which re-shapes
the LR schedule as documented, or a change allowed by ``--allow_config_change``) is not compared:
its re-done steps are meant to differ, and a mismatch blamed on "changed data, code, hardware"
would name the wrong cause. ``for_resume`` says so in one line naming the change instead.

``ReplayCheck`` is plain state: built from the logged lines before the logger drops them, fed one
``observe(step, loss)`` per step, and it hands its one ``ReplayReport`` to ``on_report`` as soon as
every logged step was re-done (or at ``finish()`` when training ended or stopped earlier).
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

WHY_IT_MATTERS = "changed data, code, hardware, or a nondeterministic kernel"


@dataclass(frozen=True)
class ReplayMismatch:
    step: int
    before: float  # the loss logged before the resume
    after: float  # the loss of the same step re-done after it

    def to_dict(self) -> dict[str, float | int]:
        return {"step": self.step, "before": self.before, "after": self.after}


@dataclass(frozen=True)
class ReplayReport:
    resumed_step: int
    steps_logged: int  # steps logged after the checkpoint before the resume
    steps_compared: int  # of those, how many were re-done
    mismatches: int
    first_mismatch: ReplayMismatch | None

    @property
    def equal(self) -> bool:
        return self.first_mismatch is None

    @property
    def message(self) -> str:
        """One line for the log and for ``gpt2sup status``."""
        span = f"{self.steps_compared} re-done step(s) after the resume from step {self.resumed_step}"
        if self.steps_compared < self.steps_logged:
            span += f" (of {self.steps_logged} logged before; training ended before the rest)"
        if self.first_mismatch is None:
            return f"replay check: {span}: every loss bitwise equal to the loss logged before the resume"
        m = self.first_mismatch
        return (f"WARNING: replay check: {self.mismatches} of {span} differ from the losses logged before "
                f"the resume; first at step {m.step}: {m.before!r} before, {m.after!r} now "
                f"({WHY_IT_MATTERS})")

    def event_details(self) -> dict:
        """The ``replay_check`` event's fields (events.jsonl)."""
        return {
            "source": "worker",
            "resumed_step": self.resumed_step,
            "steps_compared": self.steps_compared,
            "equal": self.equal,
            "first_mismatch": self.first_mismatch.to_dict() if self.first_mismatch else None,
            "message": self.message,
        }


class ReplayCheck:
    def __init__(self, resumed_step: int, logged: dict[int, float],
                 on_report: Callable[[ReplayReport], None] | None = None) -> None:
        self.resumed_step = resumed_step
        self.logged = {step: loss for step, loss in logged.items() if step > resumed_step}
        self.on_report = on_report
        self._compared = 0
        self._mismatches = 0
        self._first_mismatch: ReplayMismatch | None = None
        self._reported = False

    @classmethod
    def from_logged(cls, metrics_lines: Iterable[str], resumed_step: int,
                    on_report: Callable[[ReplayReport], None] | None = None) -> ReplayCheck:
        """From ``metrics.jsonl`` lines as they were before the resume truncated them.

        A half-written last line (the crash cut it) or a line that is not a step record is
        skipped; a step logged twice keeps its latest loss.
        """
        logged: dict[int, float] = {}
        for line in metrics_lines:
            if not line.endswith("\n"):
                continue
            try:
                record = json.loads(line)
                step, loss = int(record["step"]), float(record["loss"])
            except (ValueError, KeyError, TypeError):
                continue
            logged[step] = loss
        return cls(resumed_step, logged, on_report)

    @classmethod
    def from_metrics_file(cls, path: Path, resumed_step: int,
                          on_report: Callable[[ReplayReport], None] | None = None) -> ReplayCheck:
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                lines = handle.readlines()
        except FileNotFoundError:
            lines = []
        return cls.from_logged(lines, resumed_step, on_report)

    @classmethod
    def for_resume(cls, path: Path, resumed_step: int, on_report: Callable[[ReplayReport], None] | None,
                   math_changes: Sequence[str] = (), say: Callable[[str], None] = print) -> ReplayCheck:
        """The check for a resume from ``resumed_step``; ``math_changes`` are the allowed
        differences (one line each) that change what the re-done steps compute. With any, nothing
        is compared and one line names them as the cause (when there were steps to re-do)."""
        check = cls.from_metrics_file(path, resumed_step, on_report)
        if not math_changes or not check.logged:
            return check
        say(not_compared_message(resumed_step, len(check.logged), math_changes))
        return cls(resumed_step, {}, on_report)

    @property
    def complete(self) -> bool:
        """Every logged step has been re-done."""
        return self._compared == len(self.logged)

    def observe(self, step: int, loss: float) -> None:
        """Compare a re-done step's loss (the float as it will be logged) with the earlier one."""
        if self._reported or step not in self.logged:
            return
        before = self.logged[step]
        self._compared += 1
        if not _bitwise_equal(before, loss):
            self._mismatches += 1
            if self._first_mismatch is None:
                self._first_mismatch = ReplayMismatch(step, before, loss)
        if self.complete:
            self._publish()

    def finish(self) -> None:
        """Training ended or stopped: report what was compared, if not reported yet."""
        if not self._reported:
            self._publish()

    def report(self) -> ReplayReport | None:
        """The result so far; ``None`` when nothing was logged after the resumed step."""
        if not self.logged:
            return None
        return ReplayReport(self.resumed_step, len(self.logged), self._compared, self._mismatches,
                            self._first_mismatch)

    def _publish(self) -> None:
        self._reported = True
        report = self.report()
        if report is not None and self.on_report is not None:
            self.on_report(report)


def not_compared_message(resumed_step: int, steps_logged: int, math_changes: Sequence[str]) -> str:
    """Why the re-done steps after this resume are not compared with the losses logged before."""
    return (f"replay check: not compared: the {steps_logged} step(s) re-done after the resume from step "
            f"{resumed_step} are expected to differ from the losses logged before, because this resume "
            f"changes the training math: {'; '.join(math_changes)}")


def _bitwise_equal(a: float, b: float) -> bool:
    """Same float, bit for bit (``-0.0`` and ``0.0`` differ; a NaN equals the same NaN)."""
    return float(a).hex() == float(b).hex()


def event_publisher(events_path: Path, say: Callable[[str], None]) -> Callable[[ReplayReport], None]:
    """``on_report`` for the worker: print the line and append one ``replay_check`` event."""
    from shared.events import append_event
    from shared.vocabulary import EventKind

    def publish(report: ReplayReport) -> None:
        say(report.message)
        try:
            append_event(events_path, EventKind.REPLAY_CHECK, **report.event_details())
        except OSError as exc:  # the check's result is already printed; training goes on
            say(f"WARNING: could not record the replay check in {events_path}: {exc.strerror or exc}")

    return publish
