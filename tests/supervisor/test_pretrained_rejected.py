"""A ``--pretrained_checkpoint`` the worker rejects is a permanent error (issue 19, section 4).

The worker said exit 4 ("the checkpoint I was given is bad") about a Hugging Face directory with a
bad header; the supervisor looked for that name in the run directory, printed "... but <dir> is
gone; validating again" (the directory was there, elsewhere) and relaunched it as a bad checkpoint
until the restart budget was spent. The source is an input of the command, not one of the run's
checkpoints: one line, no restarts, never renamed.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from shared.hf_files import MODEL_FILE
from supervisor.checkpoints.hf_export import export_model
from tests.supervisor.helpers import (
    WORKER_ARGS,
    console_text,
    events_named,
    read_events,
    start_supervisor,
    wait_exit,
)
from worker.model import GPT, GPTConfig, build_config


def hf_directory_with_a_bad_header(root: Path) -> Path:
    """A Hugging Face directory (as ``gpt2sup export`` writes it) whose safetensors header is cut."""
    model = GPT(GPTConfig.from_dict(build_config("tiny").to_dict()))
    export_model(model.state_dict(), model.config.to_dict(), root / "hf")
    weights = root / "hf" / MODEL_FILE
    weights.write_bytes(weights.read_bytes()[:1000])
    return root / "hf"


def tree(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_a_rejected_pretrained_source_gives_up_at_once_in_one_line_and_is_never_renamed(tmp_path: Path) -> None:
    source = hf_directory_with_a_bad_header(tmp_path / "pretrained")
    before = tree(source)
    log_dir = tmp_path / "ft"

    proc = start_supervisor(log_dir, "--max-restarts", "3", "--max-no-progress-restarts", "0", nproc=1,
                            worker_args=[*WORKER_ARGS,
                                         "--pretrained_checkpoint", str(source)])
    code = wait_exit(proc, log_dir)

    console = console_text(log_dir)
    assert code == 3, console  # gave up (a permanent worker error)
    assert "is gone" not in console and "validating again" not in console, console
    assert not events_named(log_dir, "restarted") and not events_named(log_dir, "quarantined"), console
    assert len(events_named(log_dir, "launched")) == 1, console
    (ending,) = events_named(log_dir, "gave_up")
    assert "\n" not in ending["message"] and "cannot load pretrained weights" in ending["message"], ending
    assert str(source) in ending["message"] and "worker exit 11" in ending["message"], ending
    assert tree(source) == before and not list(tmp_path.rglob("*.corrupt*")), [e["message"] for e in read_events(log_dir)]
