"""Unit tests for the pure restart policy (no processes, no clock)."""
from __future__ import annotations

import pytest

from shared.exit_codes import SupervisorExit, WorkerExit
from shared.vocabulary import DiskLevel, OutcomeKind, Phase, SupervisorStateName
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

CFG_T = TimeoutConfig(hang_timeout=30.0, startup_timeout=600.0, checkpoint_timeout=300.0, eval_timeout=900.0)
CFG = policy.phase_timeouts(CFG_T, policy.Measurements())
AUTO = TimeoutConfig(hang_timeout=None, startup_timeout=600.0, checkpoint_timeout=300.0, eval_timeout=900.0,
                     auto_multiple=10.0, auto_floor=60.0)


def _auto_train(slowest_step_s):
    return policy.phase_timeouts(AUTO, policy.Measurements(slowest_step_s=slowest_step_s))[Phase.TRAIN]


def test_phase_timeouts_pick_the_allowance_of_each_phase():
    assert policy.timeout_for_phase("train", CFG) == 30.0
    assert policy.timeout_for_phase("startup", CFG) == 600.0
    assert policy.timeout_for_phase("checkpoint", CFG) == 300.0
    for phase in ("eval", "hellaswag", "generate"):
        assert policy.timeout_for_phase(phase, CFG) == 900.0


def test_auto_timeout_is_multiple_of_slowest_step_with_floor():
    assert _auto_train(None) == 600.0  # pace unknown
    assert _auto_train(1.0) == 60.0  # floor
    assert _auto_train(12.0) == 120.0


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


def test_a_hang_is_described_with_the_phases_word_whether_it_came_as_a_string_or_an_enum():
    """A typed heartbeat's phase is a Phase: the line said "in phase <Phase.TRAIN: 'train'>"."""
    for phase in ("train", Phase.TRAIN):
        beat = RankBeat(rank=1, phase=phase, time=0.0, step=9)
        verdict = policy.find_hung_rank([beat], 1000.0, CFG)
        assert verdict is not None
        assert verdict.describe() == "rank 1 silent for 1000.0s in phase 'train' after step 9 (timeout 30s)"


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
    assert policy.startup_timed_out(0.0, None, 601.0, any_heartbeat=False, config=CFG_T)
    assert not policy.startup_timed_out(0.0, None, 599.0, any_heartbeat=False, config=CFG_T)
    assert not policy.startup_timed_out(0.0, None, 9999.0, any_heartbeat=True, config=CFG_T)


def test_the_startup_allowance_counts_from_the_workers_start_not_torchruns():
    assert not policy.startup_timed_out(0.0, 30.0, 601.0, any_heartbeat=False, config=CFG_T)
    assert policy.startup_timed_out(0.0, 30.0, 631.0, any_heartbeat=False, config=CFG_T)


def test_backoff_doubles_caps_and_resets_after_healthy_period():
    cfg = BackoffConfig(initial_s=2.0, max_s=10.0, reset_after_s=100.0)
    assert [policy.backoff_delay(n, cfg) for n in range(6)] == [0.0, 2.0, 4.0, 8.0, 10.0, 10.0]
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


LIMITS = RestartLimits(3, 2)


def _decide(outcome, restarts_used=0, stalled=0, consecutive=1, limits=LIMITS):
    return policy.decide_after_failure(
        outcome,
        restarts_used=restarts_used,
        stalled_failures=stalled,
        consecutive_failures=consecutive,
        limits=limits,
        backoff=BackoffConfig(1.0, 8.0, 60.0),
    )


def test_decide_restarts_with_backoff_then_gives_up_on_budget_or_no_progress():
    crash = policy.Outcome(OutcomeKind.CRASHED, exit_code=1)
    first = _decide(crash, consecutive=3)
    assert first.restart and first.delay_s == 4.0
    budget = _decide(crash, restarts_used=3)
    assert not budget.restart and "budget" in budget.reason
    stuck = _decide(crash, restarts_used=1, stalled=2)
    assert not stuck.restart and "no progress" in stuck.reason
    assert _decide(crash, restarts_used=1, stalled=2, limits=RestartLimits(3, 0)).restart  # 0 = never
    usage = _decide(policy.Outcome(OutcomeKind.PERMANENT, exit_code=2))
    assert not usage.restart


@pytest.mark.parametrize(
    "facts, kind",
    [
        (ExitFacts(0, ["finished", "finished"]), OutcomeKind.FINISHED),
        (ExitFacts(0, ["stopped", "stopped"]), OutcomeKind.STOPPED),
        (ExitFacts(1, ["running"], stop_requested=True), OutcomeKind.STOPPED),
        (ExitFacts(0, ["finished"], stop_requested=True), OutcomeKind.FINISHED),
        (ExitFacts(1, ["running", "running"], [RankExit(1, -9)]), OutcomeKind.CRASHED),
        (ExitFacts(1, ["running"], [RankExit(0, -9)], oom_kill_observed=True), OutcomeKind.OOM),
        (ExitFacts(1, ["running"], [RankExit(0, -9)], memory_was_tight=True), OutcomeKind.OOM),
        (ExitFacts(1, ["diverged"], [RankExit(0, 3)]), OutcomeKind.DIVERGED),
        (ExitFacts(1, [], [RankExit(0, 2)]), OutcomeKind.PERMANENT),
        (ExitFacts(-9, []), OutcomeKind.CRASHED),
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
    assert policy.disk_level(5 * 10**9, 2 * 10**9, 10**9) == DiskLevel.OK
    assert policy.disk_level(1.5 * 10**9, 2 * 10**9, 10**9) == DiskLevel.LOW
    assert policy.disk_level(0.5 * 10**9, 2 * 10**9, 10**9) == DiskLevel.CRITICAL
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
    assert not watch.update(DiskLevel.OK)
    assert watch.update(DiskLevel.LOW)
    assert not watch.update(DiskLevel.LOW)
    assert watch.update(DiskLevel.OK)


def test_a_suspect_rank_is_named_even_if_a_peer_went_quiet_earlier():
    now = 1000.0
    beats = [RankBeat(rank=0, phase="train", time=now - 40, step=5), RankBeat(rank=1, phase="train", time=now - 39, step=5)]
    assert policy.find_hung_rank(beats, now, CFG).rank == 0  # oldest heartbeat
    assert policy.find_hung_rank(beats, now, CFG, suspect_ranks=[1]).rank == 1  # e.g. SIGSTOPped




# --- issue 7 item 2: checkpoint and eval timeouts follow what the run measured ----------------


def test_auto_save_timeout_is_a_multiple_of_the_slowest_save_floored_at_the_hang_timeout():
    cfg = TimeoutConfig(hang_timeout=12.0)
    fast = policy.phase_timeouts(cfg, policy.Measurements(slowest_save_s=0.2))
    assert fast[Phase.CHECKPOINT] == 12.0  # 20 x 0.2 s = 4 s, but never below a silent step's allowance
    slow = policy.phase_timeouts(cfg, policy.Measurements(slowest_save_s=3.0))
    assert slow[Phase.CHECKPOINT] == 60.0


def test_before_the_first_save_the_save_timeout_is_estimated_from_the_newest_checkpoint_size():
    cfg = TimeoutConfig(hang_timeout=12.0)
    small = policy.phase_timeouts(cfg, policy.Measurements(newest_checkpoint_bytes=40_000_000))
    assert small[Phase.CHECKPOINT] == 20.0 * 40e6 / policy.CONSERVATIVE_WRITE_BYTES_PER_S
    assert policy.phase_timeouts(cfg, policy.Measurements())[Phase.CHECKPOINT] == policy.UNKNOWN_SAVE_S


def test_auto_eval_timeout_follows_the_slowest_eval_and_explicit_values_win():
    auto = policy.phase_timeouts(TimeoutConfig(), policy.Measurements(slowest_eval_s=30.0))
    assert all(auto[p] == 600.0 for p in (Phase.EVAL, Phase.HELLASWAG, Phase.GENERATE))
    assert policy.phase_timeouts(TimeoutConfig(), policy.Measurements())[Phase.EVAL] == policy.UNKNOWN_EVAL_S
    fixed = policy.phase_timeouts(TimeoutConfig(checkpoint_timeout=7.0, eval_timeout=9.0),
                                  policy.Measurements(slowest_save_s=100.0, slowest_eval_s=100.0))
    assert fixed[Phase.CHECKPOINT] == 7.0 and fixed[Phase.EVAL] == 9.0


def test_slowest_keeps_the_largest_finite_duration_and_ignores_junk():
    assert policy.slowest(None, 1.5) == 1.5
    assert policy.slowest(2.0, 1.5) == 2.0
    for junk in (None, "3", float("nan"), float("inf"), -1.0, True):
        assert policy.slowest(2.0, junk) == 2.0


# --- issue 6: exits that say something about the checkpoint, the command, or the ending ---------


def test_worker_exit_4_is_a_bad_checkpoint_restarted_at_once_from_the_previous_one():
    outcome = policy.classify_exit(ExitFacts(1, ["failed"], [RankExit(0, WorkerExit.CHECKPOINT_ERROR)]))
    assert outcome.kind == OutcomeKind.BAD_CHECKPOINT and outcome.rank == 0
    decision = _decide(outcome, consecutive=4)
    assert decision.restart and decision.delay_s == 0.0


@pytest.mark.parametrize("code", [WorkerExit.USAGE, WorkerExit.DATA_ERROR, WorkerExit.RUN_DIR_BUSY])
def test_permanent_worker_exits_give_up_at_once(code):
    outcome = policy.classify_exit(ExitFacts(1, ["failed"], [RankExit(0, code)]))
    assert outcome.kind == OutcomeKind.PERMANENT
    decision = _decide(outcome, restarts_used=0, stalled=0)
    assert not decision.restart and decision.exit_code == SupervisorExit.GAVE_UP


def test_a_rejected_pretrained_source_is_permanent_never_a_bad_checkpoint_to_quarantine():
    """Worker exit 11: the --pretrained_checkpoint source is unusable; no restart, nothing renamed."""
    outcome = policy.classify_exit(ExitFacts(1, ["failed"], [RankExit(0, 11)]))  # WorkerExit.PRETRAINED_ERROR
    assert outcome.kind == OutcomeKind.PERMANENT
    decision = _decide(outcome)
    assert not decision.restart and decision.exit_code == SupervisorExit.GAVE_UP


def test_the_workers_own_newer_format_check_ends_with_its_own_exit_code_without_a_restart():
    """Worker exit 10 (e.g. on a node that does not validate) is permanent, and ``gpt2sup run``
    ends with the unsupported-format code 6, not 'gave up' (3)."""
    outcome = policy.classify_exit(ExitFacts(1, ["failed"], [RankExit(0, 10)]))  # WorkerExit.UNSUPPORTED_FORMAT
    assert outcome.kind == OutcomeKind.PERMANENT
    decision = _decide(outcome)
    assert not decision.restart and int(decision.exit_code) == 6  # SupervisorExit.UNSUPPORTED_FORMAT


def test_a_missing_worker_module_is_permanent():
    outcome = policy.classify_exit(ExitFacts(1, [], [RankExit(0, 1)], module_missing=True))
    assert outcome.kind == OutcomeKind.PERMANENT and not _decide(outcome).restart


def test_a_run_mismatch_is_a_refusal_with_exit_2():
    outcome = policy.classify_exit(ExitFacts(1, ["failed"], [RankExit(0, WorkerExit.RUN_MISMATCH)]))
    decision = _decide(outcome)
    assert not decision.restart
    assert decision.end_state == SupervisorStateName.REFUSED and decision.exit_code == SupervisorExit.REFUSED


def test_finished_only_when_the_final_checkpoint_is_on_disk():
    assert policy.classify_exit(ExitFacts(0, ["finished"])).kind == OutcomeKind.FINISHED
    missing = policy.classify_exit(ExitFacts(0, ["finished"], final_checkpoint_on_disk=False))
    assert missing.kind == OutcomeKind.FINISHED_WITHOUT_CHECKPOINT and not missing.is_failure
    exit7 = policy.classify_exit(ExitFacts(1, ["finished_without_checkpoint"], [RankExit(0, 7)]))
    assert exit7.kind == OutcomeKind.FINISHED_WITHOUT_CHECKPOINT


def test_exit_7_is_the_end_of_training_even_when_a_full_disk_swallowed_the_heartbeats_status():
    # The CI soak: the last beats the supervisor could read said "running"; only the code is left.
    alone = policy.classify_exit(ExitFacts(1, ["running", "running"], [RankExit(0, 7), RankExit(1, 7)]))
    assert alone.kind == OutcomeKind.FINISHED_WITHOUT_CHECKPOINT and not alone.is_failure
    pending_stop = policy.classify_exit(ExitFacts(1, ["running"], [RankExit(0, 7)], stop_requested=True))
    assert pending_stop.kind == OutcomeKind.FINISHED_WITHOUT_CHECKPOINT


def test_a_stop_whose_checkpoint_could_not_be_written_is_a_stop_that_says_so_never_finished():
    # The supervisor asked for the stop; the worker could not write the stop's checkpoint (exit 9).
    asked = policy.classify_exit(ExitFacts(1, ["failed", "stopped"], [RankExit(0, 9)], stop_requested=True))
    assert asked.kind == OutcomeKind.STOPPED and asked.exit_code == 9 and not asked.is_failure
    # SIGTERM straight to the worker (or its supervisor gone): the same, not "reached its last step".
    direct = policy.classify_exit(ExitFacts(1, ["failed", "stopped"], [RankExit(0, 9)]))
    assert direct.kind == OutcomeKind.STOPPED and direct.exit_code == 9
    # Even with no heartbeat status to go by, exit 9 is a stop, never the end of training.
    blind = policy.classify_exit(ExitFacts(1, ["running"], [RankExit(0, 9)]))
    assert blind.kind == OutcomeKind.STOPPED
    # A stop that landed on the last step, whose save failed, did reach the end of training.
    last = policy.classify_exit(ExitFacts(1, ["finished_without_checkpoint"], [RankExit(0, 7)], stop_requested=True))
    assert last.kind == OutcomeKind.FINISHED_WITHOUT_CHECKPOINT


def test_the_first_failure_is_the_rank_killed_from_outside_then_the_earliest_failed_heartbeat():
    reports = [policy.RankReport(0, "failed", 105.0), policy.RankReport(1, "failed", 100.0)]
    # torchrun names rank 0 (it observed it first); rank 1 wrote "failed" 5 s earlier: rank 1 it is.
    first = policy.first_failure([RankExit(0, 1), RankExit(1, 5)], reports)
    assert first == RankExit(1, 5)
    # A SIGKILLed rank writes nothing; its peer's later "failed" (lost connection) is not the cause.
    killed = policy.first_failure([RankExit(0, 1), RankExit(1, -9)], [policy.RankReport(0, "failed", 100.0)])
    assert killed == RankExit(1, -9)
    # torchrun's SIGTERM to the survivors is not a cause either.
    assert policy.first_failure([RankExit(1, -15), RankExit(0, 2)], []) == RankExit(1, -15)
    assert policy.first_failure([], []) is None


def test_a_rank_whose_process_exited_is_a_crash_torchrun_will_report_not_a_hang():
    now = 1000.0
    beats = [RankBeat(rank=0, phase="train", time=now - 40, step=5), RankBeat(rank=1, phase="train", time=now - 41, step=5)]
    assert policy.find_hung_rank(beats, now, CFG) is not None  # 30 s train timeout passed
    # Rank 1 exited: the attempt is ending; everyone gets the checkpoint allowance (300 s) to end it.
    assert policy.find_hung_rank(beats, now, CFG, exited_ranks=[1]) is None
    late = policy.find_hung_rank(beats, now + 270, CFG, exited_ranks=[1])
    assert late is not None and late.rank == 1 and late.timeout_s == 300.0


def test_a_stop_may_take_a_step_and_a_save():
    timeouts = policy.phase_timeouts(TimeoutConfig(hang_timeout=12.0), policy.Measurements(slowest_save_s=2.0))
    assert policy.stop_allowance(timeouts) == 12.0 + 40.0
    assert policy.stop_allowance(timeouts, configured=7.5) == 7.5  # --stop-timeout wins


def test_a_rank_torn_down_after_reporting_failed_yields_to_one_that_exited_with_its_own_code():
    # Both ranks found the checkpoint damaged; rank 1's heartbeat said so 50 ms first, but rank 0
    # exited 4 first and torchrun SIGTERMed rank 1 before it could: its -15 is torchrun's, not its
    # own. The failure is rank 0's exit 4 (a bad checkpoint), not "rank 1 killed by SIGTERM" (CI).
    reports = [policy.RankReport(0, "failed", 100.05), policy.RankReport(1, "failed", 100.0)]
    exits = [RankExit(1, -15), RankExit(0, 4)]
    assert policy.first_failure(exits, reports) == RankExit(0, 4)
    facts = policy.ExitFacts(returncode=1, statuses=["failed", "failed"], rank_exits=exits, reports=reports)
    assert policy.classify_exit(facts).kind == OutcomeKind.BAD_CHECKPOINT
    # With no rank that exited by itself, the earliest "failed" heartbeat still names the rank.
    assert policy.first_failure([RankExit(1, -15), RankExit(0, -15)], reports).rank == 1


# --- issue 19: what a plain `gpt2sup run` reuses, and when it has nothing to do ---------------------


def test_the_run_to_reuse_is_the_accepted_one_never_a_refused_attempts():
    from supervisor.policy import RecordedRun, run_to_reuse

    refused_config = {"worker_args": ["--data_dir", "/x"], "worker_module": "worker.train_gpt2"}
    accepted = {"worker_args": ["--data_path", "/d.jsonl"], "worker_module": "worker.finetune_dolly"}
    assert run_to_reuse(accepted, refused_config, "refused", "worker.train_gpt2") == RecordedRun(
        ("--data_path", "/d.jsonl"), "worker.finetune_dolly")
    # An older file (no accepted record): its run_config, unless that supervisor was refused or gave up.
    assert run_to_reuse(None, refused_config, "stopped", "m").worker_args == ("--data_dir", "/x")
    assert run_to_reuse(None, refused_config, "refused", "m") is None
    assert run_to_reuse(None, refused_config, "gave_up", "m") is None
    assert run_to_reuse(None, {"worker_args": []}, "running", "m") == RecordedRun((), "m")


def test_a_run_is_already_finished_only_as_the_same_run_from_its_final_checkpoint():
    from supervisor.policy import already_finished, finished_checkpoint

    assert already_finished("model_00039.pt", "model_00039.pt", same_run=True)
    assert not already_finished("model_00039.pt", "model_00039.pt", same_run=False)  # a longer max_steps
    assert not already_finished("model_00039.pt", "model_00038.pt", same_run=True)  # the final one quarantined
    assert not already_finished(None, "model_00039.pt", same_run=True)  # never finished
    # A refused attempt after the finish keeps the record; an older file without it: its ending.
    assert finished_checkpoint("refused", "model_00039.pt", "model_00039.pt") == "model_00039.pt"
    assert finished_checkpoint("finished", "model_00039.pt", None) == "model_00039.pt"
    assert finished_checkpoint("stopped", "model_00039.pt", None) is None


def test_arguments_are_accepted_only_by_an_attempt_that_trained_and_was_not_refused():
    from shared.vocabulary import OutcomeKind
    from supervisor.policy import arguments_accepted

    assert arguments_accepted(OutcomeKind.STOPPED, 5) and arguments_accepted(OutcomeKind.CRASHED, 0)
    assert not arguments_accepted(OutcomeKind.PERMANENT, 5)  # worker exit 6: another run's arguments
    assert not arguments_accepted(OutcomeKind.STOPPED, None)  # Ctrl-C during start-up
# --- clocks: a beat belongs to its attempt by id, torchrun blamed when only it is left ------------
def test_a_beat_belongs_to_the_attempt_whose_id_it_carries_whatever_its_time():
    assert policy.beat_of_attempt("s-2-ab", "s-2-ab", changed_since_launch=False)
    assert not policy.beat_of_attempt("s-1-cd", "s-2-ab", changed_since_launch=True)  # a leftover, rewritten late
    # a worker that writes no id: its beat is this attempt's once the file changed after the launch
    assert policy.beat_of_attempt(None, "s-2-ab", changed_since_launch=True)
    assert not policy.beat_of_attempt(None, "s-2-ab", changed_since_launch=False)


def test_torchrun_is_blamed_only_once_every_rank_it_started_has_exited():
    assert not policy.agent_unresponsive(ranks_known=2, ranks_alive=1, agent_stopped=True, hang_found=True)
    assert not policy.agent_unresponsive(ranks_known=0, ranks_alive=0, agent_stopped=True, hang_found=True)
    assert policy.agent_unresponsive(ranks_known=2, ranks_alive=0, agent_stopped=True, hang_found=False)  # at once
    assert not policy.agent_unresponsive(ranks_known=2, ranks_alive=0, agent_stopped=False, hang_found=False)
    assert policy.agent_unresponsive(ranks_known=2, ranks_alive=0, agent_stopped=False, hang_found=True)


def test_after_torchrun_stopped_responding_a_run_is_finished_only_with_every_rank_finished_and_a_valid_save():
    assert policy.ranks_ended_cleanly(["finished", "finished"], 2, final_checkpoint_valid=True)
    assert not policy.ranks_ended_cleanly(["finished", "finished"], 2, final_checkpoint_valid=False)
    assert not policy.ranks_ended_cleanly(["finished"], 2, final_checkpoint_valid=True)  # one rank never said
    assert not policy.ranks_ended_cleanly(["finished", "failed"], 2, final_checkpoint_valid=True)
    assert policy.ranks_ended_cleanly(["stopped", "stopped"], 2, final_checkpoint_valid=False)  # saved on a stop


# --- describe_exit: the cause and wording of an attempt's end ---------------------------------------
def _crash() -> policy.Outcome:
    return policy.Outcome(OutcomeKind.CRASHED, exit_code=1, rank=1)


def test_describe_exit_cause_is_the_ranks_own_message_before_torchruns_error_line():
    evidence = policy.ExitEvidence(returncode=1, stop_requested=False, failing_summary="ValueError: boom",
                                   torchrun_error="ChildFailedError")
    assert policy.describe_exit(_crash(), evidence) == policy.ExitDescription("ValueError: boom", None)
    evidence = policy.ExitEvidence(returncode=1, stop_requested=False, torchrun_error="ChildFailedError")
    assert policy.describe_exit(_crash(), evidence).cause == "ChildFailedError"


def test_describe_exit_closed_rendezvous_then_agent_kill_override_the_cause():
    closed = policy.ExitEvidence(returncode=1, stop_requested=False, failing_summary="x", rendezvous_closed=True)
    assert policy.describe_exit(_crash(), closed).cause == \
        "torchrun found the rendezvous closed (RendezvousClosedError)"
    killed = policy.ExitEvidence(returncode=1, stop_requested=False, rendezvous_closed=True,
                                 agent_cause="the torchrun agent stopped answering")
    assert policy.describe_exit(_crash(), killed).cause == "the torchrun agent stopped answering"


def test_describe_exit_a_failure_leaves_the_wording_to_messages():
    evidence = policy.ExitEvidence(returncode=1, stop_requested=False)
    assert policy.describe_exit(_crash(), evidence) == policy.ExitDescription(None, None)


def test_describe_exit_words_a_clean_end_and_names_who_asked_for_a_stop():
    stopped = policy.Outcome(OutcomeKind.STOPPED, exit_code=0)
    ours = policy.ExitEvidence(returncode=0, stop_requested=True, stop_summary="stop requested by node 1")
    assert policy.describe_exit(stopped, ours).reason == "the workers saved and exited"
    theirs = policy.ExitEvidence(returncode=0, stop_requested=False, stop_summary="SIGTERM from outside")
    assert policy.describe_exit(stopped, theirs).reason == "the workers saved and exited: SIGTERM from outside"


def test_describe_exit_a_non_zero_clean_end_names_torchruns_code_and_the_agent_kill():
    outcome = policy.Outcome(OutcomeKind.FINISHED_WITHOUT_CHECKPOINT, exit_code=7)
    evidence = policy.ExitEvidence(returncode=7, stop_requested=False, stop_summary="ignored: code is not 0",
                                   agent_cause="agent unresponsive")
    described = policy.describe_exit(outcome, evidence)
    assert described == policy.ExitDescription("agent unresponsive", "torchrun exit 7; agent unresponsive: killed it")


def test_a_stop_whose_worker_died_non_zero_past_the_newest_checkpoint_did_not_save():
    """CI saw "stopped on request (torchrun exit 1) after step 6; saved model_00004.pt": the stop's
    save failed on a full disk and the worker then aborted instead of exiting 9."""
    assert policy.stop_checkpoint_missing(1, reached_step=6, newest_step=4)
    assert policy.stop_checkpoint_missing(-6, reached_step=6, newest_step=None)
    assert not policy.stop_checkpoint_missing(1, reached_step=6, newest_step=6)  # the save landed
    assert not policy.stop_checkpoint_missing(0, reached_step=6, newest_step=4)  # a clean exit
    assert not policy.stop_checkpoint_missing(None, reached_step=6, newest_step=4)  # forced: killed on purpose
    assert not policy.stop_checkpoint_missing(1, reached_step=None, newest_step=None)  # before the first step


# --- a user's script (``gpt2sup run -- SCRIPT.py``): its exit codes mean nothing of ours -----------
@pytest.mark.parametrize(("code", "kind"), [
    (WorkerExit.USAGE, OutcomeKind.PERMANENT),  # argparse: relaunching repeats it
    (WorkerExit.DIVERGED, OutcomeKind.CRASHED),  # 3 is gpt2sup's "diverged", not the script's
    (WorkerExit.CHECKPOINT_ERROR, OutcomeKind.CRASHED),  # 4 would quarantine a checkpoint
    (WorkerExit.STOP_SAVE_FAILED, OutcomeKind.CRASHED),  # 9 would end the run "stopped"
    (WorkerExit.FINAL_SAVE_FAILED, OutcomeKind.CRASHED),  # 7 would end it "without checkpoint"
    (WorkerExit.DATA_ERROR, OutcomeKind.CRASHED),  # 5 is permanent for the worker only
    (1, OutcomeKind.CRASHED),
    (-9, OutcomeKind.CRASHED),
])
def test_a_scripts_exit_code_is_a_crash_unless_it_is_argparses_2(code, kind):
    facts = ExitFacts(returncode=1, rank_exits=[RankExit(0, int(code))], worker_exit_codes=False)
    assert policy.classify_exit(facts).kind == kind
    # the same codes from gpt2sup's worker keep their meaning (the check above can fail)
    if code in (WorkerExit.DIVERGED, WorkerExit.CHECKPOINT_ERROR, WorkerExit.STOP_SAVE_FAILED):
        assert policy.classify_exit(ExitFacts(returncode=1, rank_exits=[RankExit(0, int(code))])).kind != kind


def test_a_scripts_clean_exit_is_finished_and_a_sigkill_under_memory_pressure_an_oom():
    assert policy.classify_exit(ExitFacts(returncode=0, worker_exit_codes=False)).kind == OutcomeKind.FINISHED
    oom = ExitFacts(returncode=1, rank_exits=[RankExit(0, -9)], memory_was_tight=True, worker_exit_codes=False)
    assert policy.classify_exit(oom).kind == OutcomeKind.OOM
    asked = ExitFacts(returncode=1, rank_exits=[RankExit(0, -15)], stop_requested=True, worker_exit_codes=False)
    assert policy.classify_exit(asked).kind == OutcomeKind.STOPPED


def test_a_script_is_judged_by_its_silence_only_with_an_explicit_hang_timeout():
    assert policy.silent_too_long(last_change=100.0, now=1e9, hang_timeout=None) is None  # off: never
    assert policy.silent_too_long(last_change=100.0, now=129.0, hang_timeout=30.0) is None
    verdict = policy.silent_too_long(last_change=100.0, now=131.0, hang_timeout=30.0)
    assert verdict is not None and verdict.silent_s == pytest.approx(31.0)
    assert "31.0s" in verdict.describe() and "--hang-timeout 30s" in verdict.describe()
