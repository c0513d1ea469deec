"""supervisor.checkpoints.checkpoint_selection on real run directories: doubt never destroys a checkpoint.

Real checkpoint files, real probe children, real (too short / invalid) timeouts. Before the fix,
``probe_timeout`` 0.01, nan and inf each renamed two good checkpoints ``.corrupt`` and the
selection chose nothing: a restart from step 0 with good files on disk.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from shared.run_dir import RunDir
from shared.vocabulary import Verdict
from supervisor.checkpoints.checkpoint_selection import (
    quarantine,
    read_quarantine_record,
    select_checkpoint_for_restart,
)
from tests.checkpoint_factory import (
    make_checkpoint,
    make_checkpoint_dict,
    truncate_to_fraction,
)

# Real training processes or probe children: the end-to-end layer, run by CI, not the inner loop.
pytestmark = pytest.mark.slow

def run_with(tmp_path: Path, *steps: int) -> RunDir:
    run = RunDir.at(tmp_path)
    for step in steps:
        make_checkpoint(run.checkpoint(step), step)
    os.symlink(run.checkpoint(steps[-1]).name, run.latest_link)
    return run


@pytest.mark.parametrize("timeout", [0.001, float("nan"), float("inf"), -1.0])
def test_a_probe_that_cannot_judge_never_quarantines_and_the_newest_is_chosen(tmp_path: Path, timeout: float) -> None:
    run = run_with(tmp_path, 10, 20)
    selection = select_checkpoint_for_restart(tmp_path, probe_timeout=timeout)
    assert sorted(p.name for p in tmp_path.glob("model_*")) == ["model_00010.pt", "model_00020.pt"]
    assert selection.quarantined == []
    assert selection.chosen is not None and selection.chosen.path.name == "model_00020.pt"
    assert selection.chosen.verdict is Verdict.INCONCLUSIVE and selection.chosen.reason
    assert [v.verdict for v in selection.checked] == [Verdict.INCONCLUSIVE, Verdict.INCONCLUSIVE]
    assert os.readlink(run.latest_link) == "model_00020.pt"


def test_positive_evidence_still_quarantines_with_its_reason_recorded(tmp_path: Path) -> None:
    run = run_with(tmp_path, 10, 20, 30)
    truncate_to_fraction(run.checkpoint(30), 0.5)
    selection = select_checkpoint_for_restart(tmp_path)
    assert selection.chosen.path.name == "model_00020.pt" and selection.chosen.verdict is Verdict.VALID
    ((verdict, new_path),) = selection.quarantined
    assert new_path.name == "model_00030.pt.corrupt" and verdict.verdict is Verdict.INVALID
    record = read_quarantine_record(new_path)
    assert record["reason"] == verdict.reason and "not a zip archive" in record["reason"]
    assert record["original_name"] == "model_00030.pt" and record["quarantined_at"].endswith("Z")
    assert os.readlink(run.latest_link) == "model_00020.pt"


def test_a_checkpoint_that_fails_the_workers_restore_is_quarantined_and_the_older_one_chosen(tmp_path: Path) -> None:
    # The exit-4 loop of the issue: junk numpy_rng_state passed validation, then the worker failed
    # on it three times. Now validation fails it and falls back at once.
    run = run_with(tmp_path, 10)
    junk = make_checkpoint_dict(20)
    junk["numpy_rng_state"] = ["MT19937", torch.zeros(3, dtype=torch.int64), 0, 0, 0.0]
    torch.save(junk, run.checkpoint(20))
    selection = select_checkpoint_for_restart(tmp_path)
    assert selection.chosen.path.name == "model_00010.pt"
    assert [new.name for _, new in selection.quarantined] == ["model_00020.pt.corrupt"]
    assert "restore fails" in read_quarantine_record(tmp_path / "model_00020.pt.corrupt")["reason"]


def test_only_proven_bad_files_leave_the_selection_empty(tmp_path: Path) -> None:
    run = run_with(tmp_path, 5)
    truncate_to_fraction(run.checkpoint(5), 0.5)
    selection = select_checkpoint_for_restart(tmp_path)
    assert selection.chosen is None and len(selection.quarantined) == 1
    assert not run.latest_link.is_symlink()


def test_quarantine_never_overwrites_earlier_evidence(tmp_path: Path) -> None:
    first = tmp_path / "model_00010.pt"
    first.write_bytes(b"one")
    assert quarantine(first, "reason one").name == "model_00010.pt.corrupt"
    first.write_bytes(b"two")
    second = quarantine(first, "the worker exited 4: CRC-32 mismatch")
    assert second.name == "model_00010.pt.corrupt.1" and second.read_bytes() == b"two"
    assert read_quarantine_record(second)["reason"] == "the worker exited 4: CRC-32 mismatch"
    assert read_quarantine_record(tmp_path / "model_00010.pt.corrupt")["reason"] == "reason one"
    record_file = tmp_path / "model_00010.pt.corrupt.1.reason.json"
    assert json.loads(record_file.read_text())["original_name"] == "model_00010.pt"
    assert [c.step for c in RunDir.at(tmp_path).list_checkpoints()] == []  # records are no checkpoints
