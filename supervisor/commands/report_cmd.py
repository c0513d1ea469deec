"""``gpt2sup report``: a run's curves and fault history as one HTML page to open or send.

Reads only the run directory (metrics.jsonl, events.jsonl, checkpoints' names and sizes,
supervisor.json), never imports torch, and is safe while the run trains. The page is written
atomically (``shared.atomic_io.write_text_atomic``) so a browser never opens half a report.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from shared.atomic_io import write_text_atomic
from shared.exit_codes import ReportExit, exit_status_epilog


def _fail(message: str, code: int) -> None:
    click.echo(f"gpt2sup report: {message}", err=True)
    sys.exit(code)


@click.command(
    "report",
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=(
        exit_status_epilog(ReportExit) + "\n"
        "\b\nExamples:\n"
        "  gpt2sup report                          # log/report.html\n"
        "  gpt2sup report --log-dir runs/a --out /tmp/a.html"
    ),
)
@click.option("--log-dir", default="log", show_default=True, type=click.Path(file_okay=False, path_type=Path),
              help="Run directory to report on.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="HTML file to write  [default: LOG_DIR/report.html]")
def report(log_dir: Path, out: Path | None) -> None:
    """Write one self-contained HTML page (no server, no network, no script) about a run:
    train/val loss, lr, tokens/s and HellaSwag against step and against wall time, with every fault
    on the same axes (crashes, hangs with links to their stacks, quarantined checkpoints, restarts,
    stops, disk warnings, replay checks) and the re-done steps shaded; a summary with wall time,
    time lost to faults (detection, restart, re-done steps) and goodput; the checkpoints with
    sizes and validation results.
    """
    from supervisor.views.run_history import load_history
    from supervisor.views.snapshot import collect_snapshot

    if not log_dir.is_dir():
        _fail(f"{log_dir} does not exist", ReportExit.NO_RUN)
    if not any((log_dir / name).exists() for name in ("metrics.jsonl", "events.jsonl")):
        _fail(f"{log_dir} holds no run (no metrics.jsonl or events.jsonl)", ReportExit.NO_RUN)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        _fail("drawing the curves needs matplotlib: pip install 'gpt2sup[report]'", ReportExit.NOT_WRITTEN)
    from supervisor.views.report_html import render_report

    supervisor = collect_snapshot(log_dir).supervisor
    live = supervisor is not None and supervisor.alive is True
    history = load_history(log_dir, live_until=time.time() if live else None)
    out = out if out is not None else log_dir / "report.html"
    page = render_report(history, out)
    try:
        write_text_atomic(out, page, create_parent=False)
    except OSError as exc:
        _fail(f"cannot write {out}: {exc.strerror or exc}", ReportExit.NOT_WRITTEN)
    click.echo(f"wrote {out} ({len(page.encode()) / 1024:.0f} KB): {history.goodput.one_line()}")
