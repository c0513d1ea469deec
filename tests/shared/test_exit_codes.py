"""The exit codes have one home (``shared.exit_codes``): README's table and every ``--help`` agree with it."""
from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from shared.exit_codes import (
    ConvertExit,
    ExitCode,
    ExportExit,
    PrepareExit,
    ProbeExit,
    ReportExit,
    StatusExit,
    StopExit,
    SupervisorExit,
    VerifyExit,
    WorkerExit,
    exit_status_epilog,
)

ROOT = Path(__file__).resolve().parents[2]
# Where the exit-code tables are: README's "## Exit codes" (the worker's may live in docs/worker.md).
EXIT_CODE_PAGES = (ROOT / "README.md", ROOT / "docs" / "worker.md")
# README's "command" cell -> the enum it documents
README_COMMANDS: dict[str, type[ExitCode]] = {
    "`gpt2sup run`": SupervisorExit,
    "`gpt2sup status`": StatusExit,
    "`gpt2sup verify`": VerifyExit,
    "`gpt2sup convert`": ConvertExit,
    "`gpt2sup export`": ExportExit,
    "`gpt2sup report`": ReportExit,
    "`gpt2sup stop`": StopExit,
    "`python -m worker.train_gpt2`": WorkerExit,
    "`python -m worker.prepare`": PrepareExit,
}
# command -> (module, click command) whose --help shows the generated table
CLI_COMMANDS: dict[type[ExitCode], tuple[str, str]] = {
    SupervisorExit: ("supervisor.commands.run_cmd", "run"),
    StatusExit: ("supervisor.commands.status_cmd", "status"),
    StopExit: ("supervisor.commands.stop_cmd", "stop"),
    VerifyExit: ("supervisor.commands.verify_cmd", "verify"),
    ConvertExit: ("supervisor.commands.convert_cmd", "convert"),
    ExportExit: ("supervisor.commands.export_cmd", "export"),
    ReportExit: ("supervisor.commands.report_cmd", "report"),
}


def readme_exit_codes() -> dict[str, set[int]]:
    """Each command's codes in the "## Exit codes" tables (a blank command cell continues the row
    above; a row whose codes are not plain numbers, such as a pointer to another page, is skipped)."""
    codes: dict[str, set[int]] = {}
    for page in EXIT_CODE_PAGES:
        if page.exists() and "\n## Exit codes\n" in (text := page.read_text(encoding="utf-8")):
            _add_table_codes(text.split("\n## Exit codes\n", 1)[1].split("\n## ", 1)[0], codes)
    return codes


def _add_table_codes(section: str, codes: dict[str, set[int]]) -> None:
    command = ""
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not re.fullmatch(r"\d+( / \d+)*", cells[1]):
            continue
        command = cells[0] or command
        codes.setdefault(command, set()).update(int(code) for code in cells[1].split(" / "))


def test_readme_lists_exactly_the_codes_of_each_enum():
    documented = readme_exit_codes()
    assert set(documented) == set(README_COMMANDS)
    for command, codes in README_COMMANDS.items():
        assert documented[command] == {code.value for code in codes}, command


@pytest.mark.parametrize("codes", [*README_COMMANDS.values(), ProbeExit])
def test_every_code_has_a_one_line_meaning(codes):
    for code in codes:
        assert code.meaning and "\n" not in code.meaning, code
        assert int(code) == code.value  # still a plain int to sys.exit and comparisons


@pytest.mark.parametrize("codes", list(CLI_COMMANDS))
def test_each_commands_help_shows_its_generated_table(codes):
    module, name = CLI_COMMANDS[codes]
    command = getattr(importlib.import_module(module), name)
    assert exit_status_epilog(codes, "X").split("\n", 2)[2] in command.epilog
    shown = CliRunner().invoke(command, ["--help"], terminal_width=200).output
    for code in codes:
        assert re.search(rf"^\s+{code.value}\s+{re.escape(code.meaning.split()[0])}", shown, re.MULTILINE), (name, code)
