"""Unit tests for the pure restart policy (no processes, no clock)."""
from __future__ import annotations

import pytest

from supervisor import policy
from supervisor.policy import (
    BackoffConfig,
    CheckpointOnDisk,
    ExitFacts,
    ProgressTracker,
    RankBeat,
    RankExit,
    RestartLimits,
    StepPaceTracker,
    TimeoutConfig,
)

CFG = TimeoutConfig(hang_timeout=30.0, startup_timeout=600.0, checkpoint_timeout=300.0, eval_timeout=900.0)
AUTO = TimeoutConfig(hang_timeout=None, startup_timeout=600.0, checkpoint_timeout=300.0, eval_timeout=900.0,
                     auto_multiple=10.0, auto_floor=60.0)


def test_phase_timeouts_pick_the_allowance_of_each_phase():
    assert policy.timeout_for_phase("train", CFG) == 30.0
    assert policy.timeout_for_phase("startup", CFG) == 600.0
    assert policy.timeout_for_phase("checkpoint", CFG) == 300.0
    for phase in ("eval", "hellaswag", "generate"):
        assert policy.timeout_for_phase(phase, CFG) == 900.0


def test_auto_timeout_is_multiple_of_slowest_step_with_floor():
    assert policy.timeout_for_phase("train", AUTO, slowest_step_s=None) == 600.0  # pace unknown
    assert policy.timeout_for_phase("train", AUTO, slowest_step_s=1.0) == 60.0  # floor
    assert policy.timeout_for_phase("train", AUTO, slowest_step_s=12.0) == 120.0


def test_parse_hang_timeout():
    assert policy.parse_hang_timeout("auto") is None
    assert policy.parse_hang_timeout(" AUTO ") is None
    assert policy.parse_hang_timeout("7.5") == 7.5
    for bad in ("0", "-3", "soon", "nan", "inf"):
        with pytest.raises(ValueError):
            policy.parse_hang_timeout(bad)


def test_pace_tracker_learns_slowest_train_step_and_ignores_other_phases():
    pace = StepPaceTracker()
    pace.observe(0, 100.0, "train")
    pace.observe(1, 130.0, "train")  # warm-up step: ignored
    assert pace.slowest_step_s is None
    pace.observe(3, 132.0, "train")  # 1 s/step
    pace.observe(4, 140.0, "eval")  # eval in between: not a step interval
    pace.observe(5, 141.0, "train")
    assert pace.slowest_step_s == pytest.approx(1.0)
    pace.observe(7, 147.0, "train")  # 3 s/step
    assert pace.slowest_step_s == pytest.approx(3.0)
    pace.reset_attempt()
    pace.observe(8, 500.0, "train")  # new attempt: no interval across the gap
    assert pace.slowest_step_s == pytest.approx(3.0)


def test_find_hung_rank_names_the_rank_that_went_quiet_first():
    now = 1000.0
    beats = [
        RankBeat(rank=0, phase="train", time=now - 35, step=10),
        RankBeat(rank=1, phase="train", time=now - 50, step=9),  # stalled first
        RankBeat(rank=2, phase="train", time=now - 1, step=11),
    ]
    verdict = policy.find_hung_rank(beats, now, CFG)
    assert verdict is not None and verdict.rank == 1 and verdict.step == 9
    assert "rank 1" in verdict.describe()


def test_long_phases_are_not_hangs_within_their_allowance():
    now = 1000.0
    beats = [
        RankBeat(rank=0, phase="checkpoint", time=now - 200),
        RankBeat(rank=1, phase="eval", time=now - 800),
        RankBeat(rank=2, phase="startup", time=now - 500),
    ]
    assert policy.find_hung_rank(beats, now, CFG) is None
    assert policy.find_hung_rank(beats[:1], now + 150, CFG).rank == 0  # checkpoint 350 s > 300 s
    assert policy.find_hung_rank(beats, now + 150, CFG).rank == 1  # both overdue: the older one


def test_startup_timeout_only_without_any_heartbeat():
    assert policy.startup_timed_out(0.0, 601.0, any_heartbeat=False, config=CFG)
    assert not policy.startup_timed_out(0.0, 599.0, any_heartbeat=False, config=CFG)
    assert not policy.startup_timed_out(0.0, 9999.0, any_heartbeat=True, config=CFG)


def test_backoff_doubles_caps_and_resets_after_healthy_period():
    cfg = BackoffConfig(initial_s=2.0, max_s=10.0, reset_after_s=100.0)
    assert [policy.backoff_delay(n, cfg) for n in range(0, 6)] == [0.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert policy.backoff_delay(10_000, cfg) == 10.0  # no overflow
    assert policy.next_consecutive_failures(4, attempt_duration_s=5.0, config=cfg) == 5
    assert policy.next_consecutive_failures(4, attempt_duration_s=150.0, config=cfg) == 1


def test_progress_tracker_counts_failures_without_a_newer_checkpoint():
    tracker = ProgressTracker(best_step=None)
    assert tracker.record_failure(None) == 1  # crashed before the first checkpoint
    assert tracker.record_failure(10) == 0  # progress
    assert tracker.record_failure(10) == 1
    assert tracker.record_failure(10) == 2
    assert tracker.record_failure(20) == 0
    assert tracker.record_failure(5) == 1  # fell back to an older checkpoint: not progress


def _decide(outcome, restarts_used=0, stalled=0, consecutive=1, limits=RestartLimits(3, 2)):
    return policy.decide_after_failure(
        outcome,
        restarts_used=restarts_used,
        stalled_failures=stalled,
        consecutive_failures=consecutive,
        limits=limits,
        backoff=BackoffConfig(1.0, 8.0, 60.0),
    )


def test_decide_restarts_with_backoff_then_gives_up_on_budget_or_no_progress():
    crash = policy.Outcome(policy.CRASHED, exit_code=1)
    first = _decide(crash, consecutive=3)
    assert first.restart and first.delay_s == 4.0
    budget = _decide(crash, restarts_used=3)
    assert not budget.restart and "budget" in budget.reason
    stuck = _decide(crash, restarts_used=1, stalled=2)
    assert not stuck.restart and "no progress" in stuck.reason
    assert _decide(crash, restarts_used=1, stalled=2, limits=RestartLimits(3, 0)).restart  # 0 = never
    usage = _decide(policy.Outcome(policy.USAGE_ERROR, exit_code=2))
    assert not usage.restart


@pytest.mark.parametrize(
    "facts, kind",
    [
        (ExitFacts(0, ["finished", "finished"]), policy.FINISHED),
        (ExitFacts(0, ["stopped", "stopped"]), policy.STOPPED),
        (ExitFacts(1, ["running"], stop_requested=True), policy.STOPPED),
        (ExitFacts(0, ["finished"], stop_requested=True), policy.FINISHED),
        (ExitFacts(1, ["running", "running"], [RankExit(1, -9)]), policy.CRASHED),
        (ExitFacts(1, ["running"], [RankExit(0, -9)], oom_kill_observed=True), policy.OOM),
        (ExitFacts(1, ["running"], [RankExit(0, -9)], memory_was_tight=True), policy.OOM),
        (ExitFacts(1, ["diverged"], [RankExit(0, 3)]), policy.DIVERGED),
        (ExitFacts(1, [], [RankExit(0, 2)]), policy.USAGE_ERROR),
        (ExitFacts(-9, []), policy.CRASHED),
    ],
)
def test_classify_exit(facts, kind):
    assert policy.classify_exit(facts).kind == kind


def test_classify_exit_reports_the_root_cause_rank_and_signal():
    outcome = policy.classify_exit(ExitFacts(1, ["running", "running"], [RankExit(1, -9), RankExit(0, 1)]))
    assert (outcome.rank, outcome.signal, outcome.exit_code) == (1, 9, None)
    outcome = policy.classify_exit(ExitFacts(1, ["running"], [RankExit(0, 1)]))
    assert (outcome.rank, outcome.exit_code) == (0, 1)


def test_disk_threshold_levels_and_sizes():
    assert policy.default_min_free_disk(None) == policy.MIN_FREE_DISK_FLOOR
    assert policy.default_min_free_disk(10**9) == 2 * 10**9
    assert policy.disk_level(5 * 10**9, 2 * 10**9, 10**9) == policy.DISK_OK
    assert policy.disk_level(1.5 * 10**9, 2 * 10**9, 10**9) == policy.DISK_LOW
    assert policy.disk_level(0.5 * 10**9, 2 * 10**9, 10**9) == policy.DISK_CRITICAL
    assert policy.parse_size("2G") == 2 * 1024**3
    assert policy.parse_size("500MiB") == 500 * 1024**2
    assert policy.parse_size("1024") == 1024
    with pytest.raises(ValueError):
        policy.parse_size("lots")


def test_prune_deletes_oldest_first_and_never_the_newest_valid():
    ckpts = [CheckpointOnDisk(s, 100, f"model_{s:05d}.pt") for s in (10, 20, 30, 40)]
    chosen = policy.choose_checkpoints_to_prune(ckpts, free_bytes=50, threshold_bytes=220, newest_valid_step=30)
    assert [c.step for c in chosen] == [10, 20]
    # Even when space can never be reached, the newest valid (30) and newer (40) stay.
    chosen = policy.choose_checkpoints_to_prune(ckpts, free_bytes=0, threshold_bytes=10**9, newest_valid_step=30)
    assert [c.step for c in chosen] == [10, 20]
    assert policy.choose_checkpoints_to_prune(ckpts, 0, 10**9, newest_valid_step=None) == []
    assert policy.choose_checkpoints_to_prune(ckpts, 500, 220, newest_valid_step=40) == []


def test_disk_watch_reports_only_crossings():
    watch = policy.DiskWatch()
    assert not watch.update(policy.DISK_OK)
    assert watch.update(policy.DISK_LOW)
    assert not watch.update(policy.DISK_LOW)
    assert watch.update(policy.DISK_OK)


def test_a_suspect_rank_is_named_even_if_a_peer_went_quiet_earlier():
    now = 1000.0
    beats = [RankBeat(rank=0, phase="train", time=now - 40, step=5), RankBeat(rank=1, phase="train", time=now - 39, step=5)]
    assert policy.find_hung_rank(beats, now, CFG).rank == 0  # oldest heartbeat
    assert policy.find_hung_rank(beats, now, CFG, suspect_ranks=[1]).rank == 1  # e.g. SIGSTOPped


# --- pure helpers of the run loop: command line, environment, torchrun's failure summary -------

TORCHRUN_FAILURE_LOG = """\
step     5 | loss 10.60 | lr 3.3e-04
injected crash after step 5
W1126 17:57:07.550000 10256 site-packages/torch/distributed/elastic/multiprocessing/api.py:1028] Sending process 10486 closing signal SIGTERM
Traceback (most recent call last):
  File "<frozen runpy>", line 198, in _run_module_as_main
  File "/x/site-packages/torch/distributed/run.py", line 1032, in <module>
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
worker.train_gpt2 FAILED
------------------------------------------------------------
Failures:
[1]:
  time      : 2026-11-26_17:57:07
  host      : box
  rank      : 0 (local_rank: 0)
  exitcode  : -15 (pid: 10486)
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-11-26_17:57:07
  host      : box
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 10487)
  error_file: <N/A>
  traceback : Signal 9 (SIGKILL) received by PID 10487
============================================================
"""


def test_parse_rank_exits_puts_the_root_cause_first():
    from supervisor.run_loop import parse_rank_exits

    assert parse_rank_exits(TORCHRUN_FAILURE_LOG) == [RankExit(1, -9), RankExit(0, -15)]
    assert parse_rank_exits("no summary here") == []


def test_meaningful_log_lines_drop_torchrun_noise():
    from supervisor.run_loop import meaningful_log_lines

    lines = meaningful_log_lines(TORCHRUN_FAILURE_LOG, count=2)
    assert lines == ["injected crash after step 5"]  # the routine step line is noise too


def test_build_command_single_and_multi_node(tmp_path):
    from supervisor.run_loop import MultiNode, RunConfig, build_command, build_env

    cfg = RunConfig(log_dir=tmp_path, cwd=tmp_path, worker_args=["--max_steps", "5"], nproc_per_node=4)
    argv = build_command(cfg)
    assert "--standalone" in argv and argv[argv.index("--max-restarts") + 1] == "0"
    assert argv[argv.index("-m", 3):] == ["-m", "worker.train_gpt2", "--auto_resume", "--log_dir", str(tmp_path),
                                           "--max_steps", "5"]
    cfg.multi_node = MultiNode(nnodes="2", node_rank=1, rdzv_endpoint="host:29500", rdzv_id="job")
    cfg.worker_module = "worker.finetune"
    argv = build_command(cfg)
    assert "--standalone" not in argv
    assert argv[argv.index("--rdzv-endpoint") + 1] == "host:29500" and argv[argv.index("--node-rank") + 1] == "1"
    assert "worker.finetune" in argv
    assert build_env(cfg, {"OMP_NUM_THREADS": "7"})["OMP_NUM_THREADS"] == "7"  # the user's choice wins
    assert int(build_env(cfg, {})["OMP_NUM_THREADS"]) >= 1


def test_meaningful_log_lines_skip_routine_step_lines():
    """The failure reason should say why it died, not repeat the last losses."""
    from supervisor.run_loop import meaningful_log_lines

    log = (
        "step   141 | loss 5.078215 | lr 6.7404e-04 | norm 1.2974 | dt 710.46ms | tok/sec 1441.33\n"
        "RuntimeError: CUDA error: an illegal memory access was encountered\n"
        "step   142 | loss 5.426543 | lr 6.6900e-04 | norm 0.9982 | dt 721.33ms | tok/sec 1419.60\n"
    )
    assert meaningful_log_lines(log, count=3) == ["RuntimeError: CUDA error: an illegal memory access was encountered"]
