"""Stragglers: the pure verdict, how ``status`` and the panel show it, and a real 2-rank run with
one rank slowed (``GPT2SUP_INJECT_SLOW_RANK``) that must come out as one ``straggler`` event."""
from __future__ import annotations

import io
import socket
import subprocess
import time
from pathlib import Path

import pytest
from rich.console import Console

from shared.exit_codes import SupervisorExit
from shared.heartbeat import Heartbeat, write_heartbeat
from shared.run_dir import RunDir
from supervisor.policy import find_stragglers
from supervisor.views.dashboard import render_panel, status_lines
from supervisor.views.snapshot import collect_snapshot
from tests.supervisor.helpers import (
    REPO_ROOT,
    WORKER_ARGS,
    child_env,
    console_text,
    events_named,
    gpt2sup_argv,
    start_supervisor,
    wait_exit,
)

FAST = [0.010] * 20
SLOW = [0.025] * 20


# --- the verdict ---------------------------------------------------------------------------------
def test_of_two_ranks_the_slow_one_is_the_straggler_not_both():
    (found,) = find_stragglers({0: FAST, 1: SLOW})
    assert found.rank == 1 and found.ratio == pytest.approx(2.5)
    assert found.median_s == pytest.approx(0.025) and found.others_median_s == pytest.approx(0.010)
    assert "rank 1 on gpu-07 is a straggler" in found.describe("gpu-07")


def test_among_eight_ranks_a_rank_past_the_ratio_is_found_and_one_below_it_is_not():
    samples = {r: [0.100 + r * 0.001] * 20 for r in range(7)}
    samples[7] = [0.130] * 20  # 1.26x the others' median
    assert [s.rank for s in find_stragglers(samples)] == [7]
    samples[7] = [0.115] * 20  # 1.11x: slower, not a straggler
    assert find_stragglers(samples) == []


def test_one_slow_step_is_not_a_straggler_the_median_is_used():
    spiky = [0.010] * 19 + [5.0]  # a GC pause
    assert find_stragglers({0: FAST, 1: spiky}) == []
    mostly_slow = [0.010] * 8 + [0.030] * 12
    assert [s.rank for s in find_stragglers({0: FAST, 1: mostly_slow})] == [1]


def test_too_few_samples_one_rank_or_all_equally_slow_is_nothing():
    assert find_stragglers({0: FAST, 1: SLOW[:5]}) == []  # a fresh attempt: not judged yet
    assert find_stragglers({1: SLOW}) == []
    assert find_stragglers({0: SLOW, 1: SLOW, 2: SLOW}) == []
    assert find_stragglers({}) == []


def test_a_difference_below_the_timer_noise_floor_is_ignored():
    assert find_stragglers({0: [0.0010] * 20, 1: [0.0020] * 20}) == []  # 2x, but 1 ms


def test_a_flagged_rank_stays_flagged_until_it_really_recovers():
    samples = {0: [0.010] * 20, 1: [0.0115] * 20, 2: [0.010] * 20}  # rank 1 at 1.15x, 1.5 ms more
    assert find_stragglers(samples, min_excess_s=0.001) == []  # not flagged: needs 1.2x
    kept = find_stragglers(samples, flagged={1}, min_excess_s=0.001)  # flagged: stays until below 1.1x
    assert [s.rank for s in kept] == [1]
    samples[1] = [0.0105] * 20  # 1.05x: recovered
    assert find_stragglers(samples, flagged={1}, min_excess_s=0.001) == []


def test_garbage_samples_from_a_heartbeat_are_not_used():
    for bad in (["x"] * 20, [float("nan")] * 20, [-1.0] * 20, [True] * 20):
        assert find_stragglers({0: FAST, 1: bad, 2: FAST}) == []


# --- status and the panel ------------------------------------------------------------------------
def _beat(run_dir: Path, rank: int, compute_s: list[float], host: str) -> None:
    write_heartbeat(RunDir.at(run_dir).heartbeat(rank), Heartbeat(
        pid=999_999, rank=rank, world_size=2, step=40, phase="train", time=time.time(), loss=3.0,
        tokens_per_s=1000.0, max_steps=100, hostname=host, compute_s=compute_s))


def test_status_and_the_panel_name_the_straggler_and_its_node(tmp_path):
    run_dir = tmp_path / "run"
    _beat(run_dir, 0, FAST, "node-a")
    _beat(run_dir, 1, SLOW, "node-b")
    snapshot = collect_snapshot(run_dir)
    assert snapshot.ranks[0].straggler is None and snapshot.ranks[1].straggler is not None
    assert snapshot.ranks[1].straggler.ratio == pytest.approx(2.5)
    assert snapshot.to_dict()["ranks"][1]["hostname"] == "node-b"
    lines = status_lines(snapshot)
    warnings = [line for line in lines if line.startswith("WARNING: straggler:")]
    assert len(warnings) == 1 and "rank 1 on node-b is a straggler" in warnings[0] and "2.50x" in warnings[0]
    (rank1,) = [line for line in lines if line.startswith("rank 1 ")]
    assert "STRAGGLER (2.50x)" in rank1 and "compute 25.0ms/step" in rank1
    (rank0,) = [line for line in lines if line.startswith("rank 0 ")]
    assert "STRAGGLER" not in rank0
    console = Console(file=io.StringIO(), width=200, color_system=None)
    console.print(render_panel(snapshot))
    panel = console.file.getvalue()
    assert "rank 1 on node-b is a straggler" in panel and "straggler on node-b" in panel
    assert "straggler on node-a" not in panel


def test_without_compute_samples_nothing_is_marked(tmp_path):
    run_dir = tmp_path / "run"
    for rank in (0, 1):
        write_heartbeat(RunDir.at(run_dir).heartbeat(rank), Heartbeat(
            pid=999_999, rank=rank, world_size=2, step=4, phase="train", time=time.time()))
    lines = [line.replace(str(run_dir), "DIR") for line in status_lines(collect_snapshot(run_dir))]
    assert not any("straggler" in line.lower() or "compute" in line for line in lines), lines


# --- a real run ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_slowed_rank_is_one_straggler_event_with_its_host_and_status_shows_it(tmp_path):
    log_dir = tmp_path / "run"
    args = list(WORKER_ARGS)
    args[args.index("--max_steps") + 1] = "60"
    args[args.index("--checkpoint_interval") + 1] = "0"
    proc = start_supervisor(log_dir, "--max-restarts", "0", worker_args=args,
                            env={"GPT2SUP_INJECT_SLOW_RANK": "1:0.05"})
    assert wait_exit(proc, log_dir, timeout=240) == SupervisorExit.FINISHED, console_text(log_dir)[-3000:]
    events = events_named(log_dir, "straggler")
    assert len(events) == 1, events  # once per attempt, not every monitor interval
    (event,) = events
    assert event["rank"] == 1 and event["hostname"] == socket.gethostname() and event["ratio"] > 1.2
    assert event["median_s"] >= 0.05 and f"rank 1 on {socket.gethostname()} is a straggler" in event["message"]
    assert "is a straggler" in console_text(log_dir)  # the supervisor said it too
    status = subprocess.run(gpt2sup_argv("status", "--log-dir", str(log_dir)), cwd=REPO_ROOT, env=child_env(),
                            capture_output=True, text=True, timeout=60, check=False)
    lines = status.stdout.splitlines()
    assert any(line.startswith(f"WARNING: straggler: rank 1 on {socket.gethostname()}") for line in lines), status.stdout
    assert not any("rank 0 on" in line and "is a straggler" in line for line in lines)
