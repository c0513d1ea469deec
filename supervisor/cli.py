"""``gpt2sup``: the command-line front door.

Sub-commands are imported lazily, only when invoked, so ``gpt2sup status`` never pays for the
modules (and never imports torch) that ``gpt2sup run`` or ``verify`` need.
"""
from __future__ import annotations

import importlib
import sys

import click

from shared.exit_codes import SupervisorExit
from supervisor.output_guard import guard_console

# command name -> (module, attribute, one-line help shown in `gpt2sup --help`)
_COMMANDS: dict[str, tuple[str, str, str]] = {
    "run": ("supervisor.commands.run_cmd", "run", "Launch torchrun workers and keep them alive."),
    "status": ("supervisor.commands.status_cmd", "status", "Show a run at a glance."),
    "stop": ("supervisor.commands.stop_cmd", "stop", "Ask a running supervisor to stop cleanly."),
    "verify": ("supervisor.commands.verify_cmd", "verify", "Check that checkpoints are sound."),
    "convert": ("supervisor.commands.convert_cmd", "convert", "Rewrite a build-nanogpt checkpoint in gpt2sup's format."),
    "export": ("supervisor.commands.export_cmd", "export", "Write a checkpoint as a Hugging Face GPT-2 directory."),
    "report": ("supervisor.commands.report_cmd", "report", "Write a run's curves and fault history as one HTML page."),
}


class LazyGroup(click.Group):
    """A click group whose commands live in modules imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = _COMMANDS.get(cmd_name)
        if entry is None:
            return None
        module_name, attribute, _ = entry
        return getattr(importlib.import_module(module_name), attribute)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Short help without importing every command module.
        rows = [(name, entry[2]) for name, entry in _COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="gpt2sup")
def cli() -> None:
    """Fault-tolerant supervisor for GPT-2 pre-training.

    \b
    gpt2sup run --max-restarts 10     train, surviving crashes, hangs and full disks
    gpt2sup status                    how is the run in ./log doing?
    gpt2sup verify log/model_00500.pt is this checkpoint sound?
    gpt2sup stop                      save at the next step and exit
    gpt2sup report                    log/report.html: curves, faults, goodput

    Exit codes of run: 0 finished, 1 internal error, 2 refused or bad usage, 3 gave up,
    4 stopped on request (Ctrl-C, SIGTERM, SIGHUP, `gpt2sup stop`), 5 finished but the final
    checkpoint could not be saved, 6 a checkpoint's format is newer than this gpt2sup reads,
    7 finished but the final checkpoint is NOT in the --checkpoint-uri store.
    verify: 0 all OK, 1 a check failed, 2 bad usage, 3 some inconclusive, 4 some in a newer
    format (unsupported), 5 a directory holds no checkpoint yet. convert: 0 written and valid, 1 not converted, 2 bad usage. export: 0 written,
    1 not exported, 2 bad usage. report: 0 written, 1 no run, 2 bad usage, 3 not written. Each
    command's --help says more.
    """


def main() -> None:
    """Console-script entry point: never let a traceback reach the user.

    Console output is guarded first: a closed pipe or terminal must not change an exit code.
    """
    guard_console()
    try:
        cli.main(standalone_mode=True)
    except KeyboardInterrupt:
        click.echo("gpt2sup: interrupted", err=True)
        sys.exit(int(SupervisorExit.STOPPED))


if __name__ == "__main__":
    main()
