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
from tests.supervisor.conftest import (
    FINAL_CHECKPOINT,
    REPO_ROOT,
    assert_same_weights,
    child_env,
    console_text,
    events_named,
    gpt2sup_argv,
    heartbeat,
    read_events,
    requires_worker,
    start_supervisor,
    supervisor_json,
    wait_exit,
    wait_for,
    wait_for_step,
)

pytestmark = requires_worker


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


def test_truncated_newest_checkpoint_is_quarantined_and_previous_used(tmp_path, reference_checkpoint):
    log_dir = tmp_path / "run"
    proc = start_supervisor(log_dir)
    wait_for(lambda: (log_dir / "model_00008.pt").exists(), 180, "checkpoint 8")
    ranks = [heartbeat(log_dir, r)["pid"] for r in (0, 1)]
    for pid in ranks:  # freeze the run so no newer checkpoint appears while we damage this one
        os.kill(pid, signal.SIGSTOP)
    checkpoints = sorted(p for p in log_dir.glob("model_*.pt") if not p.is_symlink())
    newest, previous = checkpoints[-1], checkpoints[-2]
    with open(newest, "r+b") as handle:
        handle.truncate(newest.stat().st_size // 2)
    for pid in ranks:
        os.kill(pid, signal.SIGKILL)
    _finish_ok(proc, log_dir, reference_checkpoint)
    quarantined = events_named(log_dir, "quarantined")
    assert [e["checkpoint"] for e in quarantined] == [newest.name]
    assert (log_dir / (newest.name + ".corrupt")).exists()
    resumed = [e for e in events_named(log_dir, "checkpoint_valid") if e.get("checkpoint")]
    assert resumed[-1]["checkpoint"] == previous.name


def test_same_step_crash_gives_up_for_lack_of_progress(tmp_path):
    log_dir = tmp_path / "run"
    proc = start_supervisor(log_dir, "--max-no-progress-restarts", "2", nproc=1,
                            worker_args=_one_proc_args(), env={"GPT2SUP_INJECT_CRASH_AT_STEP": "5"})
    code = wait_exit(proc, log_dir)
    assert code == SupervisorExit.GAVE_UP, console_text(log_dir)[-3000:]
    state = supervisor_json(log_dir)
    assert state["state"] == "gave_up"
    assert "no progress" in state["last_failure"]["reason"]
    assert len(events_named(log_dir, "launched")) == 3  # progress to step 4, then two stalls
    status = subprocess.run(gpt2sup_argv("status", "--log-dir", str(log_dir)), cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=60, env=child_env())
    assert "no progress" in status.stdout + status.stderr


def test_restart_budget_exhausted_gives_up(tmp_path):
    log_dir = tmp_path / "run"
    proc = start_supervisor(log_dir, "--max-restarts", "2", "--max-no-progress-restarts", "0", nproc=1,
                            worker_args=_one_proc_args(), env={"GPT2SUP_INJECT_CRASH_AT_STEP": "1"})
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
    assert supervisor_json(log_dir)["state"] == "stopped"

    again = start_supervisor(log_dir)
    _finish_ok(again, log_dir, reference_checkpoint)
    valid = [e for e in events_named(log_dir, "checkpoint_valid") if e.get("checkpoint")]
    assert valid[-1]["step"] == stop_step  # continued from the step it stopped at


def test_second_supervisor_refused_and_orphans_of_a_killed_one_cleaned(tmp_path, reference_checkpoint):
    log_dir = tmp_path / "run"
    first = start_supervisor(log_dir)
    wait_for_step(log_dir, 1, rank=0)
    second = subprocess.run(
        gpt2sup_argv("run", "--log-dir", str(log_dir), "--nproc-per-node", "2"),
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, env=child_env(),
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


def _one_proc_args() -> list[str]:
    from tests.supervisor.conftest import WORKER_ARGS

    args = list(WORKER_ARGS)
    args[args.index("--total_batch_size") + 1] = str(2 * 32)
    return args


@pytest.fixture
def small_tmpfs(tmp_path):
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=150m", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def test_low_disk_warns_and_pruning_keeps_newest_valid(small_tmpfs):
    log_dir = small_tmpfs / "run"
    # Checkpoints of the tiny model are ~40 MB: after the second one the 150 MB disk is "low".
    proc = start_supervisor(log_dir, "--min-free-disk", "100M", "--prune-on-low-disk", nproc=1,
                            worker_args=_one_proc_args())
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
    proc = start_supervisor(log_dir, "--worker", "tests.supervisor.silent_worker", "--startup-timeout", "4",
                            "--max-restarts", "1", "--max-no-progress-restarts", "0", nproc=1,
                            worker_args=_one_proc_args())
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
                            nproc=1, worker_args=_one_proc_args())

    def attempt_processes() -> list[tuple[int, float]]:
        try:
            recorded = _recorded_processes(log_dir)
        except (OSError, ValueError):
            return []
        return recorded if len(recorded) >= 2 else []

    recorded = wait_for(attempt_processes, 60, "torchrun and its worker")
    proc.send_signal(signal.SIGINT)
    wait_for(lambda: events_named(log_dir, "stop_requested"), 30, "the forwarded stop request")
    time.sleep(2)
    assert proc.poll() is None  # the worker ignored the request: still waiting, as it should
    assert any(_alive(pid, ct) for pid, ct in recorded)
    proc.send_signal(signal.SIGINT)
    code = wait_exit(proc, log_dir, timeout=60)
    assert code == SupervisorExit.STOPPED, console_text(log_dir)[-3000:]
    assert any("second stop request" in e["message"] for e in events_named(log_dir, "stop_requested"))
    assert not any(_alive(pid, ct) for pid, ct in recorded)
