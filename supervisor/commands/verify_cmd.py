"""``gpt2sup verify``: is this checkpoint sound? (the operator's instrument)

The checks live in ``shared.checkpoint_validation`` so the supervisor's pre-restart validation
and this command can never disagree. This module only expands paths, prints and picks the exit
code. It does not import torch: the load-probe child does.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from shared.checkpoint_validation import DEFAULT_PROBE_TIMEOUT, ValidationResult, validate_many
from shared.run_dir import step_from_checkpoint_name

EXIT_ALL_OK = 0
EXIT_SOME_FAILED = 1


def expand_paths(raw_paths: tuple[str, ...]) -> list[Path | ValidationResult]:
    """Files stay as given; a directory becomes its ``model_N.pt`` files sorted by step.

    A directory holding no checkpoint (or one that cannot be listed) becomes a ready-made
    failure, in its place in the output, rather than silently verifying nothing.
    """
    items: list[Path | ValidationResult] = []
    for raw in raw_paths:
        path = Path(raw)
        if not path.is_dir():
            items.append(path)
            continue
        found: list[tuple[int, Path]] = []
        try:
            for entry in path.iterdir():
                step = step_from_checkpoint_name(entry.name)
                if step is not None and entry.is_file():
                    found.append((step, entry))
        except OSError as error:
            items.append(ValidationResult(path=raw, ok=False, reason=f"cannot list directory: {error.strerror or error}"))
            continue
        if not found:
            items.append(ValidationResult(path=raw, ok=False, reason="directory holds no model_*.pt checkpoint"))
        items.extend(entry for _, entry in sorted(found, key=lambda item: item[0]))
    return items


def verify_all(raw_paths: tuple[str, ...], *, deep: bool, timeout: float) -> list[ValidationResult]:
    """Results in the order the paths were named (directories expanded in step order)."""
    items = expand_paths(raw_paths)
    validated = iter(validate_many([item for item in items if isinstance(item, Path)], deep=deep, probe_timeout=timeout))
    return [item if isinstance(item, ValidationResult) else next(validated) for item in items]


def _megabytes(size: int | None) -> str:
    return f"{size / 1e6:.1f} MB" if size is not None else "?"


def format_line(result: ValidationResult) -> str:
    """``OK   path  step N  S MB  crc Xs probe Ys`` or ``FAIL path  reason`` (styles off a TTY)."""
    if result.ok:
        crc = result.seconds("zip-crc") or 0.0
        probe = result.seconds("load-probe") or 0.0
        step = f"step {result.step}" if result.step is not None else "step ?"
        return (f"{click.style('OK  ', fg='green', bold=True)} {result.path}  {step}  "
                f"{_megabytes(result.size_bytes)}  crc {crc:.2f}s probe {probe:.1f}s")
    return f"{click.style('FAIL', fg='red', bold=True)} {result.path}  {result.reason}"


@click.command(
    "verify",
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=(
        "\b\nExit status:\n"
        "  0  every file passed\n"
        "  1  at least one file failed (or a directory held no checkpoint)\n"
        "  2  usage error (bad option, no PATH)\n"
        "\b\nExamples:\n"
        "  gpt2sup verify log/model_00500.pt\n"
        "  gpt2sup verify log --deep\n"
        "  gpt2sup verify log/latest_checkpoint.pt --json | jq '.[0].ok'"
    ),
)
@click.argument("paths", nargs=-1, required=True, metavar="PATH...")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of results (one object per file) instead of lines.")
@click.option("--deep", is_flag=True, help="Also check every tensor is finite (no NaN/inf) and each optimizer moment has its parameter's shape. Reads every tensor.")
@click.option("--timeout", "timeout", type=click.FloatRange(min=0, min_open=True), default=DEFAULT_PROBE_TIMEOUT,
              show_default=True, metavar="SECONDS", help="Give up on a load-probe that runs longer than this (the file fails).")
def verify(paths: tuple[str, ...], as_json: bool, deep: bool, timeout: float) -> None:
    """Check that checkpoint files are sound before you trust them.

    Each PATH is a checkpoint file or a directory; a directory means every model_N.pt in it,
    in step order. Checks run cheapest first and stop at the first failure:

    \b
    file       exists (symlinks followed, a dangling one reported), is a regular
               file, can be read
    size       not empty; not below half the median size of the other model_*.pt
               files in its directory (a copy cut short)
    zip-crc    torch.save's zip archive parses, holds data.pkl, and every member
               matches its stored CRC-32. torch.load checks no CRC: a flipped bit
               in a weight loads silently. Reads the whole file once.
    load-probe in a child process with a timeout, so a file that crashes or hangs
               the loader cannot take gpt2sup down: torch.load(weights_only=True,
               mmap=True) (never runs code from the file), required keys, format
               version, step agrees with the file name, parameter shapes agree
               with the config, size not below what the config's weights and
               optimizer moments need
    --deep     every model and optimizer tensor finite, head tied to wte, AdamW
               moments shaped like their parameters

    Prints one line per file: "OK   PATH  step N  SIZE  crc Xs probe Ys" or
    "FAIL PATH  REASON". Colour only on a terminal.
    """
    results = verify_all(paths, deep=deep, timeout=timeout)
    if as_json:
        click.echo(json.dumps([result.to_dict() for result in results], indent=2))
    else:
        for result in results:
            click.echo(format_line(result))
    sys.exit(EXIT_ALL_OK if results and all(result.ok for result in results) else EXIT_SOME_FAILED)
