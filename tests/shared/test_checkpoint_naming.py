"""A run directory's checkpoint naming: ``model_*.pt`` by default, a script's own pattern when the
directory records one (``gpt2sup run --checkpoint-glob``). Every lister reads the same record."""
from __future__ import annotations

import json

import pytest

from shared.run_dir import (
    DEFAULT_NAMING,
    NAMING_FILE,
    CheckpointNaming,
    CheckpointNamingError,
    RunDir,
    naming_of,
    record_naming,
    scan_checkpoints,
    step_from_checkpoint_path,
)


def test_the_default_naming_is_the_workers_and_never_counts_staging_or_quarantined_files():
    assert DEFAULT_NAMING.step_of("model_00500.pt") == 500
    for name in ("model_00500.pt.tmp", "model_00500.pt.corrupt", "latest_checkpoint.pt", "model_x.pt",
                 "model_.pt", "step_00500.pt"):
        assert DEFAULT_NAMING.step_of(name) is None, name


def test_a_scripts_pattern_reads_its_star_as_the_step_and_nothing_else():
    naming = CheckpointNaming("ckpt-step*.pth")
    assert naming.step_of("ckpt-step12.pth") == 12
    assert naming.step_of("ckpt-step0012.pth") == 12
    for name in ("ckpt-step12.pth.tmp", "ckpt-step12.pth.corrupt", "ckpt-stepfinal.pth", "ckpt-step12.pt",
                 "xckpt-step12.pth"):
        assert naming.step_of(name) is None, name


@pytest.mark.parametrize("pattern, words", [
    ("*", "matches every file"),
    ("step_*_*.pt", "exactly one '*'"),
    ("step.pt", "exactly one '*'"),
    ("ckpt/step_*.pt", "without a directory"),
    ("step_?.pt", "only '*'"),
    ("step_[0-9]*.pt", "only '*'"),
])
def test_a_pattern_gpt2sup_cannot_read_steps_from_is_refused_with_the_reason(pattern, words):
    with pytest.raises(CheckpointNamingError) as refused:
        CheckpointNaming(pattern)
    assert words in str(refused.value)


def test_the_recorded_naming_is_what_every_lister_uses(tmp_path):
    for name in ("step_00004.pt", "step_00008.pt", "step_00008.pt.corrupt", "model_00012.pt", "step_last.pt"):
        (tmp_path / name).write_bytes(b"x")
    assert [c.step for c in scan_checkpoints(tmp_path)] == [12]  # no record: gpt2sup's own names
    record_naming(tmp_path, CheckpointNaming("step_*.pt"))
    assert json.loads((tmp_path / NAMING_FILE).read_text()) == {"pattern": "step_*.pt"}
    assert [c.path.name for c in scan_checkpoints(tmp_path)] == ["step_00004.pt", "step_00008.pt"]
    run = RunDir.at(tmp_path)
    assert [c.step for c in run.list_checkpoints()] == [4, 8]
    assert run.checkpoint_of_step(8) == tmp_path / "step_00008.pt"
    assert run.checkpoint(8).name == "model_00008.pt"  # the worker's own name is unchanged
    assert step_from_checkpoint_path(tmp_path / "step_00004.pt") == 4
    record_naming(tmp_path, DEFAULT_NAMING)  # back to the default: the record goes
    assert not (tmp_path / NAMING_FILE).exists() and naming_of(tmp_path) == DEFAULT_NAMING


@pytest.mark.parametrize("record", ["{not json", '{"pattern": "*"}', '{"other": 1}', "[1]"])
def test_a_damaged_naming_record_reads_as_the_default_never_as_an_error(tmp_path, record):
    (tmp_path / NAMING_FILE).write_text(record)
    (tmp_path / "model_00003.pt").write_bytes(b"x")
    assert naming_of(tmp_path) == DEFAULT_NAMING
    assert [c.step for c in scan_checkpoints(tmp_path)] == [3]
