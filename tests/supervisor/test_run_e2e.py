"""``gpt2sup run`` end to end: real torchrun, the real worker, real signals (issue 3's list).

Each test breaks a live run the way production breaks it and checks that the supervisor notices,
cleans up, and finishes with weights bit-identical to a run that never broke.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from shared.exit_codes import SupervisorExit
from tests.supervisor.helpers import (
    FINAL_CHECKPOINT,
    ONE_PROCESS,
    REPO_ROOT,
    assert_same_weights,
    child_env,
    console_text,
    events_named,
    gpt2sup_argv,
    heartbeat,
    mounted_tmpfs,
    one_process_worker_args,
    read_events,
    start_supervisor,
    supervisor_json,
    wait_exit,
    wait_for,
    wait_for_step,
)

pytestmark = pytest.mark.slow


def _recorded_processes(log_dir: Path) -> list[tuple[int, float]]:
    return [(p["pid"], p["create_time"]) for p in supervisor_json(log_dir)["processes"]]


def _alive(pid: int, create_time: float) -> bool:
    try:
        proc = psutil.Process(pid)
        return abs(proc.create_time() - create_time) < 0.05 and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _finish_ok(proc, log_dir: Path, reference: Path) -> None:
    code = wait_exit(proc, log_dir)
    assert code == SupervisorExit.FINISHED, console_text(log_dir)[-3000:]
    assert_same_weights(log_dir / FINAL_CHECKPOINT, reference)
    assert supervisor_json(log_dir)["state"] == "finished"


def test_sigkill_of_a_rank_restarts_once_and_finishes_bitwise(tmp_path, reference_checkpoint):
    log_dir = tmp_path / "run"
    proc = start_supervisor(log_dir)
    hb = wait_for_step(log_dir, 5, rank=1)
    os.kill(hb["pid"], signal.SIGKILL)
    _finish_ok(proc, log_dir, reference_checkpoint)
    assert len(events_named(log_dir, "restarted")) == 1
    crash = events_named(log_dir, "crashed")[0]
    assert crash["rank"] == 1 and crash["signal"] == "SIGKILL", crash
    assert "SIGKILL" in supervisor_json(log_dir)["last_failure"]["reason"]


def test_sigstop_of_a_rank_is_detected_evidence_captured_tree_killed(tmp_path, reference_checkpoint):
    log_dir = tmp_path / "run"
    proc = start_supervisor(log_dir)
    hb = wait_for_step(log_dir, 5, rank=1)
    attempt_processes = _recorded_processes(log_dir)
    assert len(attempt_processes) >= 3  # torchrun + 2 ranks
    stopped_at = time.time()
    os.kill(hb["pid"], signal.SIGSTOP)
    hung = wait_for(lambda: events_named(log_dir, "hung"), 60, "the hung event")[0]
    # hang timeout 8 s, measured from the last heartbeat (<= stop time), plus a few 0.5 s polls
    assert hung["time"] - stopped_at < 8 + 6, hung
    assert hung["rank"] == 1, hung
    wait_for(lambda: events_named(log_dir, "restarted"), 60, "the restart")
    survivors = [pid for pid, ct in attempt_processes if _alive(pid, ct)]
    assert not survivors, f"processes of the hung attempt survived: {survivors}"
    incident = log_dir / "incidents" / "001"
    assert (incident / "summary.json").exists()
    proc_text = (incident / "proc-rank1.txt").read_text()
    assert "stopped" in proc_text or "do_signal_stop" in proc_text
    if shutil.which("py-spy", path=child_env().get("PATH")):
        assert (incident / "py-spy-rank1.txt").exists() and "train_gpt2" in (incident / "py-spy-rank1.txt").read_text()
    else:  # without py-spy the evidence says why its native stacks are missing
        assert not (incident / "py-spy-rank1.txt").exists()
        assert "rank 1: py-spy not installed" in (incident / "summary.json").read_text()
    assert (incident / "faulthandler.log").exists()
    _finish_ok(proc, log_dir, reference_checkpoint)


def test_truncated_newest_checkpoint_is_quarantined_and_previous_used(tmp_path, reference_checkpoint_one_process):
    log_dir = tmp_path / "run"
    proc = start_supervisor(log_dir, **ONE_PROCESS)
    wait_for(lambda: (log_dir / "model_00008.pt").exists(), 180, "checkpoint 8")
    rank = heartbeat(log_dir, 0)["pid"]
    os.kill(rank, signal.SIGSTOP)  # freeze the run so no newer checkpoint appears while we damage this one
    checkpoints = sorted(p for p in log_dir.glob("model_*.pt") if not p.is_symlink())
    newest, previous = checkpoints[-1], checkpoints[-2]
    with open(newest, "r+b") as handle:
        handle.truncate(newest.stat().st_size // 2)
    os.kill(rank, signal.SIGKILL)
    _finish_ok(proc, log_dir, reference_checkpoint_one_process)
    quarantined = events_named(log_dir, "quarantined")
    assert [e["checkpoint"] for e in quarantined] == [newest.name]
    assert (log_dir / (newest.name + ".corrupt")).exists()
    resumed = [e for e in events_named(log_dir, "checkpoint_valid") if e.get("checkpoint")]
    assert resumed[-1]["checkpoint"] == previous.name


def test_same_step_crash_gives_up_for_lack_of_progress(tmp_path):
    log_dir = tmp_path / "run"
    # Synchronous saves: the crash right after step 5 must find step 4's checkpoint complete (a
    # background write still in flight dies with the process, and the first attempt would then
    # have made no progress either: 4 launches, not 3).
    worker_args = [*one_process_worker_args(), "--no_async_checkpoint"]
    proc = start_supervisor(log_dir, "--max-no-progress-restarts", "2", nproc=1,
                            worker_args=worker_args, env={"GPT2SUP_INJECT_CRASH_AT_STEP": "5"})
    code = wait_exit(proc, log_dir)
    assert code == SupervisorExit.GAVE_UP, console_text(log_dir)[-3000:]
    state = supervisor_json(log_dir)
    assert state["state"] == "gave_up"
    assert "no progress" in state["last_failure"]["reason"]
    assert len(events_named(log_dir, "launched")) == 3  # progress to step 4, then two stalls
    status = subprocess.run(gpt2sup_argv("status", "--log-dir", str(log_dir)), cwd=REPO_ROOT,
                            check=False, capture_output=True, text=True, timeout=60, env=child_env())
    assert "no progress" in status.stdout + status.stderr


def test_restart_budget_exhausted_gives_up(tmp_path):
    log_dir = tmp_path / "run"
    proc = start_supervisor(log_dir, "--max-restarts", "2", "--max-no-progress-restarts", "0", nproc=1,
                            worker_args=one_process_worker_args(), env={"GPT2SUP_INJECT_CRASH_AT_STEP": "1"})
    code = wait_exit(proc, log_dir)
    assert code == SupervisorExit.GAVE_UP, console_text(log_dir)[-3000:]
    assert len(events_named(log_dir, "crashed")) == 3
    state = supervisor_json(log_dir)
    assert state["restarts_used"] == 2 and "budget" in state["last_failure"]["reason"]
    assert "exited with code 1" in state["last_failure"]["reason"]


def test_sigterm_to_supervisor_saves_stops_and_run_again_continues(tmp_path, reference_checkpoint):
    log_dir = tmp_path / "run"
    proc = start_supervisor(log_dir)
    wait_for_step(log_dir, 2, rank=0)
    attempt_processes = _recorded_processes(log_dir)
    assert len(attempt_processes) >= 3  # torchrun + 2 ranks
    proc.send_signal(signal.SIGTERM)
    code = wait_exit(proc, log_dir, timeout=120)
    assert code == SupervisorExit.STOPPED, console_text(log_dir)[-3000:]
    statuses = {heartbeat(log_dir, r)["status"] for r in (0, 1)}
    assert statuses == {"stopped"}
    stop_step = heartbeat(log_dir, 0)["step"]
    assert (log_dir / f"model_{stop_step:05d}.pt").exists()
    assert not any(_alive(pid, ct) for pid, ct in attempt_processes)
    state = supervisor_json(log_dir)
    assert state["state"] == "stopped"
    # supervisor.json names the checkpoint the stop saved, not the one validated before the launch
    assert state["newest_checkpoint"] == f"model_{stop_step:05d}.pt" and state["newest_checkpoint_valid"] is True
    (stopped,) = events_named(log_dir, "stopped")
    assert "(exit 4)" in stopped["message"] and "exit 0" not in stopped["message"], stopped

    again = start_supervisor(log_dir)
    _finish_ok(again, log_dir, reference_checkpoint)
    valid = [e for e in events_named(log_dir, "checkpoint_valid") if e.get("checkpoint")]
    assert valid[-1]["step"] == stop_step  # continued from the step it stopped at
    state = supervisor_json(log_dir)  # a finished run's final checkpoint is not "not validated yet"
    assert state["newest_checkpoint"] == FINAL_CHECKPOINT and state["newest_checkpoint_valid"] is True


def test_second_supervisor_refused_and_orphans_of_a_killed_one_cleaned(tmp_path, reference_checkpoint):
    log_dir = tmp_path / "run"
    # Workers that outlive their supervisor: otherwise they save and stop by themselves once it dies.
    first = start_supervisor(log_dir, "--workers-outlive-supervisor")
    wait_for_step(log_dir, 1, rank=0)
    second = subprocess.run(
        gpt2sup_argv("run", "--log-dir", str(log_dir), "--nproc-per-node", "2"),
        cwd=REPO_ROOT, check=False, capture_output=True, text=True, timeout=60, env=child_env(),
    )
    assert second.returncode == SupervisorExit.REFUSED
    lines = [line for line in second.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and str(first.pid) in lines[0], second.stderr
    assert "Traceback" not in second.stderr

    orphans = _recorded_processes(log_dir)
    first.kill()  # kill -9: the workers live on without a supervisor
    first.wait()
    assert all(_alive(pid, ct) for pid, ct in orphans)
    third = start_supervisor(log_dir)
    wait_for(lambda: events_named(log_dir, "orphans_killed"), 120, "orphan cleanup")
    assert not any(_alive(pid, ct) for pid, ct in orphans)
    _finish_ok(third, log_dir, reference_checkpoint)


@pytest.fixture
def small_tmpfs(tmp_path):
    with mounted_tmpfs(tmp_path / "tmpfs", "150m") as mount_point:
        yield mount_point


def test_low_disk_warns_and_pruning_keeps_newest_valid(small_tmpfs):
    log_dir = small_tmpfs / "run"
    # Checkpoints of the tiny model are ~40 MB: after the second one the 150 MB disk is "low".
    # A slowed rank: the disk check runs every few seconds, and an unslowed 12-step run can end
    # (in ~5 s) between two checks, with no low disk ever seen (CI saw it).
    proc = start_supervisor(log_dir, "--min-free-disk", "100M", "--prune-on-low-disk", nproc=1,
                            worker_args=one_process_worker_args(), env={"GPT2SUP_INJECT_SLOW_RANK": "0:0.5"})
    code = wait_exit(proc, log_dir)
    assert code == SupervisorExit.FINISHED, console_text(log_dir)[-3000:]
    warnings = [e for e in events_named(log_dir, "disk_warning") if e.get("level") != "ok"]
    assert warnings, read_events(log_dir)
    pruned = events_named(log_dir, "pruned")
    assert pruned, read_events(log_dir)
    deleted = {name for e in pruned for name in e["deleted"]}
    for e in pruned:
        kept = f"model_{e['kept_step']:05d}.pt"
        assert kept not in e["deleted"]
        assert all(int(name[6:11]) < e["kept_step"] for name in e["deleted"])
    assert (log_dir / FINAL_CHECKPOINT).exists() and FINAL_CHECKPOINT not in deleted
    assert not list(log_dir.glob("*.corrupt"))
    assert shutil.disk_usage(log_dir).free > 0


def test_no_first_heartbeat_is_a_startup_timeout(tmp_path):
    """A worker that never beats is killed after --startup-timeout, restarted, then given up on."""
    log_dir = tmp_path / "run"
    proc = start_supervisor(log_dir, "--worker", "tests.supervisor.silent_worker", "--startup-timeout", "10",
                            "--max-restarts", "1", "--max-no-progress-restarts", "0", nproc=1,
                            worker_args=one_process_worker_args())
    def attempt_processes() -> list[tuple[int, float]]:
        try:
            recorded = _recorded_processes(log_dir)
        except (OSError, ValueError):  # supervisor.json not written yet
            return []
        return recorded if len(recorded) >= 2 else []

    first_attempt = wait_for(attempt_processes, 60, "torchrun and its silent worker")
    code = wait_exit(proc, log_dir, timeout=120)
    assert code == SupervisorExit.GAVE_UP, console_text(log_dir)[-3000:]
    hung = events_named(log_dir, "hung")
    assert len(hung) == 2 and all(e["kind"] == "startup_timeout" for e in hung)
    assert "start-up timeout" in supervisor_json(log_dir)["last_failure"]["reason"]
    assert not any(_alive(pid, ct) for pid, ct in first_attempt)


def test_a_second_stop_request_forces(tmp_path):
    """First SIGINT: ask the workers to save (this one ignores it, so the run keeps waiting up to
    --stop-timeout). Second SIGINT: kill the tree now."""
    log_dir = tmp_path / "run"
    proc = start_supervisor(log_dir, "--worker", "tests.supervisor.stubborn_worker", "--stop-timeout", "600",
                            nproc=1, worker_args=one_process_worker_args())

    def attempt_processes() -> list[tuple[int, float]]:
        try:
            recorded = _recorded_processes(log_dir)
        except (OSError, ValueError):
            return []
        return recorded if len(recorded) >= 2 else []

    recorded = wait_for(attempt_processes, 60, "torchrun and its worker")
    wait_for(lambda: (log_dir / "stubborn.ready").exists(), 60, "the worker to ignore SIGTERM")
    proc.send_signal(signal.SIGINT)
    wait_for(lambda: events_named(log_dir, "stop_requested"), 30, "the forwarded stop request")
    time.sleep(2)
    assert proc.poll() is None  # the worker ignored the request: still waiting, as it should
    assert any(_alive(pid, ct) for pid, ct in recorded)
    proc.send_signal(signal.SIGINT)
    code = wait_exit(proc, log_dir, timeout=60)
    assert code == SupervisorExit.STOPPED, console_text(log_dir)[-3000:]
    assert any("second Ctrl-C (SIGINT): killing" in e["message"] for e in events_named(log_dir, "stop_requested"))
    assert not any(_alive(pid, ct) for pid, ct in recorded)


# --- issue 6 item 5 / issue 8 item 2: what no relaunch can fix ends at once, in one line ----------


def _gave_up_at_once(log_dir: Path, proc) -> str:
    code = wait_exit(proc, log_dir, timeout=180)
    assert code == SupervisorExit.GAVE_UP, console_text(log_dir)[-3000:]
    assert len(events_named(log_dir, "launched")) == 1
    assert not events_named(log_dir, "backoff") and not events_named(log_dir, "restarted")
    (gave_up,) = events_named(log_dir, "gave_up")
    line = gave_up["message"]
    assert "\n" not in line and len(line) < 400, line
    assert "attempts/001.log" in line
    return line


def test_a_misspelled_worker_flag_gives_up_at_once_with_argparses_own_line(tmp_path):
    log_dir = tmp_path / "run"
    proc = start_supervisor(log_dir, "--backoff-initial", "60", nproc=1,
                            worker_args=[*one_process_worker_args(), "--max_stpes", "10"])
    line = _gave_up_at_once(log_dir, proc)
    assert line.startswith("gave up: python -m worker.train_gpt2: error: unrecognized arguments: --max_stpes 10 ("), line
    assert "usage:" not in line
    assert "usage:" in (log_dir / "attempts" / "001.log").read_text()  # the full tail stays in the log


def test_a_missing_data_directory_gives_up_at_once_with_the_workers_reason(tmp_path):
    log_dir = tmp_path / "run"
    proc = start_supervisor(log_dir, "--backoff-initial", "60", nproc=1,
                            worker_args=[*one_process_worker_args(), "--data_dir", str(tmp_path / "no-such-data")])
    line = _gave_up_at_once(log_dir, proc)
    assert f"data directory {tmp_path / 'no-such-data'} does not exist" in line
    assert "exit 5" in line


def test_a_worker_module_that_does_not_exist_gives_up_at_once(tmp_path):
    log_dir = tmp_path / "run"
    proc = start_supervisor(log_dir, "--backoff-initial", "60", "--worker", "worker.trian_gpt2", nproc=1,
                            worker_args=one_process_worker_args())
    line = _gave_up_at_once(log_dir, proc)
    assert line.startswith("gave up: No module named worker.trian_gpt2 ("), line


# --- issue 7 item 4: a crash names the rank that failed first, in its own words ----------------------


def test_a_crash_names_the_first_failed_rank_its_own_error_and_its_last_step(tmp_path, reference_checkpoint):
    log_dir = tmp_path / "run"
    once = tmp_path / "crashed-once"
    proc = start_supervisor(log_dir, env={"GPT2SUP_INJECT_CRASH_AT_STEP": "5",
                                          "GPT2SUP_INJECT_CRASH_ONCE_FILE": str(once)})
    _finish_ok(proc, log_dir, reference_checkpoint)
    (crash,) = events_named(log_dir, "crashed")
    assert crash["rank"] == 0 and crash["step"] == 5, crash
    assert crash["message"].endswith("rank 0 crashed: exited with code 1 after step 5: "
                                     "fault injection: crashed after step 5"), crash["message"]
    assert "peer" not in crash["message"] and "step -1" not in crash["message"]


# --- issue 7 item 2: hangs found in time, whatever the phase; a bad read is not a hang ---------------


def test_a_rank_stopped_while_saving_is_found_within_the_save_timeout(tmp_path):
    log_dir = tmp_path / "run"
    args = one_process_worker_args()
    args[args.index("--max_steps") + 1] = "400"
    args[args.index("--checkpoint_interval") + 1] = "3"
    proc = start_supervisor(log_dir, "--hang-timeout", "12", "--checkpoint-timeout", "auto", nproc=1,
                            worker_args=args)
    try:
        wait_for(lambda: (log_dir / "model_00003.pt").exists(), 180, "the first checkpoint")

        def saving():
            hb = heartbeat(log_dir, 0)
            return hb if hb and hb.get("phase") == "checkpoint" and hb.get("step", 0) >= 6 else None

        hb = wait_for(saving, 180, "rank 0 inside a later save", poll=0.001)
        os.kill(hb["pid"], signal.SIGSTOP)
        stopped_at = time.time()
        hung = wait_for(lambda: events_named(log_dir, "hung"), 120, "the hung event")[0]
        in_force = supervisor_json(log_dir)["phase_timeouts"]
        assert in_force["checkpoint"] < 60, in_force  # derived from this run, not the old fixed 600 s
        assert hung["time"] - stopped_at < in_force["checkpoint"] + 6, (hung, in_force)
        assert "'checkpoint'" in hung["message"] and hung["rank"] == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        wait_exit(proc, log_dir, timeout=180)


def test_an_unreadable_heartbeat_does_not_restart_a_healthy_attempt(tmp_path):
    log_dir = tmp_path / "run"
    args = one_process_worker_args()
    args[args.index("--max_steps") + 1] = "100000"  # still training when we are done breaking it
    args[args.index("--checkpoint_interval") + 1] = "100000"  # no checkpoint needed: nothing to write
    # Short, but long enough for the first beat of a rank started on a loaded machine.
    startup_timeout = 25
    # The rank only has to stay alive and beat while the test waits out the start-up timeout:
    # 0.5 s of sleep per step keeps it beating at a fraction of the CPU (the suite is CPU-bound).
    proc = start_supervisor(log_dir, "--startup-timeout", str(startup_timeout), nproc=1, worker_args=args,
                            env={"GPT2SUP_INJECT_SLOW_RANK": "0:0.5"})
    try:
        wait_for_step(log_dir, 1, rank=0)
        launched = events_named(log_dir, "launched")
        # Past the start-up timeout, a poll that read no heartbeat once looked like "never beat".
        wait_for(lambda: time.time() - launched[-1]["time"] > startup_timeout + 1, 120,
                 "the attempt to outlive the start-up timeout")
        path = log_dir / "heartbeat" / "rank0.json"
        broken_at = time.time()
        while time.time() < broken_at + 4:  # 8 polls: garbage, half-written, gone (the worker rewrites it)
            path.write_text('{"pid": 12, "ste')
            time.sleep(0.05)
            path.unlink(missing_ok=True)
            time.sleep(0.05)
        time.sleep(3)
        assert proc.poll() is None
        since = [e for e in read_events(log_dir) if e["time"] >= broken_at]
        assert not [e for e in since if e["event"] in ("hung", "crashed", "launched")], since
        assert [e for e in since if e["event"] == "warning" and "heartbeat of rank 0" in e["message"]], since
    finally:
        proc.send_signal(signal.SIGTERM)
        code = wait_exit(proc, log_dir, timeout=180)
    assert code == SupervisorExit.STOPPED, console_text(log_dir)[-3000:]


# --- issue 6 item 1: what the worker loads is what was validated ---------------------------------


def test_a_byte_flipped_after_validation_is_rejected_by_the_worker_and_the_previous_checkpoint_used(
        tmp_path, reference_checkpoint_one_process):
    log_dir = tmp_path / "run"
    # The backoff is the window for the flip: long enough that a test process starved on a busy
    # CI machine still flips before the relaunched worker reads the file (CI once missed 4 s).
    proc = start_supervisor(log_dir, "--backoff-initial", "15", **ONE_PROCESS)
    wait_for(lambda: (log_dir / "model_00008.pt").exists(), 180, "checkpoint 8")
    rank = heartbeat(log_dir, 0)["pid"]
    os.kill(rank, signal.SIGSTOP)  # freeze, then crash: the supervisor validates model_00008.pt and backs off
    os.kill(rank, signal.SIGKILL)
    wait_for(lambda: events_named(log_dir, "backoff"), 120, "the backoff after validation")
    assert [e["checkpoint"] for e in events_named(log_dir, "checkpoint_valid")][-1] == "model_00008.pt"
    chosen = log_dir / "model_00008.pt"
    with open(chosen, "r+b") as handle:  # bit rot between validation and load
        handle.seek(chosen.stat().st_size // 2)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0xFF]))
    flipped_at = time.time()
    _finish_ok(proc, log_dir, reference_checkpoint_one_process)
    relaunch = [e for e in events_named(log_dir, "launched") if e["attempt"] == 2]
    assert relaunch and relaunch[0]["time"] > flipped_at, "the flip came too late: the scenario did not run"
    rejected = [e for e in events_named(log_dir, "crashed") if e["kind"] == "bad_checkpoint"]
    assert len(rejected) == 1 and rejected[0]["exit_code"] == 4, read_events(log_dir)
    (quarantined,) = events_named(log_dir, "quarantined")
    assert quarantined["checkpoint"] == "model_00008.pt" and quarantined["reason"], quarantined
    assert (log_dir / "model_00008.pt.corrupt").exists()
    resumed = [e for e in events_named(log_dir, "checkpoint_valid") if e.get("checkpoint")]
    assert resumed[-1]["checkpoint"] == "model_00004.pt"



# --- issue 6 item 3: "finished" means the final state is on disk -------------------------------------


def test_a_rank_aborting_in_teardown_after_the_final_save_is_finished_not_a_crash(tmp_path, reference_checkpoint):
    """Every rank said `finished` and the final checkpoint is sound, then rank 1 dies of SIGABRT on
    its way out (gloo's teardown does now and then): the run is done, not restarted."""
    log_dir = tmp_path / "run"
    proc = start_supervisor(log_dir, env={"GPT2SUP_INJECT_TEARDOWN_ABORT": "1"})
    _finish_ok(proc, log_dir, reference_checkpoint)
    assert len(events_named(log_dir, "launched")) == 1 and not events_named(log_dir, "crashed")
    teardown = [e for e in events_named(log_dir, "warning") if e.get("teardown_exit") is not None]
    assert teardown and "after every rank had ended" in teardown[0]["message"], read_events(log_dir)
    assert "SIGABRT" in teardown[0]["message"], teardown


def test_ranks_stopped_from_outside_then_one_aborting_in_teardown_is_stopped_not_a_crash(tmp_path):
    """SIGTERM to every rank, not from the supervisor (an operator's kill, a preemption): they save
    and say `stopped`, then rank 1 aborts on its way out. The run stopped: no crash, no restart."""
    log_dir = tmp_path / "run"
    proc = start_supervisor(log_dir, env={"GPT2SUP_INJECT_TEARDOWN_ABORT": "1"})
    wait_for_step(log_dir, 3, rank=1)
    for rank in (0, 1):
        os.kill(heartbeat(log_dir, rank)["pid"], signal.SIGTERM)
    code = wait_exit(proc, log_dir)
    assert code == SupervisorExit.STOPPED, console_text(log_dir)[-3000:]
    assert len(events_named(log_dir, "launched")) == 1 and not events_named(log_dir, "crashed")
    teardown = [e for e in events_named(log_dir, "warning") if e.get("teardown_exit") is not None]
    assert teardown and "SIGABRT" in teardown[0]["message"], read_events(log_dir)


def test_a_final_checkpoint_that_cannot_be_written_ends_finished_without_checkpoint(tmp_path):
    with mounted_tmpfs(tmp_path / "tmpfs", "60m") as disk:  # the tiny model's ~40 MB save never fits
        log_dir = disk / "run"
        proc = start_supervisor(log_dir, nproc=1, worker_args=[*one_process_worker_args(), "--final_save_retry_s", "1"])
        code = wait_exit(proc, log_dir)
        assert code == SupervisorExit.FINISHED_WITHOUT_CHECKPOINT, console_text(log_dir)[-3000:]
        state = supervisor_json(log_dir)
        assert state["state"] == "finished_without_checkpoint" and state["exit_code"] == 5
        (ending,) = events_named(log_dir, "finished_without_checkpoint")
        assert "NOT on disk" in ending["message"] and "(exit 5)" in ending["message"], ending
        assert not events_named(log_dir, "finished") and not events_named(log_dir, "restarted")
        assert not (log_dir / FINAL_CHECKPOINT).exists()


def test_a_stop_whose_checkpoint_cannot_be_written_says_so_and_never_claims_a_save(tmp_path):
    # 60 MB holds one ~40 MB checkpoint of the tiny model (step 4), never a second one.
    with mounted_tmpfs(tmp_path / "tmpfs", "60m") as disk:
        log_dir = disk / "run"
        args = one_process_worker_args()
        args[args.index("--max_steps") + 1] = "100000"
        args[args.index("--checkpoint_interval") + 1] = "4"
        proc = start_supervisor(log_dir, nproc=1, worker_args=[*args, "--final_save_retry_s", "1"])
        wait_for_step(log_dir, 5)
        proc.send_signal(signal.SIGTERM)
        code = wait_exit(proc, log_dir)
        assert code == SupervisorExit.STOPPED, console_text(log_dir)[-3000:]
        (ending,) = events_named(log_dir, "stopped")
        assert "could NOT be written" in ending["message"], ending
        assert "resumes from model_00004.pt" in ending["message"] and "; saved model_" not in ending["message"], ending
        assert not events_named(log_dir, "finished_without_checkpoint") and not events_named(log_dir, "restarted")
        assert [p.name for p in sorted(log_dir.glob("model_*.pt"))] == ["model_00004.pt"]


# --- issue 6 item 2: a run is resumed only as the run it is ------------------------------------------


def test_another_runs_arguments_are_refused_with_the_differences_then_allowed_or_reused(tmp_path):
    log_dir = tmp_path / "run"
    args = one_process_worker_args()
    first = start_supervisor(log_dir, nproc=1, worker_args=args)
    assert wait_exit(first, log_dir) == SupervisorExit.FINISHED, console_text(log_dir)[-3000:]

    changed = start_supervisor(log_dir, nproc=1, worker_args=[*args, "--max_lr", "0.5"])
    assert wait_exit(changed, log_dir) == SupervisorExit.REFUSED, console_text(log_dir)[-3000:]
    state = supervisor_json(log_dir)
    assert state["state"] == "refused" and state["exit_code"] == 2
    (refused,) = events_named(log_dir, "refused")
    lines = refused["message"].splitlines()
    assert lines[0].startswith("refused: ") and any(
        line.startswith("  max_lr: ") and line.endswith("-> 0.5") for line in lines[1:]), lines
    assert any(line.startswith("  max_lr: ") for line in console_text(log_dir).splitlines())  # one per line
    assert len(events_named(log_dir, "launched")) == 2 and not events_named(log_dir, "backoff")

    longer = [*args, "--max_lr", "0.5"]
    longer[longer.index("--max_steps") + 1] = "14"
    allowed = start_supervisor(log_dir, "--allow-config-change", nproc=1, worker_args=longer)
    assert wait_exit(allowed, log_dir) == SupervisorExit.FINISHED, console_text(log_dir)[-3000:]
    assert "--allow_config_change" in events_named(log_dir, "launched")[-1]["argv"]
    assert (log_dir / "model_00013.pt").exists()

    again = start_supervisor(log_dir, "--allow-config-change", nproc=1, worker_args=[])
    assert wait_exit(again, log_dir) == SupervisorExit.FINISHED, console_text(log_dir)[-3000:]
    (reused,) = events_named(log_dir, "config_change")
    assert "reusing the previous run's" in reused["message"] and reused["worker_args"] == longer
    assert events_named(log_dir, "launched")[-1]["argv"][-len(longer):] == longer
