"""``gpt2sup status``: the operator's glance at a run, read only from files.

It must answer in a fraction of a second while a job is training, so it imports neither torch nor
any supervisor module that would (the snapshot and dashboard modules are torch-free by contract).
"""
from __future__ import annotations

import json
import sys
import time

import click

from shared.exit_codes import StatusExit, exit_status_epilog
from supervisor.views.snapshot import RunSnapshot, collect_snapshot


def _print_once(snapshot: RunSnapshot, as_json: bool, is_tty: bool) -> None:
    # Imported here so `--json` in a script does not pay for rich.
    if as_json:
        click.echo(json.dumps(snapshot.to_dict(), indent=2, sort_keys=True, default=str))
        return
    from supervisor.views.dashboard import render_panel, status_lines

    if is_tty:
        from rich.console import Console

        Console().print(render_panel(snapshot))
    else:
        for line in status_lines(snapshot):
            click.echo(line)


def _watch(log_dir: str, as_json: bool, is_tty: bool, interval: float, max_updates: int | None) -> None:
    """Redraw until Ctrl-C (or ``max_updates`` redraws, for tests and scripts)."""
    count = 0
    if is_tty and not as_json:
        from rich.console import Console
        from rich.live import Live

        from supervisor.views.dashboard import render_panel

        with Live(console=Console(), auto_refresh=False) as live:
            while True:
                live.update(render_panel(collect_snapshot(log_dir, with_goodput=True)), refresh=True)
                count += 1
                if max_updates is not None and count >= max_updates:
                    return
                time.sleep(interval)
    while True:
        snapshot = collect_snapshot(log_dir, with_goodput=True)
        if as_json:
            click.echo(json.dumps(snapshot.to_dict(), sort_keys=True, default=str))
        else:
            from supervisor.timestamps import utc_timestamp
            from supervisor.views.dashboard import status_lines

            stamp = utc_timestamp(snapshot.time)
            for line in status_lines(snapshot):
                click.echo(f"{stamp} {line}")
        sys.stdout.flush()
        count += 1
        if max_updates is not None and count >= max_updates:
            return
        time.sleep(interval)


@click.command("status", epilog=exit_status_epilog(StatusExit, "Exit codes:"))
@click.option(
    "--log-dir", default="log", show_default=True, type=click.Path(file_okay=False),
    help="Run directory to inspect.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the snapshot as JSON (for scripts).")
@click.option("--watch", is_flag=True, help="Keep refreshing until Ctrl-C (waits for a run to appear).")
@click.option(
    "--interval", default=2.0, show_default=True, type=click.FloatRange(min=0.1),
    help="Seconds between refreshes with --watch.",
)
@click.option("--max-updates", type=click.IntRange(min=1), default=None, hidden=True)
def status(log_dir: str, as_json: bool, watch: bool, interval: float, max_updates: int | None) -> None:
    """Show a run at a glance: alive or not, completed steps / max and ETA, loss and val loss,
    tokens/s, heartbeat age and hang timeout per rank, restarts and the last failure, goodput
    (training time / supervised time, and the time lost to failures), the newest replay check
    after a resume, checkpoints and their validation, disk. `gpt2sup report` draws the whole history.

    Reads only files in the run directory (never imports torch), so it is safe and quick to run
    while training. Works when the supervisor is dead and on a bare `torchrun` run.

    \b
    Verdicts: running, finished, finished without checkpoint, stopped, gave up, refused,
              crashed, dead (supervisor gone, run not finished), bare worker (no supervisor),
              no run. An ended run shows the supervisor's exit code: stopped (exit 4).
    """
    is_tty = sys.stdout.isatty()
    if watch:
        try:
            _watch(log_dir, as_json, is_tty, interval, max_updates)
        except KeyboardInterrupt:
            pass
        sys.exit(StatusExit.SHOWN)

    snapshot = collect_snapshot(log_dir, with_goodput=True)
    if not snapshot.has_run and not as_json:
        from supervisor.views.dashboard import no_run_line

        click.echo(no_run_line(snapshot), err=True)
        sys.exit(StatusExit.NO_RUN)
    _print_once(snapshot, as_json, is_tty)
    sys.exit(StatusExit.SHOWN if snapshot.has_run else StatusExit.NO_RUN)
