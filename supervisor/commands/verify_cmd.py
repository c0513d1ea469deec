"""``gpt2sup verify``: is this checkpoint sound? (the operator's instrument)

The checks live in ``supervisor.checkpoints.checkpoint_validation`` so the supervisor's pre-restart
validation and this command can never disagree. This module only expands paths, prints and picks
the exit code. It does not import torch: the load-probe child does (one child for all files).
"""
from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import click

from shared.exit_codes import VerifyExit, exit_status_epilog
from shared.run_dir import RunDir, naming_of, scan_checkpoints
from shared.supervisor_state import read_supervisor_state
from shared.vocabulary import Verdict
from supervisor.checkpoints.checkpoint_selection import read_quarantine_record
from supervisor.checkpoints.checkpoint_validation import (
    ValidationResult,
    parse_probe_timeout,
    validate_many,
)
from supervisor.run_config import is_script

_DEEP_CHECKS = ("model-finite", "optimizer-shapes", "optimizer-finite")
_LABELS = {Verdict.VALID: ("OK  ", "green"), Verdict.INVALID: ("FAIL", "red"), Verdict.INCONCLUSIVE: ("INCONCLUSIVE", "yellow"),
           Verdict.UNSUPPORTED: ("UNSUPPORTED", "magenta"), Verdict.NO_CHECKPOINT: ("NO CHECKPOINT YET", "cyan")}


class ProbeTimeout(click.ParamType):
    """``auto`` or a finite number of seconds above 0 (None stands for ``auto``)."""

    name = "auto|SECONDS"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float | None:
        if value is None or isinstance(value, float):
            return value
        try:
            return parse_probe_timeout(value)
        except ValueError as error:
            self.fail(str(error), param, ctx)


def expand_paths(raw_paths: tuple[str, ...]) -> list[Path | ValidationResult]:
    """Files stay as given; a directory becomes its checkpoints (``scan_checkpoints``: regular
    ``model_N.pt`` files, symlinks not followed) sorted by step.

    A directory holding no checkpoint becomes a ready-made "no checkpoint yet" line (nothing
    failed: a run before its first save), one that cannot be listed a ready-made failure, each in
    its place in the output, rather than silently verifying nothing.
    """
    items: list[Path | ValidationResult] = []
    for raw in raw_paths:
        path = Path(raw)
        if not path.is_dir():
            items.append(path)
            continue
        try:
            found = scan_checkpoints(path)
        except OSError as error:
            items.append(ValidationResult(path=raw, ok=False, reason=f"cannot list directory: {error.strerror or error}"))
            continue
        if not found:
            items.append(ValidationResult(path=raw, ok=False, no_checkpoint=True,
                                          reason=f"no checkpoint yet: the directory holds no {naming_of(path).pattern} "
                                                 "(a run writes its first one at its first save)"))
        items.extend(file.path for file in found)
    return items


def is_store_uri(raw: str) -> bool:
    """``s3://...`` or ``file://...``: a --checkpoint-uri store, not a local file or directory."""
    return raw.startswith(("s3://", "file://"))


def expand_store(uri: str, scratch: Path) -> tuple[list[Path | ValidationResult], dict[Path, str]]:
    """Every committed checkpoint of the store, downloaded into ``scratch`` (its SHA-256 checked
    against its commit marker by the download), to be validated exactly like a local file.

    Returns the items in step order and, per downloaded file, the store key its line shows. A
    download that does not match its commit is a FAIL line; bad-marked and uncommitted names
    are reported on stderr and not counted (they are not checkpoints a run would resume from).
    """
    from shared.remote import IntegrityError, ObjectStoreError, open_store
    from shared.remote.records import COMMITTED

    items: list[Path | ValidationResult] = []
    keys: dict[Path, str] = {}
    try:
        store = open_store(uri)
        entries = sorted(store.inventory(), key=lambda e: e.step)
    except (ObjectStoreError, ValueError) as error:
        return [ValidationResult(path=uri, ok=False, reason=str(error))], keys
    committed = [e for e in entries if e.state == COMMITTED]
    for entry in entries:
        if entry.state != COMMITTED:
            why = f": {entry.bad_reason}" if entry.bad_reason else ""
            click.echo(f"SKIP {entry.key}  {entry.state}{why} (not a checkpoint a run resumes from)", err=True)
    if not committed:
        return [ValidationResult(path=uri, ok=False, no_checkpoint=True,
                                 reason="no committed checkpoint in the store yet")], keys
    for entry in committed:
        target = scratch / f"{len(keys)}"
        try:
            path = store.download(entry.step, target)
        except IntegrityError as error:
            items.append(ValidationResult(path=entry.key, ok=False, step=entry.step, reason=str(error)))
            continue
        except ObjectStoreError as error:
            items.append(ValidationResult(path=entry.key, ok=False, step=entry.step, inconclusive=True,
                                          reason=f"could not download: {error}"))
            continue
        keys[path] = entry.key
        items.append(path)
    return items, keys


def verify_all(raw_paths: tuple[str, ...], *, deep: bool, timeout: float | None) -> list[ValidationResult]:
    """Results in the order the paths were named (directories and stores expanded in step order)."""
    with tempfile.TemporaryDirectory(prefix="gpt2sup-verify-") as scratch:
        items: list[Path | ValidationResult] = []
        keys: dict[Path, str] = {}
        for raw in raw_paths:
            if is_store_uri(raw):
                found, found_keys = expand_store(raw, Path(scratch))
                items.extend(found)
                keys.update(found_keys)
            else:
                items.extend(expand_paths((raw,)))
        paths = [item for item in items if isinstance(item, Path)]
        validated = iter(validate_many(paths, deep=deep, probe_timeout=timeout, generic=ScriptRuns().holds))
        results = [item if isinstance(item, ValidationResult) else next(validated) for item in items]
    return [dataclasses.replace(r, path=keys[Path(r.path)]) if Path(r.path) in keys else r for r in results]


class ScriptRuns:
    """Which files a script's run wrote (``gpt2sup run -- SCRIPT.py``, as the run directory's
    ``supervisor.json`` records): those are judged by the generic probe, as the supervisor judges
    them, not by gpt2sup's worker's restore, which would fail every good file of another trainer."""

    def __init__(self) -> None:
        self._known: dict[Path, bool] = {}

    def holds(self, path: Path) -> bool:
        directory = path.parent
        if directory not in self._known:
            state = read_supervisor_state(RunDir.at(directory).supervisor_state)
            run_config = state.run_config if state is not None and isinstance(state.run_config, dict) else {}
            module = run_config.get("worker_module")
            self._known[directory] = isinstance(module, str) and is_script(module)
        return self._known[directory]


def _megabytes(size: int | None) -> str:
    return f"{size / 1e6:.1f} MB" if size is not None else "?"


def _notes(result: ValidationResult) -> str:
    """What a line adds after its verdict: deep checks done, foreign format, quarantine record."""
    notes = []
    if result.ok:
        deep = [check.detail for check in result.checks if check.name in _DEEP_CHECKS]
        if deep:
            notes.append("deep: " + "; ".join(deep))
        if result.source_format:
            notes.append(f"{result.source_format} format (gpt2sup convert rewrites it in gpt2sup's)")
    record = read_quarantine_record(Path(result.path))
    if record is not None:
        notes.append(f"quarantined {record.get('quarantined_at', '?')}: {record.get('reason', 'no reason recorded')}")
    return "".join(f"  [{note}]" for note in notes)


def format_line(result: ValidationResult) -> str:
    """``OK   path  step N  S MB  crc Xs probe Ys`` or ``FAIL path  reason`` (styles off a TTY)."""
    label, colour = _LABELS[result.verdict]
    head = click.style(label, fg=colour, bold=True)
    if result.ok:
        crc = result.seconds("zip-crc") or 0.0
        probe = result.seconds("load-probe") or 0.0
        step = f"step {result.step}" if result.step is not None else "step ?"
        return (f"{head} {result.path}  {step}  {_megabytes(result.size_bytes)}  "
                f"crc {crc:.2f}s probe {probe:.2f}s{_notes(result)}")
    return f"{head} {result.path}  {result.reason}{_notes(result)}"


def exit_code(results: list[ValidationResult]) -> int:
    """The worst verdict decides: FAIL, then UNSUPPORTED, INCONCLUSIVE, NO CHECKPOINT YET, OK."""
    verdicts = {result.verdict for result in results}
    if not results or Verdict.INVALID in verdicts:
        return VerifyExit.SOME_FAILED
    if Verdict.UNSUPPORTED in verdicts:
        return VerifyExit.UNSUPPORTED
    if Verdict.INCONCLUSIVE in verdicts:
        return VerifyExit.SOME_NOT_JUDGED
    if Verdict.NO_CHECKPOINT in verdicts:
        return VerifyExit.NO_CHECKPOINT_YET
    return VerifyExit.ALL_OK


@click.command(
    "verify",
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=(
        exit_status_epilog(VerifyExit) + "\n"
        "\b\nExamples:\n"
        "  gpt2sup verify log/model_00500.pt\n"
        "  gpt2sup verify log --deep\n"
        "  gpt2sup verify log/model_00500.pt.corrupt     # also shows why it was quarantined\n"
        "  gpt2sup verify log/latest_checkpoint.pt --json | jq '.[0].ok'\n"
        "  gpt2sup verify s3://bucket/prefix/   # each committed checkpoint, downloaded to a temp dir"
    ),
)
@click.argument("paths", nargs=-1, required=True, metavar="PATH...")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of results (one object per file) instead of lines.")
@click.option("--deep", is_flag=True, help="Also check every tensor is finite (no NaN/inf) and each optimizer moment has its parameter's shape. Reads every tensor; the OK line lists what was checked.")
@click.option("--timeout", "timeout", type=ProbeTimeout(), default="auto", show_default=True,
              help="Per-file limit for the load-probe: 'auto' (10x this machine's measured import torch, "
                   "at least 30 s, plus time to read the file) or seconds. A file that runs longer is "
                   "INCONCLUSIVE, not failed.")
def verify(paths: tuple[str, ...], as_json: bool, deep: bool, timeout: float | None) -> None:
    """Check that checkpoint files are sound before you trust them.

    Each PATH is a checkpoint file (ours, or one written by the build-nanogpt trainer, or a
    quarantined .corrupt file) or a directory; a directory means every model_N.pt in it (or every
    file of the run's --checkpoint-glob), in step order. Files of a script's run (`gpt2sup run --
    SCRIPT.py`) get the generic load-probe, as the supervisor gives them. All files share one probe
    child, so N files cost one `import torch` plus the reads.
    Checks run cheapest first and stop at the first failure:

    \b
    file       exists (symlinks followed, a dangling one reported), is a regular
               file, can be read
    size       not empty
    zip-crc    torch.save's zip archive parses, holds data.pkl, and every member
               matches its stored CRC-32. torch.load checks no CRC: a flipped bit
               in a weight loads silently. Reads the whole file once (files are
               read in parallel threads). A broken archive far smaller than its
               siblings is called "probably cut short"
    load-probe in a child process with a timeout, so a file that crashes or hangs
               the loader cannot take gpt2sup down: loaded with weights_only=True
               (never runs code from the file; build-nanogpt's pickled GPTConfig and
               numpy RNG state are read through stand-ins), required keys, format
               version, step agrees with the file name, parameter shapes agree
               with the config, size not below what the config's weights and
               optimizer moments need, then the worker's own restore (model,
               optimizer, data-loader position, every RNG state): OK means the
               file resumes
    --deep     every model and optimizer tensor finite, head tied to wte, AdamW
               moments shaped like their parameters

    Prints one line per file: "OK   PATH  step N  SIZE  crc Xs probe Ys",
    "FAIL PATH  REASON", "INCONCLUSIVE PATH  REASON" or "UNSUPPORTED PATH  REASON" (a
    format_version newer than this gpt2sup reads: not damage), and "NO CHECKPOINT YET DIR" for a
    directory with no model_N.pt yet. Colour only on a terminal.
    """
    results = verify_all(paths, deep=deep, timeout=timeout)
    if as_json:
        data = []
        for result in results:
            item = result.to_dict()
            item["quarantine"] = read_quarantine_record(Path(result.path))
            data.append(item)
        click.echo(json.dumps(data, indent=2))
    else:
        for result in results:
            click.echo(format_line(result))
    sys.exit(exit_code(results))
