"""A checkpoint in a newer format is not damage (issue 19, section 2).

A file whose ``format_version`` is newer than this install reads (a newer gpt2sup wrote it, then
the install was rolled back, or one node runs an older install) is a property of the install,
not of the file: it is never renamed ``.corrupt``, the run never falls back past it to an older
file or to step 0, ``gpt2sup run`` ends at once with its own exit code and one line naming both
versions, and ``gpt2sup verify`` says UNSUPPORTED, not FAIL. The files are real checkpoints
(``tests/checkpoint_factory.py``) re-saved with a higher version by the worker's own save
function, so every CRC is valid and nothing else about them is wrong.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from shared.checkpoint_format import FORMAT_VERSION
from supervisor.checkpoints.checkpoint_selection import select_checkpoint_for_restart
from tests.checkpoint_factory import make_checkpoint, resave_with_format_version
from tests.supervisor.helpers import (
    REPO_ROOT,
    child_env,
    console_text,
    gpt2sup_argv,
    read_events,
    start_supervisor,
    wait_exit,
)

NEWER = FORMAT_VERSION + 1
# Literal, as documented (README exit-code table): ``SupervisorExit.UNSUPPORTED_FORMAT`` and
# ``VerifyExit.UNSUPPORTED``.
RUN_EXIT_UNSUPPORTED = 6
VERIFY_EXIT_UNSUPPORTED = 4


def newer_checkpoint(path: Path, step: int) -> Path:
    return resave_with_format_version(make_checkpoint(path, step), NEWER)


def files_of(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


@pytest.mark.slow
def test_selection_stops_at_a_newer_format_file_and_renames_nothing(tmp_path: Path) -> None:
    make_checkpoint(tmp_path / "model_00004.pt", 4)
    newer_checkpoint(tmp_path / "model_00008.pt", 8)
    before = files_of(tmp_path)

    selection = select_checkpoint_for_restart(tmp_path, probe_timeout=120)

    assert selection.unsupported is not None and selection.unsupported.path.name == "model_00008.pt"
    assert selection.unsupported.verdict == "unsupported"
    assert f"format_version {NEWER}" in selection.unsupported.reason
    assert f"format_version {FORMAT_VERSION}" in selection.unsupported.reason
    # No quarantine, and no silent fallback to the older file either: that would retrain what the
    # newer install already trained.
    assert selection.quarantined == [] and selection.chosen is None
    assert files_of(tmp_path) == before and not list(tmp_path.glob("*.corrupt*"))


@pytest.mark.slow
def test_verify_reports_unsupported_not_fail_with_its_own_exit_code(tmp_path: Path) -> None:
    newer_checkpoint(tmp_path / "model_00008.pt", 8)
    make_checkpoint(tmp_path / "model_00004.pt", 4)

    done = subprocess.run(gpt2sup_argv("verify", str(tmp_path)), check=False, cwd=REPO_ROOT, env=child_env(),
                          capture_output=True, text=True, timeout=300)

    assert done.returncode == VERIFY_EXIT_UNSUPPORTED, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("OK") and "model_00004.pt" in lines[0], done.stdout
    assert lines[1].startswith("UNSUPPORTED") and "model_00008.pt" in lines[1], done.stdout
    assert f"format_version {NEWER}" in lines[1] and f"format_version {FORMAT_VERSION}" in lines[1]
    assert "FAIL" not in done.stdout and not list(tmp_path.glob("*.corrupt*"))

    as_json = subprocess.run(gpt2sup_argv("verify", str(tmp_path / "model_00008.pt"), "--json"), check=False, cwd=REPO_ROOT,
                             env=child_env(), capture_output=True, text=True, timeout=300)
    (item,) = json.loads(as_json.stdout)
    assert as_json.returncode == VERIFY_EXIT_UNSUPPORTED
    assert item["verdict"] == "unsupported" and item["unsupported_format_version"] == NEWER


@pytest.mark.slow
def test_run_with_every_checkpoint_newer_ends_at_once_renames_nothing_and_never_trains(tmp_path: Path) -> None:
    """Reproduces the issue: every file was renamed .corrupt, then 'NO VALID CHECKPOINT ...
    starting from scratch', retraining from step 0 and exit 0."""
    log_dir = tmp_path / "log"
    for step in (4, 8):
        newer_checkpoint(log_dir / f"model_{step:05d}.pt", step)
    before = files_of(log_dir)

    proc = start_supervisor(log_dir, "--max-restarts", "3")
    code = wait_exit(proc, log_dir)

    console = console_text(log_dir)
    assert code == RUN_EXIT_UNSUPPORTED, console
    assert not list(log_dir.glob("*.corrupt*")), console
    assert {name: data for name, data in files_of(log_dir).items() if name in before} == before
    events = read_events(log_dir)
    kinds = [event["event"] for event in events]
    assert "launched" not in kinds and "restarted" not in kinds and "quarantined" not in kinds, kinds
    assert "scratch" not in console
    (ending,) = [event for event in events if event["event"] == "gave_up"]
    assert ending["exit_code"] == RUN_EXIT_UNSUPPORTED and "\n" not in ending["message"]
    assert "model_00008.pt" in ending["message"]
    assert f"format_version {NEWER}" in ending["message"] and f"format_version {FORMAT_VERSION}" in ending["message"]
