"""process_tree, run_lock, evidence and checkpoint selection against real processes and files.

The trees here are plain python/sleep processes, so these run in seconds without torch.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from shared.process_identity import (
    CREATE_TIME_TOLERANCE_S,
    ProcessId,
    same_process_alive,
)
from shared.run_dir import RunDir
from supervisor.attempts.evidence import capture_hang_evidence
from supervisor.attempts.process_tree import (
    command_line_log_dir,
    is_stopped,
    kill_tree,
    launch,
    processes_with_log_dir,
)
from supervisor.checkpoints import checkpoint_selection as cs
from supervisor.run_lock import RunLock, RunLockHeld, worker_lock_holder
from tests.checkpoint_factory import make_checkpoint, truncate_to_fraction

# A parent that spawns two children which IGNORE SIGTERM (like a worker busy saving), then waits.
TREE_SCRIPT = textwrap.dedent(
    """
    import signal, subprocess, sys, time
    child = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('child up', flush=True); time.sleep(600)"
    procs = [subprocess.Popen([sys.executable, "-c", child]) for _ in range(2)]
    print("parent up", flush=True)
    time.sleep(600)
    """
)


def _wait_for_children(tree, count: int, timeout: float = 15.0) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tree.refresh()
        kids = [p for p in tree.known.values() if p.pid != tree.pid]
        if len(kids) >= count and tree.log_path.read_text().count("child up") >= count:
            return kids
        time.sleep(0.05)
    raise AssertionError("children did not start")


def test_launch_runs_in_own_session_and_logs_both_streams(tmp_path):
    log = tmp_path / "attempt.log"
    tree = launch([sys.executable, "-c", "import os,sys; print('out', os.getsid(0)); print('err', file=sys.stderr)"],
                  cwd=tmp_path, env=dict(os.environ), log_path=log)
    assert tree.popen.wait(10) == 0
    text = log.read_text()
    assert "err" in text
    sid = int(text.split("out ")[1].split()[0])
    assert sid == tree.pid != os.getsid(0)  # its own session: Ctrl-C in our terminal does not reach it


@pytest.mark.slow  # real process trees and their grace periods: seconds each
def test_kill_tree_escalates_to_sigkill_and_leaves_no_survivor(tmp_path):
    tree = launch([sys.executable, "-c", TREE_SCRIPT], cwd=tmp_path, env=dict(os.environ), log_path=tmp_path / "a.log")
    kids = _wait_for_children(tree, 2)
    os.kill(kids[0].pid, signal.SIGSTOP)  # a stopped process must die too
    pids = [tree.pid] + [k.pid for k in kids]
    started = time.monotonic()
    report = kill_tree(tree.live_processes(), grace_s=1.0, reap=tree.popen)
    assert time.monotonic() - started < 10
    assert not report.survivors
    assert sorted(report.killed) == sorted(k.pid for k in kids)  # SIGTERM was ignored
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


@pytest.mark.slow  # real process trees and their grace periods: seconds each
def test_kill_tree_finds_reparented_descendants(tmp_path):
    tree = launch([sys.executable, "-c", TREE_SCRIPT], cwd=tmp_path, env=dict(os.environ), log_path=tmp_path / "a.log")
    kids = _wait_for_children(tree, 2)
    os.kill(tree.pid, signal.SIGKILL)  # the parent dies; its children are orphaned
    tree.popen.wait(5)
    assert all(k.is_running() for k in kids)
    report = kill_tree(tree.live_processes(), grace_s=0.5, reap=tree.popen)
    assert not report.survivors
    assert not any(same_process_alive(k.pid, k.create_time()) for k in kids if k.is_running())


def test_a_process_is_identified_by_pid_and_start_time_with_one_tolerance(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        me = ProcessId.of(psutil.Process(proc.pid))
        assert same_process_alive(me.pid, me.create_time).pid == proc.pid
        assert same_process_alive(me.pid, me.create_time + CREATE_TIME_TOLERANCE_S / 2) is not None
        assert same_process_alive(me.pid, me.create_time - 100.0) is None  # same pid, another process
        assert same_process_alive(2**22 + 17, me.create_time) is None  # no such pid
        assert ProcessId.parse(me.token) == ProcessId(me.pid, round(me.create_time, 3))
        assert ProcessId.parse(me.token).alive() is not None
        assert ProcessId.parse("garbage") is None and ProcessId.parse("12:nan") is None
    finally:
        proc.kill()
        proc.wait()
    assert same_process_alive(me.pid, me.create_time) is None  # a zombie or gone: not alive


_TRACER = textwrap.dedent(
    """
    import ctypes, sys, time
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.ptrace(16, int(sys.argv[1]), None, None) != 0:  # PTRACE_ATTACH
        print("failed", ctypes.get_errno(), flush=True)
        sys.exit(1)
    print("attached", flush=True)
    time.sleep(60)
    """
)


def test_stopped_means_sigstopped_or_stopped_by_a_tracer(tmp_path):
    sleeper = "import time; time.sleep(60)"
    stopped = subprocess.Popen([sys.executable, "-c", sleeper])
    traced = subprocess.Popen([sys.executable, "-c", sleeper])
    running = subprocess.Popen([sys.executable, "-c", sleeper])
    tracer = subprocess.Popen([sys.executable, "-c", _TRACER, str(traced.pid)], stdout=subprocess.PIPE, text=True)
    try:
        os.kill(stopped.pid, signal.SIGSTOP)
        if tracer.stdout.readline().strip() != "attached":
            pytest.skip("ptrace is not permitted here")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (is_stopped(stopped.pid) and is_stopped(traced.pid)):
            time.sleep(0.05)
        assert psutil.Process(traced.pid).status() == psutil.STATUS_TRACING_STOP
        assert is_stopped(stopped.pid) and is_stopped(psutil.Process(traced.pid))
        assert not is_stopped(running.pid)
        assert not is_stopped(2**22 + 17)
    finally:
        for proc in (tracer, stopped, traced, running):
            proc.kill()
            proc.wait()


def test_a_process_run_directory_is_its_log_dir_resolved_against_its_own_cwd(tmp_path):
    (tmp_path / "runs").mkdir()
    code = "import time; time.sleep(60)"
    relative = subprocess.Popen([sys.executable, "-c", code, "--log_dir", "runs/../runs/a"], cwd=tmp_path)
    equals = subprocess.Popen([sys.executable, "-c", code, f"--log_dir={tmp_path}/runs/b"], cwd="/")
    none = subprocess.Popen([sys.executable, "-c", code, "--log-dir", str(tmp_path / "runs" / "a")])
    try:
        time.sleep(0.3)
        assert command_line_log_dir(psutil.Process(relative.pid)) == tmp_path / "runs" / "a"
        assert command_line_log_dir(psutil.Process(equals.pid)) == tmp_path / "runs" / "b"
        assert command_line_log_dir(psutil.Process(none.pid)) is None  # the CLI's spelling is not a trainer's
        assert [p.pid for p in processes_with_log_dir(tmp_path / "runs" / "a")] == [relative.pid]
    finally:
        for proc in (relative, equals, none):
            proc.kill()
            proc.wait()


def test_run_lock_refuses_second_holder_and_names_pid(tmp_path):
    lock_path = tmp_path / "supervisor.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         ("import sys, time; from supervisor.run_lock import RunLock; l = RunLock(sys.argv[1]); l.acquire();"
         " print('locked', flush=True); time.sleep(60)"), str(lock_path)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockHeld) as info:
            RunLock(lock_path).acquire()
        assert info.value.pid == holder.pid
        assert str(holder.pid) in str(info.value)
    finally:
        holder.kill()
        holder.wait()
    # The kernel released the lock of the killed holder: no stale-lock cleanup needed.
    with RunLock(lock_path):
        assert lock_path.read_text().strip() == str(os.getpid())


@pytest.mark.slow  # real process trees and their grace periods: seconds each
def test_evidence_of_a_stopped_process_does_not_hang(tmp_path):
    log = tmp_path / "attempt.log"
    code = "import faulthandler, signal, time; faulthandler.register(signal.SIGUSR1, all_threads=True); time.sleep(60)"
    with open(log, "ab") as handle:
        running = subprocess.Popen([sys.executable, "-c", code], stderr=handle)
        stopped = subprocess.Popen([sys.executable, "-c", code], stderr=handle)
    try:
        time.sleep(1.0)  # let both install the handler
        os.kill(stopped.pid, signal.SIGSTOP)
        incident = tmp_path / "incidents" / "001"
        started = time.monotonic()
        report = capture_hang_evidence(incident, worker_pids={0: running.pid, 1: stopped.pid},
                                       attempt_log=log, summary={"reason": "test"})
        assert time.monotonic() - started < 30
        assert (incident / "summary.json").exists()
        assert "do_signal_stop" in (incident / "proc-rank1.txt").read_text() or "T (stopped)" in (
            incident / "proc-rank1.txt").read_text()
        # faulthandler of the running process printed its stack into the attempt log copy
        assert "sleep" in (incident / "faulthandler.log").read_text() or "line 1" in (
            incident / "faulthandler.log").read_text()
        if (incident / "py-spy-rank1.txt").exists():  # py-spy can read a stopped process
            assert "<module>" in (incident / "py-spy-rank1.txt").read_text()
        assert RunDir(tmp_path).next_incident_number() == 2
        assert report.duration_s < 30
    finally:
        for proc in (running, stopped):
            proc.kill()
            proc.wait()


@pytest.mark.slow  # a real process, py-spy on it
def test_evidence_of_a_process_without_a_sigusr1_handler_does_not_kill_it(tmp_path):
    # A user's script (`gpt2sup run -- SCRIPT.py`) registers no faulthandler: SIGUSR1's default
    # action would kill it, and py-spy would then find no process to take the stack of.
    log = tmp_path / "attempt.log"
    log.write_text("")
    plain = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.5)
        report = capture_hang_evidence(tmp_path / "incidents" / "001", worker_pids={0: plain.pid},
                                       attempt_log=log, summary={"reason": "test"})
        assert plain.poll() is None, "the evidence capture killed the process it was to look at"
        assert any("SIGUSR1 not sent" in error for error in report.errors), report.errors
        if (tmp_path / "incidents" / "001" / "py-spy-rank0.txt").exists():
            assert "sleep" in (tmp_path / "incidents" / "001" / "py-spy-rank0.txt").read_text()
    finally:
        plain.kill()
        plain.wait()


def test_a_wrapper_of_the_supervisor_is_not_a_trainer_of_its_run(tmp_path):
    # `timeout 600 gpt2sup run -- train.py --log_dir D`: the wrapper's command line names the
    # run directory too; the supervisor once refused to launch, naming its own parent.
    code = ("import sys; from supervisor.attempts.process_tree import processes_with_log_dir; "
            "print([p.pid for p in processes_with_log_dir(sys.argv[2])])")
    done = subprocess.run(["timeout", "60", sys.executable, "-c", code, "--log_dir", str(tmp_path)],
                          cwd=Path(__file__).resolve().parents[3], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_worker_lock_holder_names_the_pid_holding_the_flock_and_never_creates_the_file(tmp_path):
    lock_path = tmp_path / "worker.lock"
    assert worker_lock_holder(lock_path) is None and not lock_path.exists()
    holder = subprocess.Popen(
        [sys.executable, "-c",
         ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT);"
         " fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB); os.write(fd, str(os.getpid()).encode());"
         " print('locked', flush=True); time.sleep(60)"), str(lock_path)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert worker_lock_holder(lock_path) == holder.pid
    finally:
        holder.kill()
        holder.wait()
    assert worker_lock_holder(lock_path) is None  # a dead holder's lock is gone with it


# --- checkpoint selection, with real checkpoint files and the real validator ----------------------


def _fake_checkpoint(path: Path, good: bool) -> None:
    make_checkpoint(path, step=int(path.stem.split("_")[1]))
    if not good:
        truncate_to_fraction(path, 0.5)


@pytest.mark.slow  # seconds of torch.load / probe children: CI runs it, the inner loop does not
def test_selection_quarantines_bad_newest_and_repoints_link(tmp_path):
    run = RunDir.at(tmp_path)
    for step, good in ((10, True), (20, True), (30, False)):
        _fake_checkpoint(run.checkpoint(step), good)
    os.symlink("model_00030.pt", run.latest_link)
    selection = cs.select_checkpoint_for_restart(tmp_path)
    assert selection.chosen.path.name == "model_00020.pt"
    assert (tmp_path / "model_00030.pt.corrupt").exists() and not (tmp_path / "model_00030.pt").exists()
    assert os.readlink(run.latest_link) == "model_00020.pt"  # relative link
    assert [c.step for c in run.list_checkpoints()] == [10, 20]


@pytest.mark.slow  # seconds of torch.load / probe children: CI runs it, the inner loop does not
def test_selection_with_no_valid_checkpoint_removes_the_link(tmp_path):
    run = RunDir.at(tmp_path)
    _fake_checkpoint(run.checkpoint(5), False)
    os.symlink("model_00005.pt", run.latest_link)
    selection = cs.select_checkpoint_for_restart(tmp_path)
    assert selection.chosen is None
    assert not run.latest_link.is_symlink() and not run.latest_link.exists()
    assert (tmp_path / "model_00005.pt.corrupt").exists()


def test_prune_keeps_newest_valid(tmp_path):
    run = RunDir.at(tmp_path)
    for step in (10, 20, 30):
        _fake_checkpoint(run.checkpoint(step), True)
    result = cs.prune_oldest_checkpoints(tmp_path, threshold_bytes=2**62, newest_valid_step=20)
    assert [c.step for c in result.deleted] == [10]
    assert run.checkpoint(20).exists() and run.checkpoint(30).exists()
