"""The worker checks a checkpoint's format version itself, before using it (issue 19, section 2).

Only the supervisor's probe checked ``format_version``: a bare worker with ``--auto_resume``
loaded a file written in a newer format without a word. Now it ends with one line naming the
file's version and the versions it reads, exit 10 (not 4: the file is not damaged), and leaves
the file as it is.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from shared.checkpoint_format import FORMAT_VERSION
from tests.checkpoint_factory import resave_with_format_version
from tests.worker.helpers import FAST_ARGS, checkpoint_steps, run_ok

NEWER = FORMAT_VERSION + 1
WORKER_EXIT_UNSUPPORTED_FORMAT = 10  # shared.exit_codes.WorkerExit.UNSUPPORTED_FORMAT, as documented


@pytest.mark.slow
def test_auto_resume_from_a_newer_format_checkpoint_is_one_line_and_exit_10_not_a_silent_load(
        tmp_path: Path, launcher) -> None:
    log_dir = tmp_path / "run"
    run_ok(launcher, log_dir, [*FAST_ARGS, "--max_steps", "4"])
    newest = log_dir / "model_00003.pt"
    resave_with_format_version(newest, NEWER)
    before = newest.read_bytes()

    again = launcher.run(log_dir, [*FAST_ARGS, "--max_steps", "6", "--auto_resume"])

    assert again.proc.returncode == WORKER_EXIT_UNSUPPORTED_FORMAT, again.output_tail()
    errors = [line for line in again.stderr().splitlines() if line.startswith("train_gpt2: error:")]
    assert len(errors) == 1, again.output_tail()
    assert "model_00003.pt" in errors[0] and f"format_version {NEWER}" in errors[0]
    assert f"format_version {FORMAT_VERSION}" in errors[0] and "Traceback" not in again.stderr()
    assert "resumed from" not in again.stdout()
    assert newest.read_bytes() == before and checkpoint_steps(log_dir) == [3]  # untouched, nothing trained
