"""``shared.client``: the heartbeat client a user's own script calls (docs/own-trainer.md).

What the supervisor reads from it must be the heartbeat it reads from its own worker
(``shared.heartbeat.Heartbeat.from_dict`` accepts it, with the right fields); outside gpt2sup it
must do nothing at all; and its SIGTERM handler must tell the supervisor's stop (save, then exit)
from torchrun tearing the group down after a peer died (end at once). The signal tests run the
client in a child process, so the test process keeps its own SIGTERM handling.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shared.client import COMPUTE_SAMPLES, MIN_BEAT_INTERVAL_S, Heartbeat
from shared.heartbeat import Heartbeat as HeartbeatRecord
from shared.vocabulary import (
    ATTEMPT_ID_ENV,
    RUN_DIR_ENV,
    SUPERVISOR_ENV,
    Phase,
    RankStatus,
)
from supervisor.stop_signals import mark_stop_request

REPO_ROOT = Path(__file__).resolve().parents[2]
ATTEMPT = "attempt-7"


@pytest.fixture
def no_gpt2sup_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in (RUN_DIR_ENV, ATTEMPT_ID_ENV, SUPERVISOR_ENV, "RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def read_beat(run_dir: Path, rank: int) -> HeartbeatRecord:
    return HeartbeatRecord.from_dict(json.loads((run_dir / "heartbeat" / f"rank{rank}.json").read_text()))


# --- outside gpt2sup ------------------------------------------------------------------------------
def test_outside_gpt2sup_the_client_writes_nothing_and_never_asks_to_stop(tmp_path: Path, no_gpt2sup_env) -> None:
    no_gpt2sup_env.chdir(tmp_path)
    before = signal.getsignal(signal.SIGTERM)
    hb = Heartbeat(max_steps=10)
    assert not hb.enabled
    assert signal.getsignal(signal.SIGTERM) == before, "a bare run's SIGTERM must stay the default"
    hb.beat(0, loss=3.0, tokens_per_s=100.0, compute_s=0.01)
    with hb.phase("checkpoint"):
        pass
    hb.saved(tmp_path / "model_00000.pt")
    assert hb.should_stop() is False
    hb.stopped()
    hb.finished()
    hb.failed("no")
    assert list(tmp_path.iterdir()) == [], "the client wrote files outside gpt2sup"


# --- inside gpt2sup -------------------------------------------------------------------------------
def test_each_call_writes_the_ranks_heartbeat_as_the_supervisor_reads_it(tmp_path: Path, no_gpt2sup_env) -> None:
    no_gpt2sup_env.setenv(RUN_DIR_ENV, str(tmp_path))
    no_gpt2sup_env.setenv(ATTEMPT_ID_ENV, ATTEMPT)
    no_gpt2sup_env.setenv("RANK", "1")
    no_gpt2sup_env.setenv("WORLD_SIZE", "2")
    hb = Heartbeat(max_steps=50, handle_sigterm=False)
    assert hb.enabled
    first = read_beat(tmp_path, 1)
    assert (first.step, first.phase, first.status) == (-1, Phase.STARTUP, RankStatus.RUNNING)
    assert (first.rank, first.world_size, first.pid, first.max_steps) == (1, 2, os.getpid(), 50)
    assert first.attempt_id == ATTEMPT and first.hostname == socket.gethostname()
    assert not (tmp_path / "heartbeat" / "rank0.json").exists()

    hb.beat(0, loss=5.5, tokens_per_s=1234.0, compute_s=0.25)
    beat = read_beat(tmp_path, 1)
    assert (beat.step, beat.phase, beat.status) == (0, Phase.TRAIN, RankStatus.RUNNING)
    assert (beat.loss, beat.tokens_per_s, beat.compute_s) == (5.5, 1234.0, [0.25])
    assert beat.seq is not None and first.seq is not None and beat.seq > first.seq
    assert beat.mono is not None and beat.time >= first.time

    for step in range(1, 30):  # fast steps: the file is rewritten at most every MIN_BEAT_INTERVAL_S
        hb.beat(step, loss=1.0, compute_s=step / 1000)
    assert read_beat(tmp_path, 1).step < 29, "every fast beat rewrote the file (~0.3 ms a step)"
    time.sleep(MIN_BEAT_INTERVAL_S)
    hb.beat(30, loss=1.0, compute_s=0.03)
    beat = read_beat(tmp_path, 1)
    assert beat.step == 30
    assert beat.compute_s == [step / 1000 for step in range(11, 31)]  # the newest 20, newest last
    assert len(beat.compute_s) == COMPUTE_SAMPLES == 20

    hb.saved(tmp_path / "model_00030.pt")  # written at once, however soon after a beat
    assert read_beat(tmp_path, 1).last_checkpoint == "model_00030.pt"  # its name, as the worker's

    hb.stopped("asked to stop")
    ended = read_beat(tmp_path, 1)
    assert (ended.status, ended.message, ended.step) == (RankStatus.STOPPED, "asked to stop", 30)


@pytest.mark.parametrize(("end", "status", "message"), [
    ("finished", RankStatus.FINISHED, None),
    ("failed", RankStatus.FAILED, "out of data"),
])
def test_the_ending_calls_say_how_the_rank_ended(tmp_path: Path, no_gpt2sup_env, end: str, status: RankStatus,
                                                 message: str | None) -> None:
    hb = Heartbeat(tmp_path, max_steps=3, handle_sigterm=False)  # run_dir given: no env needed
    hb.beat(2, loss=1.0)
    getattr(hb, end)(*([message] if message else []))
    beat = read_beat(tmp_path, 0)
    assert (beat.status, beat.message, beat.step) == (status, message, 2)


def test_a_checkpoint_phase_is_the_phase_inside_and_its_duration_is_recorded(tmp_path: Path, no_gpt2sup_env) -> None:
    hb = Heartbeat(tmp_path, max_steps=10, handle_sigterm=False)
    hb.beat(4, loss=2.0)
    assert read_beat(tmp_path, 0).save_seconds is None
    with hb.phase("checkpoint"):
        inside = read_beat(tmp_path, 0)
        time.sleep(0.05)
    assert (inside.phase, inside.step, inside.status) == (Phase.CHECKPOINT, 4, RankStatus.RUNNING)
    after = read_beat(tmp_path, 0)
    assert after.phase == Phase.TRAIN
    assert after.save_seconds is not None and 0.05 <= after.save_seconds < 5

    with pytest.raises(RuntimeError), hb.phase("checkpoint"):
        raise RuntimeError("disk full")
    assert read_beat(tmp_path, 0).phase == Phase.TRAIN  # back to train even when the save raised


def test_a_gone_supervisor_asks_the_script_to_stop(tmp_path: Path, no_gpt2sup_env) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    no_gpt2sup_env.setenv(SUPERVISOR_ENV, f"{os.getpid()}:123.0")
    assert Heartbeat(tmp_path, handle_sigterm=False).should_stop() is False  # alive: train on
    no_gpt2sup_env.setenv(SUPERVISOR_ENV, f"{gone.pid}:123.0")
    assert Heartbeat(tmp_path, handle_sigterm=False).should_stop() is True


# --- SIGTERM: the supervisor's stop, or torchrun's teardown ---------------------------------------
CHILD = """
import sys, time
from shared.client import Heartbeat
hb = Heartbeat(max_steps=100)
hb.beat(0)
print("ready", flush=True)
deadline = time.monotonic() + 20
while not hb.should_stop():
    if time.monotonic() > deadline:
        sys.exit(3)
    time.sleep(0.01)
hb.stopped()
print("stopping", flush=True)
"""


def start_child(run_dir: Path) -> subprocess.Popen:
    env = {**os.environ, RUN_DIR_ENV: str(run_dir), ATTEMPT_ID_ENV: ATTEMPT, "RANK": "0", "WORLD_SIZE": "2",
           "PYTHONPATH": str(REPO_ROOT)}
    env.pop(SUPERVISOR_ENV, None)
    child = subprocess.Popen([sys.executable, "-c", CHILD], env=env, cwd=run_dir, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    assert child.stdout is not None
    line = child.stdout.readline()
    assert line == "ready\n", line + child.communicate(timeout=10)[1]
    return child


def dead_peer_heartbeat(run_dir: Path, attempt_id: str = ATTEMPT) -> None:
    """Rank 1 of the same attempt on this host, its process gone (a crashed peer)."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (run_dir / "heartbeat" / "rank1.json").write_text(json.dumps({
        "pid": gone.pid, "rank": 1, "world_size": 2, "step": 0, "phase": "train", "time": time.time(),
        "status": "running", "hostname": socket.gethostname(), "attempt_id": attempt_id}))


def end_child(child: subprocess.Popen) -> tuple[int, str]:
    try:
        out, err = child.communicate(timeout=20)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    return child.returncode, out + err


def test_sigterm_after_the_supervisors_stop_request_asks_the_script_to_stop(tmp_path: Path) -> None:
    child = start_child(tmp_path)
    dead_peer_heartbeat(tmp_path)  # even with a peer gone, the supervisor's own request wins
    mark_stop_request(tmp_path / "stop_request.json", "SIGTERM", ATTEMPT)
    child.send_signal(signal.SIGTERM)
    code, output = end_child(child)
    assert code == 0 and "stopping" in output, f"exit {code}: {output}"
    beat = read_beat(tmp_path, 0)
    assert beat.status == RankStatus.STOPPED and beat.message and "SIGTERM" in beat.message, beat


def test_sigterm_with_every_peer_alive_and_no_request_still_stops_gracefully(tmp_path: Path) -> None:
    """A SIGTERM from outside (a scheduler, a user's kill) with the group whole: save and stop."""
    child = start_child(tmp_path)
    child.send_signal(signal.SIGTERM)
    code, output = end_child(child)
    assert code == 0 and "stopping" in output, f"exit {code}: {output}"
    assert read_beat(tmp_path, 0).status == RankStatus.STOPPED


@pytest.mark.parametrize("request_for", [None, "an-earlier-attempt"], ids=["no request", "another attempt's"])
def test_sigterm_while_a_peer_of_the_attempt_is_dead_ends_the_process_at_once(tmp_path: Path,
                                                                               request_for: str | None) -> None:
    """torchrun tearing the group down after a rank died: no step can finish, so no save is
    tried; the process dies of the signal, as without the client."""
    child = start_child(tmp_path)
    dead_peer_heartbeat(tmp_path)
    if request_for is not None:
        mark_stop_request(tmp_path / "stop_request.json", "SIGTERM", request_for)
    child.send_signal(signal.SIGTERM)
    code, output = end_child(child)
    assert code == -signal.SIGTERM, f"exit {code}: {output}"
    assert "stopping" not in output
    assert read_beat(tmp_path, 0).status == RankStatus.RUNNING


def test_a_dead_rank_of_another_attempt_is_no_reason_to_die(tmp_path: Path) -> None:
    """An earlier attempt's leftover heartbeat (its process long gone) is not a peer of this one."""
    child = start_child(tmp_path)
    dead_peer_heartbeat(tmp_path, attempt_id="an-earlier-attempt")
    child.send_signal(signal.SIGTERM)
    code, output = end_child(child)
    assert code == 0 and "stopping" in output, f"exit {code}: {output}"
