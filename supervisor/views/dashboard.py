"""How a run looks to a person: the rich live panel on a terminal, plain timestamped lines off one.

Both ``gpt2sup run`` (through :func:`make_reporter`) and ``gpt2sup status`` draw from the same
:class:`~supervisor.views.snapshot.RunSnapshot` with the same formatters here, so the panel a user
watches during a run and the one ``status`` prints never disagree. Off a terminal (nohup, CI,
a pipe) colour and cursor tricks are noise in a log file, hence plain lines, rate-limited so a
multi-day run does not write a progress line every monitor interval.
"""
from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import IO

from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from shared.vocabulary import RankStatus
from supervisor import policy
from supervisor.timestamps import utc_timestamp
from supervisor.views.snapshot import (
    ACTIVE_VERDICTS,
    RankInfo,
    RemoteInfo,
    ReplayCheckInfo,
    RunSnapshot,
    RunVerdict,
    SupervisorInfo,
)

DEFAULT_PLAIN_INTERVAL_S = 30.0

VERDICT_STYLE = {
    RunVerdict.RUNNING: "bold green",
    RunVerdict.FINISHED: "bold green",
    RunVerdict.FINISHED_WITHOUT_CHECKPOINT: "bold red",
    RunVerdict.STOPPED: "bold yellow",
    RunVerdict.GAVE_UP: "bold red",
    RunVerdict.REFUSED: "bold red",
    RunVerdict.CRASHED: "bold red",
    RunVerdict.DEAD: "bold red",
    RunVerdict.BARE_WORKER: "bold cyan",
    RunVerdict.NO_RUN: "dim",
}


# --- formatting ----------------------------------------------------------------------------------
def format_bytes(n: float | None) -> str:
    """Decimal units (kB, MB, GB: powers of 1000), the same as ``gpt2sup verify``, ``gpt2sup run``
    and the worker print, so one checkpoint has one size wherever it is shown."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} PB"  # pragma: no cover - loop always returns


def format_duration(seconds: float | None) -> str:
    """``h:mm:ss`` (hours keep counting past a day: a 3-day ETA reads 72:00:00)."""
    if seconds is None:
        return "-"
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def format_age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.1f}s" if seconds < 60 else format_duration(seconds)


def format_rate(tokens_per_s: float | None) -> str:
    return "-" if tokens_per_s is None else f"{tokens_per_s:,.0f}"


def format_loss(loss: float | None) -> str:
    return "-" if loss is None else f"{loss:.4f}"


def format_percent_used(fraction: float) -> str:
    """Rounded up, as ``df`` rounds Use%: a disk that is 99.1% full never reads 99%."""
    return f"{math.ceil(fraction * 100 - 1e-9)}%"


def _step_text(snapshot: RunSnapshot) -> str:
    """Completed steps out of all: ``60/60`` for a finished run, ``starting`` before step one."""
    progress = snapshot.progress
    if progress is None:
        return "-"
    done = progress.completed_steps
    if done is None:
        return "starting"
    return f"{done}/{progress.max_steps}" if progress.max_steps else str(done)


def _rank_step_text(rank: RankInfo) -> str:
    return "starting" if rank.step < 0 else str(rank.step + 1)


def _restarts_text(snapshot: RunSnapshot) -> str | None:
    sup = snapshot.supervisor
    return None if sup is None else f"{sup.restarts_used}/{sup.max_restarts}"


def _val_text(snapshot: RunSnapshot) -> str | None:
    progress = snapshot.progress
    if progress is None:
        return None
    parts = []
    if progress.val_loss is not None:
        parts.append(f"val {format_loss(progress.val_loss)} (step {progress.val_step})")
    if progress.hellaswag is not None:
        parts.append(f"hella {progress.hellaswag:.4f} (step {progress.hellaswag_step})")
    return " ".join(parts) or None


def _failure_text(snapshot: RunSnapshot) -> str | None:
    sup = snapshot.supervisor
    if sup is None or not sup.last_failure_reason:
        return None
    recovered = " (recovered)" if sup.last_failure_recovered else ""
    return f"{sup.last_failure_kind}{recovered}: {sup.last_failure_reason}"


def replay_text(check: ReplayCheckInfo) -> str:
    """The worker's proof (or disproof) that a resume was exact, in one line."""
    where = f"after the resume at step {check.resumed_step}" if check.resumed_step is not None else "after a resume"
    if check.equal:
        return f"{check.steps_compared} re-done step(s) {where} matched the losses logged before"
    mismatch = check.first_mismatch or {}
    detail = (
        f"step {mismatch.get('step')}: loss {mismatch.get('before')} before, {mismatch.get('after')} after"
        if mismatch else (check.message or "no details recorded")
    )
    return f"MISMATCH {where}, {detail} — the resume was not exact"


def progress_line(snapshot: RunSnapshot) -> str:
    """One line: ``step 120/300 loss 5.1234 val 5.2000 (step 99) 12,345 tok/s eta 0:01:10 restarts 1/10``."""
    progress = snapshot.progress
    parts = [f"step {_step_text(snapshot)}"]
    if progress is not None:
        parts.append(f"loss {format_loss(progress.loss)}")
        val = _val_text(snapshot)
        if val is not None:
            parts.append(val)
        parts.append(f"{format_rate(progress.tokens_per_s)} tok/s")
        parts.append(f"eta {format_duration(progress.eta_s)}")
    restarts = _restarts_text(snapshot)
    if restarts is not None:
        parts.append(f"restarts {restarts}")
    return " ".join(parts)


def _checkpoint_text(snapshot: RunSnapshot) -> str:
    ck = snapshot.checkpoints
    if ck.count == 0:
        text = "none"
    else:
        text = f"{ck.count} ({format_bytes(ck.total_bytes)}), newest {ck.newest_name} (step {ck.newest_step}, {format_bytes(ck.newest_bytes)})"
        if ck.newest_valid is True:
            text += " valid"
        elif ck.newest_valid is False:
            text += f" INVALID: {ck.newest_reason or 'no reason recorded'}"
        elif snapshot.verdict in ACTIVE_VERDICTS:
            text += " not validated yet"
        else:  # nothing will validate it now: say how to
            text += " not validated by the supervisor (`gpt2sup verify` checks it)"
    if ck.quarantined:
        text += f", {ck.quarantined} quarantined"
    return text


def _supervisor_text(snapshot: RunSnapshot, *, with_restarts: bool = True) -> str:
    if snapshot.supervisor is None and snapshot.supervisor_unreadable is not None:
        return f"unreadable (supervisor.json: {snapshot.supervisor_unreadable})"
    if snapshot.supervisor is None:
        return "none (no supervisor.json)"
    return supervisor_info_text(snapshot.supervisor, with_restarts=with_restarts)


def supervisor_info_text(sup: SupervisorInfo, *, with_restarts: bool = True) -> str:
    alive = {True: "alive", False: "not running", None: f"on {sup.hostname}, cannot check"}[sup.alive]
    text = f"pid {sup.pid} {alive}, state {sup.state}, attempt {sup.attempt}"
    if with_restarts:  # the panel has a row of its own for them
        text += f", restarts {sup.restarts_used}/{sup.max_restarts}"
    return text


# A rank is called out as the quietest only when its heartbeat is this much older than the
# freshest one; otherwise ranks beating in lock-step would get an arbitrary, alarming mark.
QUIET_SPREAD_S = 1.0


def _marked_quiet_rank(snapshot: RunSnapshot) -> int | None:
    active = [r for r in snapshot.ranks if r.status == RankStatus.RUNNING]
    if len(active) < 2:
        return None
    quietest = max(active, key=lambda r: r.age_s)
    freshest = min(r.age_s for r in active)
    return quietest.rank if quietest.age_s - freshest > QUIET_SPREAD_S else None


def _timeout_text(rank: RankInfo) -> str:
    return "-" if rank.phase_timeout_s is None else f"{rank.phase_timeout_s:g}s"


def _compute_text(rank: RankInfo) -> str:
    return "-" if rank.compute_median_s is None else f"{rank.compute_median_s * 1000:.1f}ms"


def straggler_text(rank: RankInfo) -> str | None:
    """``rank 1 on gpu-07 is a straggler: 62.0 ms of compute per step, 2.10x ...`` or None."""
    s = rank.straggler
    if s is None:
        return None
    return policy.Straggler(rank.rank, s.median_s, s.others_median_s, s.ratio).describe(rank.hostname)


def _rank_line(rank: RankInfo, quietest: int | None) -> str:
    mark = " (quietest)" if quietest is not None and rank.rank == quietest else ""
    mark += f" STRAGGLER ({rank.straggler.ratio:.2f}x)" if rank.straggler is not None else ""
    timeout = f" (timeout {_timeout_text(rank)})" if rank.phase_timeout_s is not None else ""
    host = f" on {rank.hostname}" if rank.hostname else ""
    host += f" (node {rank.node})" if rank.node is not None else ""
    compute = f" compute {_compute_text(rank)}/step" if rank.compute_median_s is not None else ""
    return (
        f"rank {rank.rank}{host} pid {rank.pid} {'alive' if rank.pid_alive else 'gone'} "
        f"phase {rank.phase} status {rank.status} steps {_rank_step_text(rank)} "
        f"heartbeat {format_age(rank.age_s)} ago{timeout} loss {format_loss(rank.loss)} "
        f"{format_rate(rank.tokens_per_s)} tok/s{compute}{mark}"
    )


def _disk_text(snapshot: RunSnapshot) -> str:
    disk = snapshot.disk
    if disk is None:
        return "unknown"
    return (
        f"{format_bytes(disk.used_bytes)} used of {format_bytes(disk.total_bytes)} "
        f"({format_percent_used(disk.used_fraction)}), {format_bytes(disk.free_bytes)} free"
    )


def no_run_line(snapshot: RunSnapshot) -> str:
    where = snapshot.log_dir.rstrip("/") + "/"
    if not snapshot.exists:
        return f"no run in {where}: the directory does not exist"
    return f"no run in {where}: no heartbeats, checkpoints or supervisor.json"


def status_lines(snapshot: RunSnapshot) -> list[str]:
    """``gpt2sup status`` off a terminal: plain, grep-able lines."""
    if not snapshot.has_run:
        return [no_run_line(snapshot)]
    progress = snapshot.progress
    lines = [f"run {snapshot.log_dir}: {snapshot.verdict_text()}"]
    lines.append(f"supervisor: {_supervisor_text(snapshot)}")
    lines.extend(f"node {node} supervisor: {supervisor_info_text(info)}" for node, info in sorted(snapshot.nodes.items()))
    if snapshot.supervisor is not None and snapshot.supervisor.rendezvous:
        lines.append(f"rendezvous: {snapshot.supervisor.rendezvous}")
    if snapshot.supervisor is not None and snapshot.supervisor.script_hang_detection:
        lines.append(f"hang detection: {snapshot.supervisor.script_hang_detection}")
    if progress is not None:
        pct = f" ({progress.fraction:.1%})" if progress.fraction is not None else ""
        val = _val_text(snapshot)
        lines.append(
            f"progress: step {_step_text(snapshot)}{pct} phase {progress.phase or '-'} "
            f"loss {format_loss(progress.loss)}{f' {val}' if val else ''} "
            f"{format_rate(progress.tokens_per_s)} tok/s eta {format_duration(progress.eta_s)}"
        )
    failure = _failure_text(snapshot)
    if failure is not None:
        lines.append(f"last failure: {failure}")
    if snapshot.goodput is not None:
        lines.append(snapshot.goodput.one_line().replace("goodput ", "goodput: ", 1))
    if snapshot.replay_check is not None:
        prefix = "replay check" if snapshot.replay_check.equal else "WARNING: replay check"
        lines.append(f"{prefix}: {replay_text(snapshot.replay_check)}")
    quietest = _marked_quiet_rank(snapshot)
    lines.extend(f"WARNING: straggler: {text}" for r in snapshot.ranks if (text := straggler_text(r)))
    lines.extend(_rank_line(r, quietest) for r in snapshot.ranks)
    lines.append(f"checkpoints: {_checkpoint_text(snapshot)}")
    if snapshot.remote is not None:
        lines.append(f"remote: {remote_text(snapshot.remote)}")
    lines.append(f"disk: {_disk_text(snapshot)}")
    return lines


# --- the rich panel --------------------------------------------------------------------------------
def _bar_row(completed: float, total: float, label: str, style: str = "bar.complete") -> Table:
    row = Table.grid(padding=(0, 1))
    row.add_column(width=32)
    row.add_column()
    row.add_row(ProgressBar(total=max(total, 1e-9), completed=completed, width=32, complete_style=style), label)
    return row


# Which rank columns go first when the terminal is narrow (an 80-column terminal cannot show all):
# a column is shown whole or not at all, never as `pha…`. rank, steps and heartbeat always stay.
DROP_FIRST = ("compute", "pid", "timeout", "tok/s", "loss", "status", "phase")
LEFT_COLUMNS = ("rank", "pid", "phase", "status")


class _FittedRanks:
    """The ranks table with the columns that fit the width rich gives it at render time."""

    def __init__(self, snapshot: RunSnapshot) -> None:
        self.snapshot = snapshot

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield _ranks_table(self.snapshot, options.max_width)


def _ranks_table(snapshot: RunSnapshot, max_width: int | None = None) -> Table:
    quietest = _marked_quiet_rank(snapshot)
    columns: dict[str, list[RenderableType]] = {name: [] for name in
                                                  ("rank", "pid", "phase", "status", "steps", "heartbeat")}
    if any(r.phase_timeout_s is not None for r in snapshot.ranks):
        columns["timeout"] = []
    columns["loss"], columns["tok/s"] = [], []
    with_compute = any(r.compute_median_s is not None for r in snapshot.ranks)
    if with_compute:
        columns["compute"] = []
    for r in snapshot.ranks:
        columns["rank"].append(str(r.rank))
        columns["pid"].append(Text(str(r.pid), style="" if r.pid_alive else "red strike"))
        columns["phase"].append(r.phase)
        columns["status"].append(r.status)
        columns["steps"].append(_rank_step_text(r))
        columns["heartbeat"].append(Text(format_age(r.age_s) + " ago", style="yellow" if r.rank == quietest else ""))
        if "timeout" in columns:
            columns["timeout"].append(_timeout_text(r))
        columns["loss"].append(format_loss(r.loss))
        columns["tok/s"].append(format_rate(r.tokens_per_s))
        if with_compute:
            straggler = f" straggler on {r.hostname or '?'}" if r.straggler is not None else ""
            columns["compute"].append(Text(_compute_text(r) + straggler, style="bold red" if straggler else ""))
    for name in DROP_FIRST:
        if max_width is None or _table_width(columns) <= max_width:
            break
        columns.pop(name, None)
    table = Table(box=None, padding=(0, 1), show_edge=False, header_style="bold")
    for name in columns:
        table.add_column(name, justify="left" if name in LEFT_COLUMNS else "right", no_wrap=True)
    for row in zip(*columns.values(), strict=True):
        table.add_row(*row)
    return table


def _table_width(columns: dict[str, list[RenderableType]]) -> int:
    """Cells of one line each, one space of padding on each side (``padding=(0, 1)``)."""
    return sum(max([len(name)] + [len(c) if isinstance(c, str) else c.cell_len  # type: ignore[attr-defined]
                                  for c in cells]) + 2 for name, cells in columns.items())


def _add_progress_rows(grid: Table, snapshot: RunSnapshot) -> None:
    """The step (a bar when the run's length is known) and loss rows, when the run has progress."""
    progress = snapshot.progress
    if progress is not None:
        if progress.fraction is not None and progress.max_steps:
            grid.add_row(
                "step",
                _bar_row(progress.fraction, 1.0, f"{_step_text(snapshot)}  {progress.fraction:.1%}", "cyan"),
            )
        else:
            grid.add_row("step", _step_text(snapshot))
        val = _val_text(snapshot)
        grid.add_row(
            "loss",
            Text.assemble(
                (format_loss(progress.loss), "bold"),
                f"   {val}" if val else "",
                f"   tok/s {format_rate(progress.tokens_per_s)}",
                f"   eta {format_duration(progress.eta_s)}",
                f"   phase {progress.phase or '-'}",
            ),
        )


def _add_supervisor_rows(grid: Table, snapshot: RunSnapshot) -> None:
    """The supervisor row, one row per node, and the restarts and last failure of this supervisor."""
    sup = snapshot.supervisor
    grid.add_row("supervisor", _supervisor_text(snapshot, with_restarts=False))
    for node, info in sorted(snapshot.nodes.items()):
        grid.add_row(f"node {node}", supervisor_info_text(info))
    if sup is not None:
        restarts_style = "red" if sup.restarts_used >= sup.max_restarts else ""
        grid.add_row("restarts", Text(f"{sup.restarts_used}/{sup.max_restarts}", style=restarts_style))
        if sup.script_hang_detection:
            style = "yellow" if sup.script_hang_detection.startswith("OFF") else ""
            grid.add_row("hang detection", Text(sup.script_hang_detection, style=style))
        failure = _failure_text(snapshot)
        if failure is not None:
            grid.add_row("last failure", Text(failure, style="dim" if sup.last_failure_recovered else "yellow"))


def _add_disk_row(grid: Table, snapshot: RunSnapshot) -> None:
    """The disk bar, when the disk was measured: yellow past 80 % used, red past 90 %."""
    disk = snapshot.disk
    if disk is not None:
        disk_style = "red" if disk.used_fraction > 0.9 else "yellow" if disk.used_fraction > 0.8 else "green"
        # The bar fills to df's Use% (used of used + available), the same number as its label.
        usable = disk.used_bytes + disk.free_bytes
        grid.add_row("disk", _bar_row(disk.used_bytes, usable, _disk_text(snapshot), disk_style))


def render_panel(snapshot: RunSnapshot) -> RenderableType:
    """The panel of the issue: progress bar, loss, tok/s, ETA, phase, per-rank heartbeat age,
    restarts, newest checkpoint, disk bar."""
    verdict_style = VERDICT_STYLE.get(snapshot.verdict, "bold")
    title = Text.assemble(("gpt2sup ", "bold"), (snapshot.log_dir, ""), " · ", (snapshot.verdict_text(), verdict_style))
    if not snapshot.has_run:
        return Panel(Text(no_run_line(snapshot)), title=title, title_align="left")

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    _add_progress_rows(grid, snapshot)
    _add_supervisor_rows(grid, snapshot)
    if snapshot.goodput is not None:
        grid.add_row("goodput", snapshot.goodput.one_line().removeprefix("goodput "))
    check = snapshot.replay_check
    if check is not None:
        grid.add_row("replay check", Text(replay_text(check), style="green" if check.equal else "bold red"))
    for rank in snapshot.ranks:
        text = straggler_text(rank)
        if text is not None:
            grid.add_row("straggler", Text(text, style="bold red"))
    if snapshot.ranks:
        grid.add_row("ranks", _FittedRanks(snapshot))
    ck_style = "red" if snapshot.checkpoints.newest_valid is False else ""
    grid.add_row("checkpoints", Text(_checkpoint_text(snapshot), style=ck_style))
    if snapshot.remote is not None:
        grid.add_row("remote", Text(remote_text(snapshot.remote), style="yellow" if snapshot.remote.last_error else ""))
    _add_disk_row(grid, snapshot)
    return Panel(grid, title=title, title_align="left")


def remote_text(remote: RemoteInfo) -> str:
    """``s3://b/p  committed step 11  lag 0 steps`` (+ uploading, last error): the store at a glance."""
    committed = f"step {remote.newest_committed_step}" if remote.newest_committed_step is not None else "nothing yet"
    parts = [remote.uri, f"committed {committed}"]
    if remote.upload_lag_steps is not None:
        parts.append(f"lag {remote.upload_lag_steps} step{'s' if remote.upload_lag_steps != 1 else ''}")
    if remote.uploading:
        parts.append(f"uploading {remote.uploading}")
    if remote.skipped:
        parts.append(f"{len(remote.skipped)} skipped")
    if remote.last_error:
        parts.append(f"last upload error: {remote.last_error}")
    return "  ".join(parts)


# --- reporters used by `gpt2sup run` -----------------------------------------------------------------
class Reporter:
    """What the run loop talks to: ``update`` every monitor interval, ``event`` per event."""

    def update(self, snapshot: RunSnapshot) -> None:
        raise NotImplementedError

    def event(self, line: str) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Stop drawing; safe to call twice."""


class PlainReporter(Reporter):
    """Timestamped lines for logs: every event, and a progress line at most every ``interval_s``."""

    def __init__(
        self,
        stream: IO[str] | None = None,
        interval_s: float = DEFAULT_PLAIN_INTERVAL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._stream = stream
        self._interval_s = interval_s
        self._clock = clock
        self._last_progress_at: float | None = None
        self._pending: RunSnapshot | None = None

    def _write(self, text: str) -> None:
        stream = self._stream if self._stream is not None else sys.stdout
        stream.write(f"{utc_timestamp(self._clock())} {text}\n")
        stream.flush()

    def update(self, snapshot: RunSnapshot) -> None:
        now = self._clock()
        if self._last_progress_at is not None and now - self._last_progress_at < self._interval_s:
            self._pending = snapshot  # shown at close() if nothing newer is printed first
            return
        self._last_progress_at = now
        self._pending = None
        self._write(progress_line(snapshot))

    def event(self, line: str) -> None:
        self._write(line)

    def close(self) -> None:
        if self._pending is not None:
            snapshot, self._pending = self._pending, None
            self._write(progress_line(snapshot))


class LiveReporter(Reporter):
    """A ``rich.live.Live`` panel redrawn on each update; events scroll above it.

    Auto-refresh is off: the panel changes only when the run loop hands us a new snapshot, and a
    supervisor watching a multi-day run should not burn CPU redrawing an unchanged screen.
    """

    def __init__(self, console: Console | None = None) -> None:
        self._console = console if console is not None else Console()
        self._live: Live | None = None
        self._closed = False

    def _ensure_live(self, renderable: RenderableType) -> Live:
        if self._live is None:
            self._live = Live(
                renderable, console=self._console, auto_refresh=False, transient=False,
                redirect_stdout=False, redirect_stderr=False,
            )
            self._live.start(refresh=True)
        return self._live

    def update(self, snapshot: RunSnapshot) -> None:
        if self._closed:
            return
        panel = render_panel(snapshot)
        live = self._ensure_live(panel)
        live.update(panel, refresh=True)

    def event(self, line: str) -> None:
        text = Text.assemble((utc_timestamp(), "dim"), " ", line)
        if self._live is not None and not self._closed:
            self._live.console.print(text)
        else:
            self._console.print(text)

    def close(self) -> None:
        if self._live is not None and not self._closed:
            self._live.stop()
        self._closed = True


def make_reporter(
    is_tty: bool | None = None,
    *,
    console: Console | None = None,
    stream: IO[str] | None = None,
    plain_interval_s: float = DEFAULT_PLAIN_INTERVAL_S,
) -> Reporter:
    """The live panel on a terminal, plain lines otherwise (``is_tty=None``: ask stdout)."""
    if is_tty is None:
        target = stream if stream is not None else sys.stdout
        is_tty = bool(getattr(target, "isatty", lambda: False)())
    if is_tty:
        return LiveReporter(console)
    return PlainReporter(stream, interval_s=plain_interval_s)


__all__ = [
    "LiveReporter",
    "PlainReporter",
    "Reporter",
    "format_bytes",
    "format_duration",
    "make_reporter",
    "progress_line",
    "render_panel",
    "status_lines",
]
