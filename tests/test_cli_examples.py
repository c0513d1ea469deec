"""Every command line we show a user is one the real parsers accept.

A user copies examples from ``--help`` and from the README; an example that the command itself
rejects (an unknown flag, a model that does not exist) is the first thing they hit. This test
collects each ``gpt2sup ...`` and ``python -m worker...`` line from the help texts of ``gpt2sup``
and its subcommands, ``python -m worker.train_gpt2 --help``, ``python -m worker.prepare --help``
and from the code blocks of README.md and docs/*.md, and runs it through the real parsers without
running the job: click parses (and type-checks) ``gpt2sup`` lines with each command's callback
swapped for a recorder; worker lines go through the worker's own argparse parser, its settings
resolution and its model lookup (``gpt2sup run -- ARGS`` checks ARGS that way too).
"""
from __future__ import annotations

import contextlib
import io
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import pytest

from supervisor.cli import _COMMANDS, cli

REPO = Path(__file__).resolve().parents[1]
DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
WIDE = 1000  # render help without wrapping, so no example is cut across lines
OPERATORS = {"&&", "||", "|", ";", "&"}
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


@dataclass(frozen=True)
class Example:
    source: str  # where a user reads it
    line: str  # the command line as shown


# --- collecting the examples ------------------------------------------------------------------------
def click_help_texts() -> dict[str, str]:
    texts = {"gpt2sup --help": cli.get_help(click.Context(cli, info_name="gpt2sup", terminal_width=WIDE,
                                                            max_content_width=WIDE))}
    root = click.Context(cli, info_name="gpt2sup")
    for name in _COMMANDS:
        command = cli.get_command(root, name)
        assert command is not None, name
        ctx = click.Context(command, info_name=f"gpt2sup {name}", parent=root, terminal_width=WIDE,
                            max_content_width=WIDE)
        texts[f"gpt2sup {name} --help"] = command.get_help(ctx)
    return texts


def argparse_help_texts(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    from worker.prepare import build_parser as prepare_parser
    from worker.train_gpt2 import build_arg_parser

    monkeypatch.setenv("COLUMNS", str(WIDE))  # argparse wraps to the terminal width
    return {
        "python -m worker.train_gpt2 --help": build_arg_parser().format_help(),
        "python -m worker.prepare --help": prepare_parser().format_help(),
    }


def commands_in_help(text: str) -> Iterator[str]:
    """Backticked commands anywhere, and lines that start with a command (a description may
    follow after two or more spaces, as in an examples list)."""
    flat = " ".join(text.split())
    for match in re.finditer(r"`((?:gpt2sup|python3? -m worker\.)[^`]*)`", flat):
        yield match.group(1)
    for raw in text.splitlines():
        line = raw.strip()
        if re.match(r"^(gpt2sup|python3? -m worker\.)\S*( |$)", line):
            yield re.split(r"\s{2,}", line)[0]


def code_blocks(markdown: str) -> Iterator[str]:
    """Shell lines of fenced code blocks, backslash continuations joined."""
    for block in re.findall(r"^```(?:bash|sh|shell|console)?\n(.*?)^```", markdown, flags=re.DOTALL | re.MULTILINE):
        yield from block.replace("\\\n", " ").splitlines()


def commands_in_shell_line(line: str) -> Iterator[str]:
    """The commands of one shell line (split at ``&&``, ``|``, ``;``; comments and leading
    ``VAR=value`` assignments dropped) that are ours."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    segment: list[str] = []
    for token in [*lexer, ";"]:
        if token in OPERATORS:
            while segment and ENV_ASSIGNMENT.match(segment[0]):
                segment.pop(0)
            if _is_ours(segment):
                yield shlex.join(segment)
            segment = []
        else:
            segment.append(token)


def _is_ours(tokens: list[str]) -> bool:
    if tokens[:1] == ["gpt2sup"]:
        return True
    return (len(tokens) >= 3 and tokens[0] in ("python", "python3") and tokens[1] == "-m"
            and tokens[2].startswith("worker."))


def collect_examples(monkeypatch: pytest.MonkeyPatch) -> list[Example]:
    examples: list[Example] = []
    for source, text in {**click_help_texts(), **argparse_help_texts(monkeypatch)}.items():
        for found in commands_in_help(text):
            examples.extend(Example(source, cmd) for cmd in commands_in_shell_line(found))
    for path in DOC_FILES:
        for line in code_blocks(path.read_text(encoding="utf-8")):
            examples.extend(Example(path.relative_to(REPO).as_posix(), cmd) for cmd in commands_in_shell_line(line))
    unique = {(e.source, e.line): e for e in examples}
    return list(unique.values())


# --- checking one example with the real parsers ----------------------------------------------------
def check_worker_args(args: list[str], module: str = "worker.train_gpt2") -> str | None:
    """None if ``python -m worker.train_gpt2 ARGS`` (or ``worker.finetune_dolly``, the same
    settings with its own flags) would get past its argument checks."""
    from worker.finetune_dolly import build_finetune_parser
    from worker.model import build_config
    from worker.train_gpt2 import TrainConfig, WorkerError, build_arg_parser

    parser = build_finetune_parser() if module == "worker.finetune_dolly" else build_arg_parser()
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            namespace = parser.parse_args(args)
    except SystemExit as exc:
        return None if exc.code == 0 else (stderr.getvalue().strip().splitlines() or ["rejected"])[-1]
    try:
        config = TrainConfig.from_args(namespace, cuda_available=True)
        build_config(config.model, dropout=config.dropout)
    except (WorkerError, ValueError) as exc:
        return str(exc)
    return None


def check_prepare_args(args: list[str], module: str = "worker.prepare") -> str | None:
    from worker.hellaswag import build_parser as hellaswag_parser
    from worker.prepare import build_parser

    parser = hellaswag_parser() if module == "worker.hellaswag" else build_parser()
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(args)
    except SystemExit as exc:
        return None if exc.code == 0 else (stderr.getvalue().strip().splitlines() or ["rejected"])[-1]
    return None


def check_gpt2sup_args(args: list[str], monkeypatch: pytest.MonkeyPatch) -> str | None:
    """Parse with click exactly as ``gpt2sup`` does, but record the call instead of running it."""
    calls: list[tuple[str, dict]] = []
    root = click.Context(cli, info_name="gpt2sup")
    with monkeypatch.context() as patch:
        for name in _COMMANDS:
            command = cli.get_command(root, name)

            def record(*_args, _name=name, **kwargs) -> None:
                calls.append((_name, kwargs))

            patch.setattr(command, "callback", record)
        stderr = io.StringIO()
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(stderr):
                cli.main(args=args, prog_name="gpt2sup", standalone_mode=False)
        except click.ClickException as exc:
            return exc.format_message()
        except click.exceptions.Exit as exc:
            return None if exc.exit_code == 0 else f"exit {exc.exit_code}"
        except SystemExit as exc:  # `gpt2sup run` turns a usage error into one line and exit 2 itself
            return None if exc.code in (0, None) else (stderr.getvalue().strip().splitlines() or [f"exit {exc.code}"])[-1]
    for name, kwargs in calls:
        worker_args = [a for a in kwargs.get("worker_args") or () if a != "--"]
        if name == "run" and worker_args and worker_args[0].endswith(".py"):
            continue  # a user's own script (docs/own-trainer.md): its arguments are its own business
        if name == "run":
            problem = check_worker_args(list(kwargs.get("worker_args") or ()), kwargs.get("worker_module") or "")
            if problem is not None:
                return f"worker arguments after --: {problem}"
    return None


def check_example(line: str, monkeypatch: pytest.MonkeyPatch) -> str | None:
    tokens = shlex.split(line)
    if tokens[0] == "gpt2sup":
        return check_gpt2sup_args(tokens[1:], monkeypatch)
    module = tokens[2]
    if module in ("worker.train_gpt2", "worker.finetune_dolly"):
        return check_worker_args(tokens[3:], module)
    if module in ("worker.prepare", "worker.hellaswag"):
        return check_prepare_args(tokens[3:], module)
    return f"no such documented entry point: python -m {module}"


# --- the tests ---------------------------------------------------------------------------------------
def test_examples_are_found_in_every_help_text_and_document(monkeypatch: pytest.MonkeyPatch) -> None:
    sources = {e.source for e in collect_examples(monkeypatch)}
    for expected in ("gpt2sup --help", "gpt2sup run --help", "gpt2sup verify --help",
                     "python -m worker.prepare --help", "README.md", "docs/checkpoints.md", "docs/cli.md"):
        assert expected in sources, f"no command line found in {expected}: the extractor is broken"


def test_the_checker_rejects_what_the_real_commands_reject(monkeypatch: pytest.MonkeyPatch) -> None:
    assert check_example("gpt2sup run --max-restarts 3 -- --max_steps 10", monkeypatch) is None
    assert "no such option" in check_example("gpt2sup run --max-restart 3", monkeypatch).lower()
    assert "unknown model" in check_example("gpt2sup run -- --model d12", monkeypatch)
    assert "unrecognized arguments" in check_example("python -m worker.train_gpt2 --max_stpes 10", monkeypatch)
    assert "unknown model" in check_example("python -m worker.train_gpt2 --model gpt3", monkeypatch)
    assert check_example("python -m worker.prepare a.txt --shard_size 1000", monkeypatch) is None
    assert "invalid int" in check_example("python -m worker.prepare a.txt --shard_size lots", monkeypatch)
    assert "no such option" in check_example("gpt2sup status --logdir x", monkeypatch).lower()
    assert check_example("gpt2sup verify log --deep", monkeypatch) is None


def test_every_command_line_shown_to_users_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    failures = []
    for example in collect_examples(monkeypatch):
        problem = check_example(example.line, monkeypatch)
        if problem is not None:
            failures.append(f"{example.source}: `{example.line}`: {problem}")
    assert not failures, "command lines shown to users that the commands reject:\n" + "\n".join(failures)


# --- issue 19 §6: what a new user following the README top to bottom tripped over --------------------
# The README is a front page: its follow-on examples continue on the pages it links (the 124M run is in
# docs/cli.md, multi-node and SLURM in docs/scaling.md, the worker in docs/worker.md).
FOLLOW_ON_PAGES = ["README.md", "docs/cli.md", "docs/scaling.md", "docs/worker.md", "docs/troubleshooting.md"]


def _readme_lines() -> list[str]:
    return [line.strip() for page in FOLLOW_ON_PAGES for line in code_blocks((REPO / page).read_text())]


def test_the_readmes_follow_on_runs_each_get_their_own_log_dir() -> None:
    """The quickstart's run is in ./log; an example run with other arguments there (on the front
    page or a page it links to) is refused."""
    runs = [shlex.split(line.split("#")[0]) for line in _readme_lines() if line.startswith("gpt2sup run ")]
    dirs = []
    for tokens in runs:
        if "--" in tokens or "--worker" in tokens:  # a run with its own arguments: not the quickstart's
            assert "--log-dir" in tokens, f"`{shlex.join(tokens)}` targets ./log, which holds the quickstart run"
            dirs.append(tokens[tokens.index("--log-dir") + 1])
    assert dirs and len(dirs) == len(set(dirs)) and "log" not in dirs, dirs


def test_the_quickstart_installs_torch_as_its_text_says_and_runs_the_whole_suite() -> None:
    quickstart = (REPO / "README.md").read_text().split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    first_block = quickstart.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line for line in first_block.splitlines() if line and not line.startswith("#")]
    assert len(commands) == 2, commands
    for command in commands:  # torch first, the build the index serves, as the text below says
        assert command.startswith("pip install torch==2.13.0 && "), command
    assert "`pip install torch==2.13.0` takes the one your package index serves" in quickstart
    assert "Plain PyPI on Linux serves\n  the CUDA build instead: it runs on a CPU-only machine too" in quickstart
    assert commands[0].endswith("gpt2sup run")
    assert commands[1].endswith("python -m pytest -ra")  # what .ci/run runs: the whole suite
    assert 'python -m pytest -m "not slow"' in quickstart  # the inner loop, named right after
    assert re.search(r"300 steps, [^\n]*\d+ min[^\n]*on ", quickstart), "the step count and a measured time"
