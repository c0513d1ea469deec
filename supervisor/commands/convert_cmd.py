"""``gpt2sup convert OLD NEW``: rewrite a build-nanogpt checkpoint in gpt2sup's format.

Files written by the build-nanogpt trainer (docs/checkpoints.md shows its dict) pickle the model
config as a dataclass and numpy's RNG state as numpy objects. gpt2sup reads them anyway
(``shared.checkpoint_loading``: stand-ins, no code from the file runs); converting once makes a
file that plain ``torch.load(weights_only=True)`` reads anywhere, with ``format_version``.

Steps: load OLD safely and normalise it; write NEW atomically (``NEW.tmp``, fsync, rename); then
validate NEW exactly as ``gpt2sup verify`` does (the worker's restore included). A NEW that does
not validate is removed, so a failed conversion never leaves a file that looks like a checkpoint.
torch is imported only when the command runs.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from shared.atomic_io import fsync_path
from shared.exit_codes import ConvertExit, exit_status_epilog
from shared.run_dir import TMP_SUFFIX
from supervisor.checkpoints.checkpoint_validation import validate_checkpoint
from supervisor.commands.verify_cmd import format_line


def _fail(message: str, code: int = ConvertExit.NOT_CONVERTED) -> None:
    click.echo(f"gpt2sup convert: {message}", err=True)
    sys.exit(code)


@click.command(
    "convert",
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=(
        exit_status_epilog(ConvertExit) + "\n"
        "\b\nExamples:\n"
        "  gpt2sup convert old_run/model_05000.pt log/model_05000.pt\n"
        "  gpt2sup run -- --resume --checkpoint_path log/model_05000.pt"
    ),
)
@click.argument("old", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("new", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite NEW if it exists.")
def convert(old: Path, new: Path, force: bool) -> None:
    """Rewrite checkpoint OLD (e.g. from the build-nanogpt trainer) in gpt2sup's format as NEW.

    The config dataclass becomes a plain dict, numpy's and Python's RNG states become lists and
    tensors, and the data-loader position (current_shard/current_position) gets gpt2sup's names.
    Nothing from OLD is ever executed: a file whose pickle asks for anything else is refused.
    NEW is checked like `gpt2sup verify NEW` before the command reports success.
    """
    if new.exists() and not force:
        _fail(f"{new} exists; pass --force to overwrite it", ConvertExit.USAGE)
    if old.resolve() == new.resolve():
        _fail("OLD and NEW are the same file; write NEW elsewhere", ConvertExit.USAGE)
    import torch

    from shared.checkpoint_loading import (
        GUIDE_FORMAT,
        CheckpointLoadError,
        load_checkpoint,
    )

    try:
        checkpoint = load_checkpoint(old)
    except (CheckpointLoadError, OSError) as error:
        _fail(f"cannot convert {old}: {error}")
    if not isinstance(checkpoint, dict):
        _fail(f"cannot convert {old}: it holds a {type(checkpoint).__name__}, not a checkpoint dict")
    source = checkpoint.pop("source_format", None)
    if source == GUIDE_FORMAT:
        checkpoint["converted_from"] = {"format": GUIDE_FORMAT, "file": old.name}
    staging = new.with_name(new.name + TMP_SUFFIX)
    try:
        new.parent.mkdir(parents=True, exist_ok=True)
        torch.save(checkpoint, str(staging))
        fsync_path(staging)
        os.replace(staging, new)
        fsync_path(new.parent)
    except (OSError, RuntimeError) as error:
        staging.unlink(missing_ok=True)
        _fail(f"cannot write {new}: {error}")
    result = validate_checkpoint(new)
    click.echo(format_line(result))
    if not result.ok:
        new.unlink(missing_ok=True)
        _fail(f"{new} did not validate and was removed: {result.reason}")
    what = f"converted from the {GUIDE_FORMAT} format" if source == GUIDE_FORMAT else "already in gpt2sup's format; rewritten"
    click.echo(f"{old} -> {new}: {what}")
    sys.exit(ConvertExit.CONVERTED)
