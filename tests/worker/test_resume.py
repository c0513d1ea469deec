"""Resume is bitwise: a run killed at a random step and resumed equals one that never stopped.

Each test kills or stops a real worker process with a real signal at a step chosen at random
(after the first checkpoint), resumes it with ``--auto_resume``, and compares with the session's
uninterrupted reference run: per-step losses (and lr / grad norm) in ``metrics.jsonl``, the whole
``log.txt``, and the final checkpoint tensor by tensor with ``torch.equal`` (model, optimizer,
RNG states, loader position). ``--dropout 0.1`` makes every RNG matter.

The random step comes from ``random.Random(seed)``; the seed is printed (``pytest -s``) and can be
pinned with ``GPT2SUP_TEST_SEED`` to replay a failure.
"""
from __future__ import annotations

import os
import random
import re
import shutil
import signal
import time
from pathlib import Path

import psutil
import pytest

from shared.run_dir import RunDir, step_from_checkpoint_name
from tests.worker.helpers import (
    CHECKPOINT_INTERVAL,
    FAST_ARGS,
    FINAL_CHECKPOINT,
    N_STEPS,
    RESUME_ARGS,
    WorkerLaunch,
    assert_trees_equal,
    checkpoint_steps,
    load_checkpoint,
    read_heartbeat,
    read_metrics,
    run_ok,
    step_losses,
    step_records,
    wait_for,
)

# Real training processes or probe children: the end-to-end layer, run by CI, not the inner loop.
pytestmark = pytest.mark.slow

FIRST_CHECKPOINT = CHECKPOINT_INTERVAL


def chosen_step(test_name: str, low: int, high: int) -> int:
    """A random step in [low, high], reproducible from the printed seed."""
    seed = int(os.environ.get("GPT2SUP_TEST_SEED", time.time_ns() % 2**32))
    step = random.Random(f"{seed}:{test_name}").randint(low, high)
    print(f"[{test_name}] GPT2SUP_TEST_SEED={seed} -> interrupting at step {step}")
    return step


def wait_until_step(launch: WorkerLaunch, step: int, timeout: float = 240.0) -> dict:
    """Block until rank 0's heartbeat reports ``step`` completed (fail if the worker exits)."""

    def reached():
        if not launch.alive():
            raise AssertionError(f"worker exited early ({launch.proc.returncode}):\n{launch.output_tail()}")
        beat = read_heartbeat(launch.log_dir)
        return beat if beat and beat.get("step", -1) >= step else None

    return wait_for(reached, timeout, f"step {step}", poll=0.005)


def resumed_step_from_output(text: str) -> int:
    match = re.search(r"resumed from \S+ \(step (\d+)\)", text)
    assert match, f"the resumed run did not say where it resumed from:\n{text[-2000:]}"
    return int(match.group(1))


def assert_same_as_reference(run: Path, reference: Path) -> None:
    assert step_records(run) == step_records(reference), "per-step loss / lr / norm differ from the uninterrupted run"
    assert [s for s, _ in step_losses(run)] == list(range(N_STEPS))
    assert (run / "log.txt").read_text() == (reference / "log.txt").read_text()
    # Model, optimizer (moments and step counts), RNG states, loader position, val loss: all bitwise.
    assert_trees_equal(load_checkpoint(run / FINAL_CHECKPOINT), load_checkpoint(reference / FINAL_CHECKPOINT))


def sigkill_and_resume(launcher, ref: Path, tmp_path: Path, test_name: str, nproc: int) -> None:
    run = tmp_path / "run"
    target = chosen_step(test_name, FIRST_CHECKPOINT + 1, N_STEPS - 4)
    launch = launcher.start(run, RESUME_ARGS, nproc=nproc)
    wait_until_step(launch, target)
    assert (run / f"model_{FIRST_CHECKPOINT:05d}.pt").exists()
    if nproc == 1:
        os.kill(launch.pid, signal.SIGKILL)
    else:  # torchrun and both ranks at once, like a node dying
        ranks = psutil.Process(launch.pid).children(recursive=True)
        assert len(ranks) >= nproc, ranks
        launch.kill_tree(signal.SIGKILL)
        _, alive = psutil.wait_procs(ranks, timeout=30)
        assert not alive, f"ranks survived SIGKILL: {alive}"
    assert launch.wait(30) == -signal.SIGKILL
    killed_at = read_heartbeat(run)["step"]
    print(f"[{test_name}] killed after step {killed_at}")
    assert not (run / FINAL_CHECKPOINT).exists(), "the run finished before it could be killed"
    assert read_metrics(run)[-1]["step"] < N_STEPS - 1
    linked = RunDir.at(run).resolve_latest_link()
    assert linked is not None, "no usable latest_checkpoint.pt after the first checkpoint"

    resumed = run_ok(launcher, run, [*RESUME_ARGS, "--auto_resume"], nproc=nproc)
    assert resumed_step_from_output(resumed.stdout()) == step_from_checkpoint_name(linked.name)
    assert FIRST_CHECKPOINT <= step_from_checkpoint_name(linked.name) <= killed_at
    assert_same_as_reference(run, ref)


def test_sigkill_at_random_step_then_auto_resume_is_bitwise_identical(launcher, ref_bare, tmp_path):
    sigkill_and_resume(launcher, ref_bare, tmp_path, "bare", nproc=1)


def test_sigkill_torchrun_two_processes_then_auto_resume_is_bitwise_identical(launcher, ref_ddp, tmp_path):
    sigkill_and_resume(launcher, ref_ddp, tmp_path, "torchrun2", nproc=2)
    for rank in (0, 1):
        beat = read_heartbeat(tmp_path / "run", rank)
        assert beat["status"] == "finished" and beat["world_size"] == 2 and beat["step"] == N_STEPS - 1


def test_sigterm_saves_current_step_and_resume_loses_no_step(launcher, ref_bare, tmp_path):
    run = tmp_path / "run"
    target = chosen_step("sigterm", FIRST_CHECKPOINT + 1, N_STEPS - 5)
    launch = launcher.start(run, RESUME_ARGS)
    wait_until_step(launch, target)
    os.kill(launch.pid, signal.SIGTERM)
    assert launch.wait(120) == 0, launch.output_tail()

    beat = read_heartbeat(run)
    stopped_at = beat["step"]
    print(f"[sigterm] stopped after step {stopped_at}")
    assert beat["status"] == "stopped"
    assert target <= stopped_at < N_STEPS - 1
    assert beat["last_checkpoint"] == f"model_{stopped_at:05d}.pt"
    assert (run / "latest_checkpoint.pt").resolve() == (run / f"model_{stopped_at:05d}.pt").resolve()
    assert load_checkpoint(run / f"model_{stopped_at:05d}.pt")["step"] == stopped_at
    assert read_metrics(run)[-1]["step"] == stopped_at
    assert "stop requested (SIGTERM)" in launch.stdout()

    resumed = run_ok(launcher, run, [*RESUME_ARGS, "--auto_resume"])
    assert resumed_step_from_output(resumed.stdout()) == stopped_at
    assert_same_as_reference(run, ref_bare)


@pytest.fixture(scope="module")
def ref_ddp_no_dropout(launcher, tmp_path_factory) -> Path:
    """Two processes, dropout 0: the run a one-process resume must reproduce up to float error."""
    log_dir = tmp_path_factory.mktemp("ref_ddp_nodrop") / "run"
    run_ok(launcher, log_dir, [*FAST_ARGS, "--max_steps", str(N_STEPS), "--dropout", "0.0"], nproc=2)
    return log_dir


def test_two_process_checkpoint_resumed_on_one_process_reads_the_same_tokens(launcher, ref_ddp_no_dropout, tmp_path):
    source = ref_ddp_no_dropout
    run = tmp_path / "run"
    run.mkdir()
    start = FIRST_CHECKPOINT
    shutil.copy(source / f"model_{start:05d}.pt", run / f"model_{start:05d}.pt")
    for name in ("log.txt", "metrics.jsonl"):  # the resume drops the lines after `start`
        shutil.copy(source / name, run / name)

    resumed = run_ok(launcher, run, [*FAST_ARGS, "--max_steps", str(N_STEPS), "--dropout", "0.0", "--auto_resume"])
    assert resumed_step_from_output(resumed.stdout()) == start
    assert "2 x 32 x 1 processes x 2 accumulation steps" in resumed.stdout()

    # Same global token position after every saved step, though 1 process x 2 micro-steps now
    # reads what 2 processes x 1 micro-step read before.
    later = [s for s in checkpoint_steps(source) if s > start]
    assert later == checkpoint_steps(run)[1:] and later, (checkpoint_steps(source), checkpoint_steps(run))
    positions = []
    for step in later:
        one = load_checkpoint(run / f"model_{step:05d}.pt")
        two = load_checkpoint(source / f"model_{step:05d}.pt")
        assert one["train_config"]["world_size"] == 1 and two["train_config"]["world_size"] == 2
        assert one["train_loader_state"] == two["train_loader_state"], step
        positions.append(one["train_loader_state"])
    assert len({tuple(sorted(p.items())) for p in positions}) == len(positions), "the loader did not advance"

    # Same tokens, same math: losses agree to float tolerance (summation order differs).
    expected = dict(step_losses(source))
    got = step_losses(run)
    assert [s for s, _ in got] == list(range(N_STEPS))
    for step, loss in got[start + 1:]:
        assert loss == pytest.approx(expected[step], abs=1e-4), f"step {step}: {loss} vs {expected[step]}"
    # ... and they are not trivially equal: the losses move from step to step.
    assert len({round(loss, 3) for _, loss in got[start + 1:]}) > 5
