"""A run is resumed only as the run it is, and every resume checks its own exactness (issue 6).

Real ``python -m worker.train_gpt2`` processes (and torchrun with 2 ranks), real data shards written
by the test, real SIGKILLs:

* run identity: relaunching a run directory with arguments that change the training math is
  refused with exit 6 and the list of differences, touching nothing; ``--allow_config_change``
  overrides; changes that leave the math alone (a longer run, intervals, the process count at an
  equal total batch) go on with a note;
* replay check: after a resume, the re-done steps' losses are compared bit for bit with the losses
  logged before the crash, and one ``replay_check`` event says how that went.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import pytest

from shared.atomic_io import read_jsonl
from shared.exit_codes import WorkerExit
from tests.worker.helpers import (
    FAST_ARGS,
    WorkerLaunch,
    WorkerLauncher,
    checkpoint_steps,
    load_checkpoint,
    read_heartbeat,
    read_metrics,
    run_ok,
    wait_for,
)

# Real training processes or probe children: the end-to-end layer, run by CI, not the inner loop.
pytestmark = pytest.mark.slow

FIRST_RUN_STEPS = 60


def write_toy_shards(directory: Path) -> Path:
    """Two train shards and a val shard of random tokens: a --data_dir unlike the built-in corpus."""
    directory.mkdir(parents=True)
    rng = np.random.default_rng(6)
    np.save(directory / "toy_val_000000.npy", rng.integers(0, 50257, 4000, dtype=np.uint16))
    for index in (1, 2):
        np.save(directory / f"toy_train_{index:06d}.npy", rng.integers(0, 50257, 6000, dtype=np.uint16))
    return directory


def read_events(log_dir: Path, kind: str) -> list[dict]:
    path = Path(log_dir) / "events.jsonl"
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if r.get("event") == kind]


def run_dir_contents(log_dir: Path) -> dict[str, tuple[int, int, bytes | None]]:
    """name -> (size, mtime_ns, bytes of the logs) for what a run keeps: 'untouched' means equal.

    Heartbeats (the refusal is reported there) and worker.lock (each worker writes its pid into
    it) are the worker's live channel, not the run's data.
    """
    found = {}
    for path in sorted(Path(log_dir).iterdir()):
        if path.name in ("heartbeat", "worker.lock"):
            continue
        stat = path.lstat()
        text = path.read_bytes() if path.suffix in (".txt", ".jsonl", ".json") else None
        found[path.name] = (stat.st_size, stat.st_mtime_ns, text)
    return found


def error_lines(launch: WorkerLaunch) -> list[str]:
    return [line for line in launch.stderr().splitlines() if line.strip()]


def copy_run(source: Path, target: Path) -> Path:
    shutil.copytree(source, target, symlinks=True, ignore=shutil.ignore_patterns("heartbeat"))
    return target


# ----------------------------------------------------------------------------- run identity


@dataclass
class FirstRun:
    log_dir: Path
    data_dir: Path
    args: list[str]


@pytest.fixture(scope="module")
def first_run(launcher: WorkerLauncher, tmp_path_factory) -> FirstRun:
    """The issue's first launch: ``--data_dir D --max_steps 60``, to the end."""
    base = tmp_path_factory.mktemp("identity")
    data_dir = write_toy_shards(base / "D")
    args = [*FAST_ARGS, "--checkpoint_interval", "20", "--keep_last_n_checkpoints", "1",
            "--data_dir", str(data_dir), "--max_steps", str(FIRST_RUN_STEPS)]
    run_ok(launcher, base / "run", args)
    return FirstRun(base / "run", data_dir, args)


def test_first_start_records_the_identity_in_the_run_dir_and_in_every_checkpoint(first_run):
    recorded = json.loads((first_run.log_dir / "run_identity.json").read_text())
    assert recorded["identity_version"] == 1 and recorded["max_steps"] == FIRST_RUN_STEPS
    assert recorded["world_size"] == 1 and recorded["total_batch_size"] == 128 and recorded["model"] == "tiny"
    assert [s["name"] for s in recorded["data"]["shards"]["train"]] == ["toy_train_000001.npy", "toy_train_000002.npy"]
    assert recorded["argv"][-2:] == ["--max_steps", str(FIRST_RUN_STEPS)]
    checkpoint = load_checkpoint(first_run.log_dir / f"model_{FIRST_RUN_STEPS - 1:05d}.pt")
    # The same identity, less the command line (it names the run dir; checkpoints of the same
    # training must be bitwise equal wherever they were written).
    assert checkpoint["train_config"] == {k: v for k, v in recorded.items() if k != "argv"}


def test_resuming_on_other_data_with_a_longer_max_steps_is_refused_touching_nothing(launcher, first_run, tmp_path):
    """The issue's scenario: the same run dir relaunched on the built-in corpus with max_steps 300."""
    run = copy_run(first_run.log_dir, tmp_path / "run")
    before = run_dir_contents(run)
    args = [a for a in first_run.args if a not in ("--data_dir", str(first_run.data_dir))]
    args = [*args[:-1], "300", "--auto_resume"]
    launch = launcher.run(run, args)

    assert launch.proc.returncode == int(WorkerExit.RUN_MISMATCH) == 6, launch.output_tail()
    assert "Traceback" not in launch.stderr()
    lines = error_lines(launch)
    assert lines[0].startswith(f"train_gpt2: error: {run} holds another run: 2 setting(s) that change the training math")
    assert "--allow_config_change" in lines[0] and f"model_{FIRST_RUN_STEPS - 1:05d}.pt" in lines[0]
    # The CPU profile's warm-up is 10% of max_steps: 300 steps bring a longer warm-up too.
    assert lines[1] == "  warmup_steps: 6 -> 30"
    assert lines[2].startswith(f"  data: {first_run.data_dir} (2 train, 1 val shards, fingerprint ")
    assert "pydoc_topics_v1 (2 train, 1 val shards" in lines[2] and "gone: toy_train_000001.npy" in lines[2]
    assert lines[3].startswith("  max_steps: 60 -> 300 (a longer run: allowed; the LR schedule now decays over 300 steps:")
    assert len(lines) == 4
    beat = read_heartbeat(run)
    assert beat["status"] == "failed"
    assert beat["message"].splitlines() == [lines[0].removeprefix("train_gpt2: error: "), *lines[1:]]
    assert run_dir_contents(run) == before  # log.txt, metrics, checkpoints, identity: untouched


@pytest.mark.parametrize("flag, value, expected", [
    ("--total_batch_size", "256", "total_batch_size: 128 -> 256"),
    ("--seed", "2", "seed: 1337 -> 2"),
    ("--max_lr", "0.5", "max_lr: 0.001 -> 0.5"),
])
def test_a_math_changing_argument_is_refused_with_the_difference(launcher, first_run, tmp_path, flag, value, expected):
    run = copy_run(first_run.log_dir, tmp_path / "run")
    before = run_dir_contents(run)
    launch = launcher.run(run, [*first_run.args, flag, value, "--auto_resume"])
    assert launch.proc.returncode == int(WorkerExit.RUN_MISMATCH), launch.output_tail()
    assert error_lines(launch)[1:] == [f"  {expected}"]
    assert read_heartbeat(run)["message"].splitlines()[1:] == [f"  {expected}"]
    assert run_dir_contents(run) == before


def test_allow_config_change_resumes_and_prints_each_difference(launcher, first_run, tmp_path):
    run = copy_run(first_run.log_dir, tmp_path / "run")
    launch = run_ok(launcher, run, [*first_run.args[:-1], "64", "--max_lr", "0.002", "--auto_resume",
                                    "--allow_config_change"])
    out = launch.stdout()
    assert "note: changes the training math, allowed by --allow_config_change: max_lr: 0.001 -> 0.002" in out
    assert "note: allowed: max_steps: 60 -> 64 (a longer run: allowed;" in out
    assert [m["step"] for m in read_metrics(run)] == list(range(64))
    config = load_checkpoint(run / "model_00063.pt")["train_config"]
    assert config["max_lr"] == 0.002 and config["max_steps"] == 64  # the run records what it now is


def test_a_longer_max_steps_extends_the_run_and_notes_the_lr_schedule_change(launcher, first_run, tmp_path):
    run = copy_run(first_run.log_dir, tmp_path / "run")
    launch = run_ok(launcher, run, [*first_run.args[:-1], "62", "--auto_resume"])
    (note,) = [line for line in launch.stdout().splitlines() if "max_steps" in line and "note:" in line]
    assert note.startswith("note: allowed: max_steps: 60 -> 62 (a longer run: allowed; the LR schedule now decays "
                           "over 62 steps: lr at step 60 ")
    assert "resumed from" in launch.stdout() and checkpoint_steps(run) == [61]
    assert [m["step"] for m in read_metrics(run)] == list(range(62))


def test_a_changed_eval_interval_is_allowed_and_noted(launcher, first_run, tmp_path):
    run = copy_run(first_run.log_dir, tmp_path / "run")
    launch = run_ok(launcher, run, [*first_run.args[:-1], "61", "--eval_interval", "4", "--auto_resume"])
    assert "note: allowed: eval_interval: 8 -> 4" in launch.stdout()


def test_a_run_that_crashed_before_its_first_checkpoint_is_compared_with_run_identity_json(launcher, first_run, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(first_run.log_dir / "run_identity.json", run / "run_identity.json")
    launch = launcher.run(run, [*first_run.args, "--seed", "5", "--auto_resume"])
    assert launch.proc.returncode == int(WorkerExit.RUN_MISMATCH), launch.output_tail()
    assert "differ from run_identity.json" in error_lines(launch)[0]
    assert error_lines(launch)[1:] == ["  seed: 1337 -> 5"]


def test_a_fine_tune_resumes_its_own_checkpoints_and_never_silently_restarts_from_the_pretrained_file(
        launcher, first_run, tmp_path):
    pretrained = first_run.log_dir / f"model_{FIRST_RUN_STEPS - 1:05d}.pt"
    run = tmp_path / "run"
    # What the supervisor runs on every launch: the user's arguments plus --auto_resume. Synchronous
    # saves: the crash injected after step 9 must find step 8's checkpoint on disk, not still being
    # written in the background (CI once killed that write, and model_00008.pt was never there).
    args = [*FAST_ARGS, "--no_async_checkpoint", "--max_steps", "12", "--pretrained_checkpoint", str(pretrained),
            "--auto_resume"]
    crashed = launcher.run(run, args, env={"GPT2SUP_INJECT_CRASH_AT_STEP": "9"})
    assert crashed.proc.returncode == 1 and "loaded pretrained weights" in crashed.stdout(), crashed.output_tail()
    recorded = json.loads((run / "run_identity.json").read_text())["pretrained"]
    assert recorded["path"] == str(pretrained.resolve()) and recorded["step"] == FIRST_RUN_STEPS - 1
    assert load_checkpoint(run / "model_00008.pt")["train_config"]["pretrained"] == recorded

    resumed = run_ok(launcher, run, args)
    assert "resumed from" in resumed.stdout() and "loaded pretrained weights" not in resumed.stdout()
    assert load_checkpoint(run / "model_00011.pt")["train_config"]["pretrained"] == recorded

    forgotten = launcher.run(run, [*FAST_ARGS, "--no_async_checkpoint", "--max_steps", "12", "--auto_resume"])
    assert forgotten.proc.returncode == int(WorkerExit.RUN_MISMATCH), forgotten.output_tail()
    assert error_lines(forgotten)[1:] == [
        f"  pretrained_checkpoint: {pretrained.resolve()} (step 59, content {recorded['content_digest']}) -> none"]


def test_two_processes_then_one_at_equal_total_batch_is_allowed_and_noted(launcher, tmp_path):
    run = tmp_path / "run"
    args = [*FAST_ARGS, "--max_steps", "10"]
    run_ok(launcher, run, args, nproc=2)
    assert json.loads((run / "run_identity.json").read_text())["world_size"] == 2
    launch = run_ok(launcher, run, [*FAST_ARGS, "--max_steps", "12", "--auto_resume"])
    out = launch.stdout()
    assert "note: allowed: micro_batch_size" not in out  # same micro batch: not a difference
    assert "note: allowed: world_size: 2 -> 1 (same total batch: the same tokens per step)" in out
    assert "note: allowed: max_steps: 10 -> 12" in out
    assert load_checkpoint(run / "model_00011.pt")["train_config"]["world_size"] == 1


# ----------------------------------------------------------------------------- replay check

REPLAY_ARGS = [*FAST_ARGS, "--max_steps", "16", "--dropout", "0.1"]  # checkpoint at 8, 15


def sigkill_after(launcher: WorkerLauncher, run: Path, step: int, nproc: int) -> int:
    """Start a run and SIGKILL its whole process tree once rank 0 has logged ``step``."""
    launch = launcher.start(run, REPLAY_ARGS, nproc=nproc)

    def newest_logged_step() -> int:
        """metrics.jsonl's newest complete line: the heartbeat of a step is written before its
        metrics line, so a kill timed on the heartbeat could land between the two (CI saw step 9)."""
        newest = read_jsonl(run / "metrics.jsonl", max_records=1)
        return int(newest[-1]["step"]) if newest else -1

    def reached():
        assert launch.alive(), f"worker exited early:\n{launch.output_tail()}"
        return newest_logged_step() >= step

    wait_for(reached, 240, f"step {step}", poll=0.005)
    ranks = psutil.Process(launch.pid).children(recursive=True)
    launch.kill_tree(signal.SIGKILL)
    psutil.wait_procs(ranks, timeout=30)
    launch.wait(30)
    return newest_logged_step()  # a line the kill cut short is not a logged step


@pytest.mark.parametrize("nproc", [1, 2])
def test_after_a_sigkill_the_resume_re_does_the_lost_steps_bit_for_bit(launcher, tmp_path, nproc):
    run = tmp_path / "run"
    logged_until = sigkill_after(launcher, run, 10, nproc)
    assert 10 <= logged_until < 15, "killed too late: no second checkpoint may exist yet"
    assert checkpoint_steps(run) == [8]
    losses_before = {m["step"]: m["loss"] for m in read_metrics(run)}

    launch = run_ok(launcher, run, [*REPLAY_ARGS, "--auto_resume"], nproc=nproc)
    (event,) = read_events(run, "replay_check")
    assert event["source"] == "worker" and event["resumed_step"] == 8
    assert event["steps_compared"] == logged_until - 8 > 0
    assert event["equal"] is True and event["first_mismatch"] is None
    assert event["message"] in launch.stdout()
    losses_after = {m["step"]: m["loss"] for m in read_metrics(run)}
    assert all(losses_after[s] == losses_before[s] for s in range(9, logged_until + 1))


def test_a_replay_after_an_allowed_math_change_is_not_compared_and_names_the_change_as_the_cause(launcher, tmp_path):
    """Dropout changed under --allow_config_change: the re-done steps cannot match, and the
    cause is that change, not "changed data, code, hardware, or a nondeterministic kernel"."""
    run = tmp_path / "run"
    crashed = launcher.run(run, REPLAY_ARGS, env={"GPT2SUP_INJECT_CRASH_AT_STEP": "11"})
    assert crashed.proc.returncode == 1, crashed.output_tail()
    assert max(m["step"] for m in read_metrics(run)) == 11

    launch = run_ok(launcher, run, [*FAST_ARGS, "--max_steps", "16", "--dropout", "0.0", "--auto_resume",
                                    "--allow_config_change"])
    assert read_events(run, "replay_check") == []  # no MISMATCH for `gpt2sup status` to show
    (line,) = [line for line in launch.stdout().splitlines() if "replay check" in line]
    assert line.startswith("replay check: not compared: the 3 step(s) re-done after the resume from step 8")
    assert "dropout: 0.1 -> 0.0" in line and "WARNING" not in line and "hardware" not in line


def test_a_replay_after_a_longer_max_steps_names_the_lr_schedule_change_not_hardware(launcher, tmp_path):
    """Issue 19, section 4: a longer --max_steps is an allowed extension whose LR schedule
    changes (documented); the replay check warned of "changed data, code, hardware, or a
    nondeterministic kernel" instead."""
    run = tmp_path / "run"
    crashed = launcher.run(run, REPLAY_ARGS, env={"GPT2SUP_INJECT_CRASH_AT_STEP": "11"})
    assert crashed.proc.returncode == 1, crashed.output_tail()
    warmup = ["--warmup_steps", "1"]  # what max_steps 16 resolved to: only max_steps differs

    launch = run_ok(launcher, run, [*REPLAY_ARGS, *warmup, "--max_steps", "20", "--auto_resume"])

    assert "WARNING: replay check" not in launch.stdout() and "hardware" not in launch.stdout()
    assert read_events(run, "replay_check") == []
    (line,) = [line for line in launch.stdout().splitlines() if "replay check" in line]
    assert line.startswith("replay check: not compared: the 3 step(s) re-done after the resume from step 8")
    assert "max_steps: 16 -> 20" in line and "LR schedule" in line


def test_a_fresh_run_and_a_resume_with_nothing_to_re_do_write_no_replay_event(launcher, tmp_path):
    run = tmp_path / "run"
    stopped = launcher.start(run, REPLAY_ARGS)
    wait_for(lambda: (read_heartbeat(run) or {}).get("step", -1) >= 9, 240, "step 9")
    os.kill(stopped.pid, signal.SIGTERM)  # saves at the step it stops after: nothing to re-do
    assert stopped.wait(120) == 0, stopped.output_tail()
    assert read_events(run, "replay_check") == []
    run_ok(launcher, run, [*REPLAY_ARGS, "--auto_resume"])
    assert read_events(run, "replay_check") == []


# --- issue 19 item 5: a damaged run_identity.json is rebuilt or refused, never silently kept -----

def test_a_garbage_run_identity_json_is_rebuilt_from_the_checkpoint_it_resumes(launcher, first_run, tmp_path):
    run = copy_run(first_run.log_dir, tmp_path / "run")
    (run / "run_identity.json").write_bytes(b'{"identity_version": 1, "mod\x00\x00 garbage')
    launch = run_ok(launcher, run, [*first_run.args[:-1], "61", "--auto_resume"])
    final = f"model_{FIRST_RUN_STEPS - 1:05d}.pt"
    assert f"note: run_identity.json was unreadable (not JSON): rebuilt from checkpoint {final}" in launch.stdout()
    rebuilt = json.loads((run / "run_identity.json").read_text())
    assert rebuilt == {**load_checkpoint(first_run.log_dir / final)["train_config"], "argv": []}


def test_a_garbage_run_identity_json_without_a_checkpoint_is_refused_in_one_line(launcher, first_run, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run_identity.json").write_text("[1, 2, 3]")
    launch = launcher.run(run, [*first_run.args, "--auto_resume"])
    assert launch.proc.returncode == int(WorkerExit.RUN_MISMATCH), launch.output_tail()
    assert error_lines(launch)[-1] == (
        f"train_gpt2: error: {run / 'run_identity.json'} is unreadable (not a JSON object) and no checkpoint holds the run's identity "
        f"to rebuild it from: delete it to start {run} afresh, or use a new --log_dir")
    assert (run / "run_identity.json").read_text() == "[1, 2, 3]"  # refused, touching nothing
    assert not list(run.glob("model_*.pt"))
