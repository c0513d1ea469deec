"""One checkpoint lister, one symlink rule: the run, a file's siblings and ``gpt2sup verify DIR`` agree."""
from __future__ import annotations

from pathlib import Path

import pytest

from shared.run_dir import RunDir, scan_checkpoints
from supervisor.checkpoints.checkpoint_validation import list_siblings
from supervisor.commands.verify_cmd import expand_paths


def _run_with_a_linked_name(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    for step in (20, 3):
        (run / f"model_{step:05d}.pt").write_bytes(b"x" * step)
    (run / "model_00001.pt.tmp").write_bytes(b"staging")
    (run / "model_00002.pt.corrupt").write_bytes(b"quarantined")
    elsewhere = tmp_path / "elsewhere.pt"
    elsewhere.write_bytes(b"y")
    (run / "model_00050.pt").symlink_to(elsewhere)  # named like a checkpoint, but a link
    (run / "model_00060.pt").symlink_to(run / "model_00020.pt")
    return run


def test_every_lister_lists_regular_model_files_by_step_and_never_a_symlink(tmp_path):
    run = _run_with_a_linked_name(tmp_path)
    expected = [run / "model_00003.pt", run / "model_00020.pt"]
    assert [(f.step, f.path, f.size) for f in scan_checkpoints(run)] == [(3, expected[0], 3), (20, expected[1], 20)]
    assert [f.path for f in RunDir.at(run).list_checkpoints()] == expected
    assert expand_paths((str(run),)) == expected
    assert [s.path for s in list_siblings(expected[0])] == [expected[1]]


def test_a_directory_that_cannot_be_listed_raises_for_verify_and_is_empty_for_the_run(tmp_path):
    missing = tmp_path / "gone"
    with pytest.raises(OSError):
        scan_checkpoints(missing)
    assert RunDir.at(missing).list_checkpoints() == []
    assert list_siblings(missing / "model_00001.pt") == []
