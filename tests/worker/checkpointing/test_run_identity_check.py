"""The worker's run-identity rule in process: refusal text and exit code, notes, recording."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest

from shared.exit_codes import WorkerExit
from shared.run_dir import RunDir
from shared.run_identity import RunIdentity
from worker.checkpointing.run_identity_check import RunIdentityCheck
from worker.errors import WorkerError

TINY = {"block_size": 128, "vocab_size": 50304, "n_layer": 2, "n_head": 2, "n_embd": 64}
BASE = RunIdentity(identity_version=1, model="tiny", model_config=TINY, max_steps=60, warmup_steps=6, max_lr=1e-3, seed=1337,
                   total_batch_size=128, seq_len=32, weight_decay=0.1, dropout=0.0, world_size=1,
                   settings={"eval_interval": 8})


def checker(tmp_path, allow_change: bool = False, **changes) -> tuple[RunIdentityCheck, list[str]]:
    printed: list[str] = []
    return RunIdentityCheck(replace(BASE, **changes), RunDir.at(tmp_path), allow_change=allow_change,
                            log=printed.append), printed


def test_a_math_change_is_exit_6_with_a_summary_and_one_line_per_difference(tmp_path):
    check, printed = checker(tmp_path, max_lr=0.5, max_steps=80)
    with pytest.raises(WorkerError) as raised:
        check.check_checkpoint({"step": 40, "train_config": BASE.to_dict()}, tmp_path / "model_00040.pt")
    assert raised.value.code == WorkerExit.RUN_MISMATCH
    summary, *lines = str(raised.value).splitlines()
    assert summary == (f"{tmp_path} holds another run: 1 setting(s) that change the training math differ from "
                       "checkpoint model_00040.pt; pass --allow_config_change to resume anyway, or use a new --log_dir")
    assert lines[0] == "  max_lr: 0.001 -> 0.5"
    assert lines[1].startswith("  max_steps: 60 -> 80 (a longer run: allowed; the LR schedule now decays over 80 "
                               "steps: lr at step 41 ")
    assert printed == []


def test_the_override_goes_on_and_prints_each_difference_as_a_note(tmp_path):
    check, printed = checker(tmp_path, allow_change=True, max_lr=0.5, settings={"eval_interval": 4})
    check.check_checkpoint({"step": 40, "train_config": BASE.to_dict()}, tmp_path / "model_00040.pt")
    assert printed == ["note: changes the training math, allowed by --allow_config_change: max_lr: 0.001 -> 0.5",
                       "note: allowed: eval_interval: 8 -> 4"]


def test_an_older_checkpoint_is_compared_on_what_it_has_and_says_so(tmp_path):
    check, printed = checker(tmp_path)
    older = {"step": 3, "train_config": {"max_lr": 1e-3, "seed": 1337}, "config": {**TINY, "dropout": 0.0}}
    check.check_checkpoint(older, tmp_path / "model_00003.pt")
    (note,) = printed
    assert note.startswith("note: run identity: not recorded by the run (written by an older version), so not "
                           "compared: total_batch_size, seq_len")


def test_an_unstarted_run_is_compared_with_run_identity_json(tmp_path):
    (tmp_path / "run_identity.json").write_text(json.dumps(BASE.to_dict()))
    check, _ = checker(tmp_path, seed=2)
    with pytest.raises(WorkerError, match="differ from run_identity.json") as raised:
        check.check_unstarted_run()
    assert str(raised.value).splitlines()[1:] == ["  seed: 1337 -> 2"]
    checker(tmp_path / "elsewhere")[0].check_unstarted_run()  # no file: nothing to compare


def test_run_identity_json_is_written_at_a_first_start_and_kept_on_a_resume(tmp_path):
    first, _ = checker(tmp_path)
    first.record_first_start(resumed=False)
    assert RunIdentity.from_dict(json.loads((tmp_path / "run_identity.json").read_text())) == BASE
    later, _ = checker(tmp_path, max_steps=90)
    later.record_first_start(resumed=True)
    assert json.loads((tmp_path / "run_identity.json").read_text())["max_steps"] == 60
    (tmp_path / "run_identity.json").unlink()  # a run dir from before identities: record it now
    later.record_first_start(resumed=True)
    assert json.loads((tmp_path / "run_identity.json").read_text())["max_steps"] == 90


def test_an_unwritable_run_identity_json_is_a_warning_not_a_crash(tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the run directory should be")
    check, printed = checker(blocker)
    check.record_first_start(resumed=False)
    (warning,) = printed
    assert warning.startswith(f"WARNING: could not write {blocker / 'run_identity.json'}")


def test_a_damaged_run_identity_json_is_rebuilt_on_a_resume_and_refused_without_a_checkpoint(tmp_path):
    """Issue 19 item 5: the garbage used to stay in place while the run resumed silently."""
    (tmp_path / "run_identity.json").write_text("{garbage")
    check, printed = checker(tmp_path, max_steps=90)
    check.check_checkpoint({"step": 40, "train_config": BASE.to_dict()}, tmp_path / "model_00040.pt")
    check.record_first_start(resumed=True)
    assert printed[-1] == "note: run_identity.json was unreadable (not JSON): rebuilt from checkpoint model_00040.pt"
    assert RunIdentity.from_dict(json.loads((tmp_path / "run_identity.json").read_text())) == BASE

    (tmp_path / "run_identity.json").write_text('{"foreign": true}')
    fresh, _ = checker(tmp_path)
    with pytest.raises(WorkerError) as raised:
        fresh.check_unstarted_run()
    assert raised.value.code == WorkerExit.RUN_MISMATCH and "\n" not in str(raised.value)
    assert "is unreadable (records no identity) and no checkpoint holds the run's identity" in str(raised.value)
