"""``gpt2sup``: the command-line front door.

Sub-commands are imported lazily, only when invoked, so ``gpt2sup status`` never pays for the
modules (and never imports torch) that ``gpt2sup run`` or ``verify`` need.
"""
from __future__ import annotations

import importlib
import sys
import textwrap

import click

from shared.exit_codes import (
    HELP_WIDTH,
    ConvertExit,
    ExitCode,
    ExportExit,
    ReportExit,
    StatusExit,
    StopExit,
    SupervisorExit,
    VerifyExit,
    exit_code_summary,
)
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


# command name -> its exit codes (``gpt2sup --help`` lists them all)
_EXIT_CODES: dict[str, type[ExitCode]] = {
    "run": SupervisorExit, "status": StatusExit, "stop": StopExit, "verify": VerifyExit,
    "convert": ConvertExit, "export": ExportExit, "report": ReportExit,
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


def _exit_codes_epilog() -> str:
    """Every command's exit codes in one line each, from ``shared.exit_codes``."""
    lines = ["\b", "Exit codes (each command's --help says more):"]
    for name, codes in _EXIT_CODES.items():
        lines += textwrap.wrap(exit_code_summary(codes), HELP_WIDTH, initial_indent=f"  {name:<9}",
                               subsequent_indent=" " * 11)
    return "\n".join(lines)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]}, epilog=_exit_codes_epilog())
@click.version_option(package_name="gpt2sup")
def cli() -> None:
    """Fault-tolerant supervisor for GPT-2 pre-training.

    \b
    gpt2sup run --max-restarts 10     train, surviving crashes, hangs and full disks
    gpt2sup status                    how is the run in ./log doing?
    gpt2sup verify log/model_00500.pt is this checkpoint sound?
    gpt2sup stop                      save at the next step and exit
    gpt2sup report                    log/report.html: curves, faults, goodput
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
