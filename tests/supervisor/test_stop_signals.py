"""Stop requests work in every phase, and console failures never change an exit code (7.1, 7.2)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest

from supervisor.stop_signals import StopRequested, StopSignals


@pytest.fixture
def restore_handlers():
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def test_sigint_sigterm_and_sighup_each_count_as_a_stop_request(restore_handlers):
    stops = StopSignals()
    stops.install()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        os.kill(os.getpid(), signum)
        time.sleep(0.05)
    assert stops.names == ["SIGINT", "SIGTERM", "SIGHUP"]
    started = time.monotonic()
    stops.sleep(30)  # woken: returns at once
    assert time.monotonic() - started < 1


def test_repeated_plain_requests_never_force_only_sigquit_or_a_second_sigint_does(restore_handlers):
    """Issue 19 item 3: two `gpt2sup stop` (SIGTERM) at once are one request."""
    from supervisor.policy import stop_is_forced

    stops = StopSignals()
    stops.install()
    for signum in (signal.SIGTERM, signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        os.kill(os.getpid(), signum)
        time.sleep(0.05)
    assert stops.count == 4 and not stops.forced
    os.kill(os.getpid(), signal.SIGQUIT)  # `gpt2sup stop --force`
    time.sleep(0.05)
    assert stops.forced
    assert stop_is_forced(["SIGINT", "SIGINT"])  # a second Ctrl-C at the supervisor's terminal
    assert not stop_is_forced(["SIGTERM"] * 5) and not stop_is_forced(["SIGHUP", "SIGTERM", "SIGINT"])


def test_sighup_ignored_by_nohup_stays_ignored(restore_handlers):
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    StopSignals().install()
    assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN


def test_a_stop_request_ends_a_wait_on_a_child_process_at_once_and_kills_the_child(restore_handlers):
    """The load-probe wait: subprocess.run in its own session, which no Ctrl-C reaches."""
    stops = StopSignals()
    stops.install()
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    started = time.monotonic()
    with pytest.raises(StopRequested), stops.interruptible():
        subprocess.run(["sleep", "61.5"], start_new_session=True, check=False)
    assert time.monotonic() - started < 10
    assert not [c for c in psutil.Process().children() if c.is_running() and "61.5" in c.cmdline()]
    assert stops.count == 1


def test_outside_an_interruptible_block_a_request_only_counts():
    stops = StopSignals()
    stops.request(signal.SIGTERM)
    assert stops.count == 1 and stops.names == ["SIGTERM"]
    with pytest.raises(StopRequested), stops.interruptible():  # already pending: no wait starts
        pass


WRITER = textwrap.dedent(
    """
    import sys, time
    from supervisor.output_guard import guard_console
    guard_console()
    print("first line", flush=True)
    sys.stdin.readline()            # the test kills our reader, then lets us go on
    for n in range(1000):
        print(f"line {n} after the reader died")
    sys.stdout.flush()
    sys.stderr.write("still alive\\n")
    sys.exit(4)
    """
)


def test_writes_into_a_pipe_whose_reader_died_are_dropped_and_the_exit_code_stands(tmp_path):
    read_end, write_end = os.pipe()
    reader = subprocess.Popen(["head", "-n", "1"], stdin=read_end, stdout=subprocess.PIPE)
    writer = subprocess.Popen([sys.executable, "-c", WRITER], stdin=subprocess.PIPE, stdout=write_end,
                              stderr=subprocess.PIPE, text=True)
    os.close(read_end)
    os.close(write_end)
    assert reader.stdout.readline() == b"first line\n"
    reader.wait(10)  # head exits after one line: the pipe has no reader any more
    writer.stdin.write("go\n")
    writer.stdin.close()
    assert writer.wait(30) == 4
    errors = writer.stderr.read()
    assert "still alive" in errors and "BrokenPipe" not in errors and "Exception ignored" not in errors


def test_workers_learn_who_supervises_them_unless_told_to_outlive_it(tmp_path):
    from shared.process_identity import ProcessId
    from supervisor.attempts.torchrun import SUPERVISOR_ENV, build_env
    from supervisor.run_config import RunConfig

    inherited = {SUPERVISOR_ENV: "1:2.0"}  # a supervisor that started us must not be passed on
    env = build_env(RunConfig(log_dir=tmp_path, cwd=tmp_path), base=inherited)
    named = ProcessId.parse(env[SUPERVISOR_ENV])
    assert named is not None and named.pid == os.getpid() and named.alive() is not None
    env = build_env(RunConfig(log_dir=tmp_path, cwd=tmp_path, workers_outlive_supervisor=True), base=inherited)
    assert SUPERVISOR_ENV not in env
