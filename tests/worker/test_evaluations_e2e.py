"""Validation, HellaSwag and samples inside real training runs: logged, and never disturbing training.

The same run with every evaluation every 3 steps and with all of them off must give bit-identical
per-step losses and final weights (CPU, dropout on, 1 and 2 processes); the 2-process one also
crashes and resumes in the middle, and its log.txt / samples.txt then hold each step once.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.worker.helpers import (
    assert_trees_equal,
    load_checkpoint,
    read_metrics,
    run_ok,
    step_losses,
)
from tests.worker.test_hellaswag import write_hellaswag

pytestmark = pytest.mark.slow

STEPS = 12
BASE = ["--model", "tiny", "--micro_batch_size", "2", "--seq_len", "32", "--total_batch_size", "128",
        "--max_steps", str(STEPS), "--checkpoint_interval", "4", "--dropout", "0.1", "--val_steps", "2"]
OFF = ["--eval_interval", "0", "--hellaswag_interval", "0", "--generate_interval", "0"]


def evaluations_on(data: Path) -> list[str]:
    return ["--eval_interval", "3", "--hellaswag_interval", "3", "--hellaswag_path", str(data),
            "--hellaswag_limit", "10", "--generate_interval", "3", "--generate_prompt", "The cat"]


def log_lines(run: Path, kind: str) -> list[int]:
    return [int(line.split()[0]) for line in (run / "log.txt").read_text().splitlines() if line.split()[1] == kind]


@pytest.mark.parametrize("nproc", [1, 2])
def test_evaluations_are_logged_and_change_nothing_in_training(launcher, tmp_path: Path, nproc: int) -> None:
    data = write_hellaswag(tmp_path / "hs.jsonl", 10)
    final = f"model_{STEPS - 1:05d}.pt"
    plain = run_ok(launcher, tmp_path / "plain", [*BASE, *OFF], nproc=nproc)
    evaluated_dir = tmp_path / "evaluated"
    if nproc == 1:
        evaluated = run_ok(launcher, evaluated_dir, [*BASE, *evaluations_on(data)], nproc=nproc)
    else:  # and a crash after step 7, then a resume: evaluations and resume together
        crashed = launcher.run(evaluated_dir, [*BASE, *evaluations_on(data)], nproc=nproc,
                               env={"GPT2SUP_INJECT_CRASH_AT_STEP": "7"})
        assert crashed.proc.returncode != 0
        evaluated = run_ok(launcher, evaluated_dir, [*BASE, *evaluations_on(data), "--auto_resume"], nproc=nproc)

    assert step_losses(evaluated_dir) == step_losses(plain.log_dir)
    mine, theirs = load_checkpoint(evaluated_dir / final), load_checkpoint(plain.log_dir / final)
    # Everything training depends on is bit-identical; the record of the newest val loss and the
    # run's settings (which name the evaluation intervals) are what differ, as they should.
    differ = {"val_loss", "train_config"}
    assert set(mine) == set(theirs)
    assert_trees_equal({k: v for k, v in mine.items() if k not in differ},
                       {k: v for k, v in theirs.items() if k not in differ})
    assert mine["val_loss"] is not None and theirs["val_loss"] is None

    due = [0, 3, 6, 9, STEPS - 1]
    assert log_lines(evaluated_dir, "val") == due
    assert log_lines(evaluated_dir, "hella") == due
    assert "HellaSwag accuracy: " in evaluated.stdout()
    records = {m["step"]: m for m in read_metrics(evaluated_dir)}
    assert sorted(s for s, m in records.items() if "hellaswag" in m) == due
    assert all(records[s]["hellaswag_total"] == 10 and "val_loss" in records[s] for s in due)
    samples = (evaluated_dir / "samples.txt").read_text().splitlines()
    # step > 0: 3, 6, 9, 11; four sequences per rank, each line "{step} rank {r} sample {i}: '...'"
    expected = [(step, rank, i) for step in due[1:] for rank in range(nproc) for i in range(4)]
    assert [(int(s.split()[0]), int(s.split()[2]), int(s.split()[4].rstrip(":"))) for s in samples] == expected
    assert all("The cat" in line for line in samples)
    assert (plain.log_dir / "samples.txt").read_text() == ""


def test_hellaswag_and_samples_also_run_under_compile(launcher, tmp_path: Path) -> None:
    """build-nanogpt turned both off under torch.compile; here they use the raw model and run."""
    data = write_hellaswag(tmp_path / "hs.jsonl", 6)
    run = tmp_path / "compiled"
    args = [*BASE, "--max_steps", "3", "--compile", "--eval_interval", "0", "--hellaswag_interval", "2",
            "--hellaswag_path", str(data), "--generate_interval", "2"]
    run_ok(launcher, run, args)
    assert log_lines(run, "hella") == [0, 2]
    assert [int(line.split()[0]) for line in (run / "samples.txt").read_text().splitlines()] == [2] * 4
