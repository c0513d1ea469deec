"""``gpt2sup run -- SCRIPT.py``, the script using gpt2sup's heartbeat client (``shared.client``).

The script is ``examples/client_trainer.py``: the guide's trainer (``examples/guide_trainer.py``)
plus "a few lines of gpt2sup". With its beats the supervisor knows what it knows of its own
worker: hangs per phase (not the coarse silence of an unchanged script), a stop that saves at the
step it reached, stragglers by compute time, and the per-rank rows of ``gpt2sup status``. Real
torchrun, real signals, real files.
"""
from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import psutil
import pytest

from shared.exit_codes import SupervisorExit
from shared.heartbeat import Heartbeat, read_heartbeat
from tests.supervisor.helpers import (
    REPO_ROOT,
    events_named,
    read_events,
    supervisor_json,
    wait_exit,
    wait_for,
)
from tests.supervisor.test_own_script_e2e import (
    _guide_pickle,
    attempt_log,
    checkpoints,
    clean_up,
    failure_text,
    processes_of,
    run_gpt2sup,
    script_ranks,
    start_script_run,
)

pytestmark = pytest.mark.slow

SCRIPT = REPO_ROOT / "examples" / "client_trainer.py"
HANG_TIMEOUT_S = 6
ENDINGS = ("stopped", "finished", "gave_up", "refused", "finished_without_checkpoint")


def client_run(tmp_path: Path, log_dir: Path, script_args: list[str], *supervisor_args: str, nproc: int = 1):
    return start_script_run(tmp_path, log_dir, ["--log_dir", str(log_dir), *script_args], *supervisor_args,
                            nproc=nproc, script=SCRIPT)


def client_ranks(log_dir: Path) -> list[psutil.Process]:
    return script_ranks(log_dir, SCRIPT)


def beat(log_dir: Path, rank: int) -> Heartbeat | None:
    return read_heartbeat(log_dir / "heartbeat" / f"rank{rank}.json")


def beat_step(log_dir: Path, rank: int = 0) -> int:
    found = beat(log_dir, rank)
    return found.step if found is not None else -1


def checkpoint_step(path: Path) -> int:
    import torch

    return int(torch.load(path, map_location="cpu", weights_only=False, pickle_module=_guide_pickle())["step"])


# --- the tests ---------------------------------------------------------------------------------
def test_a_stopped_rank_is_found_by_its_beats_in_its_phase_and_resumed(tmp_path):
    """With beats, a SIGSTOPped rank is judged hung by its phase's timeout and named, as gpt2sup's
    own worker is, not by the silence of the script's output: catches a supervisor that ignores a
    script's beats (the "no output and no file written" verdict), misnames the phase or the rank,
    or relaunches without the resume flag."""
    log_dir = tmp_path / "run"
    proc = None
    try:
        proc = client_run(tmp_path, log_dir, ["--max_steps", "40", "--checkpoint_interval", "4", "--step_sleep", "0.05"],
                          "--hang-timeout", str(HANG_TIMEOUT_S))
        wait_for(lambda: (log_dir / "model_00004.pt").exists() and beat_step(log_dir) >= 6 or proc.poll() is not None,
                 300, "checkpoint 4 and step 6")
        assert proc.poll() is None, failure_text(log_dir)
        assert not events_named(log_dir, "hung"), failure_text(log_dir)
        (rank,) = client_ranks(log_dir)
        # Stop it in a training step: frozen, its last beat is what the supervisor judges.
        for _ in range(50):
            rank.suspend()
            frozen = beat(log_dir, 0)
            if frozen is not None and frozen.phase == "train" and frozen.status == "running":
                break
            rank.resume()
            time.sleep(0.05)
        else:
            pytest.fail(f"never caught rank 0 in phase train: {frozen}")
        stopped_at = time.time()

        hung = wait_for(lambda: events_named(log_dir, "hung"), HANG_TIMEOUT_S + 30, "the hung event")[0]
        assert HANG_TIMEOUT_S - 1 <= hung["time"] - stopped_at < HANG_TIMEOUT_S + 10, hung
        message = hung["message"]
        assert "phase 'train'" in message and "rank 0" in message, hung
        assert f"after step {frozen.step}" in message, (hung, frozen)
        assert "silence" not in message and "no output" not in message, hung
        assert hung.get("rank") == 0 and hung.get("step") == frozen.step, hung

        code = wait_exit(proc, log_dir, timeout=300)
        assert code == SupervisorExit.FINISHED, failure_text(log_dir)
        assert len(events_named(log_dir, "hung")) == 1, failure_text(log_dir)
        launched = events_named(log_dir, "launched")
        assert len(launched) == 2, failure_text(log_dir)
        assert "--auto_resume" not in launched[0]["argv"] and launched[1]["argv"][-1] == "--auto_resume"
        assert "resumed from" in attempt_log(log_dir, 2)
        assert (log_dir / "model_00039.pt").exists()
        final = beat(log_dir, 0)
        assert final is not None and final.status == "finished" and final.step == 39, final
    finally:
        clean_up(tmp_path, proc)


def test_sigterm_to_the_supervisor_saves_the_step_every_rank_stopped_at_and_ends_stopped(tmp_path):
    """The stop protocol through the client: the supervisor's SIGTERM reaches the ranks as
    ``should_stop()``, they agree on one step, rank 0 saves it, each says ``stopped`` and exits 0;
    the run ends ``stopped`` (exit 4) naming that checkpoint, nothing left running. Catches a
    client that dies on the supervisor's own SIGTERM (the run keeps only its periodic checkpoint),
    ranks stopping at different steps (a collective left waiting: the stop timeout kills them),
    and an ending that names an older checkpoint."""
    log_dir = tmp_path / "run"
    proc = None
    try:
        proc = client_run(tmp_path, log_dir, ["--max_steps", "1000", "--checkpoint_interval", "50",
                                              "--step_sleep", "0.05"], nproc=2)
        wait_for(lambda: min(beat_step(log_dir, 0), beat_step(log_dir, 1)) >= 5 or proc.poll() is not None,
                 300, "step 5 on both ranks")
        assert proc.poll() is None, failure_text(log_dir)
        ranks = client_ranks(log_dir)
        assert len(ranks) == 2, failure_text(log_dir)
        asked_at_step = beat_step(log_dir, 0)
        assert asked_at_step < 30, f"too late to stop away from the periodic save at 50: {asked_at_step}"
        proc.send_signal(signal.SIGTERM)

        code = wait_exit(proc, log_dir, timeout=120)
        assert code == SupervisorExit.STOPPED, failure_text(log_dir)
        beats = [beat(log_dir, rank) for rank in (0, 1)]
        assert all(b is not None and b.status == "stopped" for b in beats), (beats, failure_text(log_dir))
        steps = {b.step for b in beats if b is not None}
        assert len(steps) == 1, f"the ranks stopped at different steps: {beats}"
        (stop_step,) = steps
        assert asked_at_step <= stop_step < 50, (asked_at_step, stop_step)
        saved = log_dir / f"model_{stop_step:05d}.pt"
        assert saved.exists(), f"no checkpoint of the stop step {stop_step}: {checkpoints(log_dir)}"
        assert [p.name for p in checkpoints(log_dir)] == [saved.name]  # the stop's, no periodic one yet
        assert checkpoint_step(saved) == stop_step
        assert beats[0] is not None and beats[0].last_checkpoint == saved.name
        assert (log_dir / "latest_checkpoint.pt").resolve() == saved.resolve()

        endings = [e for e in read_events(log_dir) if e.get("event") in ENDINGS]
        assert endings and endings[-1]["event"] == "stopped", failure_text(log_dir)
        ending = endings[-1]["message"]
        assert f"after step {stop_step}" in ending and saved.name in ending and "(exit 4)" in ending, ending
        stop_events = [e["message"] for e in events_named(log_dir, "stop_requested")]
        assert not any("stop timeout" in m or "killing" in m for m in stop_events), stop_events
        assert not events_named(log_dir, "crashed") and not events_named(log_dir, "restarted"), failure_text(log_dir)
        assert supervisor_json(log_dir)["state"] == "stopped"
        time.sleep(1)  # anything still alive now outlived its supervisor
        left = processes_of(tmp_path)
        assert not left, f"processes of the run left behind: {[p.cmdline() for p in left]}"
    finally:
        clean_up(tmp_path, proc)


def test_a_rank_that_computes_slower_is_one_straggler_event_and_status_shows_both_ranks(tmp_path):
    """``compute_s`` in the beats: a rank computing 150 ms more per step is announced once as a
    straggler (detection only: the run finishes), and ``gpt2sup status`` shows a row per rank with
    its step and marks the straggler. Catches compute times that include the wait for the slow
    peer (both ranks look equal: no event), an event every poll, the fast rank named, and a panel
    with no rank rows for a script."""
    log_dir = tmp_path / "run"
    proc = None
    try:
        proc = client_run(tmp_path, log_dir, ["--max_steps", "40", "--checkpoint_interval", "20",
                                              "--slow_rank", "1", "--slow_s", "0.15"], nproc=2)
        found = wait_for(lambda: events_named(log_dir, "straggler") or proc.poll() is not None, 300,
                         "the straggler event")
        assert events_named(log_dir, "straggler"), failure_text(log_dir)
        assert found[0]["rank"] == 1 and "rank 1" in found[0]["message"], found

        live = run_gpt2sup(tmp_path, "status", "--log-dir", str(log_dir), "--json")
        assert live.returncode == 0, live.stdout + live.stderr
        ranks = json.loads(live.stdout)["ranks"]
        assert [r["rank"] for r in ranks] == [0, 1], ranks
        assert all(r["step"] >= 0 for r in ranks), ranks
        assert ranks[1]["straggler"] is not None and ranks[0]["straggler"] is None, ranks
        assert ranks[1]["compute_median_s"] > ranks[0]["compute_median_s"] + 0.1, ranks

        code = wait_exit(proc, log_dir, timeout=300)
        assert code == SupervisorExit.FINISHED, failure_text(log_dir)
        stragglers = events_named(log_dir, "straggler")
        assert len(stragglers) == 1, [e["message"] for e in stragglers]
        assert not events_named(log_dir, "hung") and not events_named(log_dir, "crashed"), failure_text(log_dir)

        status = run_gpt2sup(tmp_path, "status", "--log-dir", str(log_dir))
        text = status.stdout
        assert status.returncode == 0, text + status.stderr
        rows = {line.split()[1]: line for line in text.splitlines() if line.startswith("rank ")}
        assert set(rows) == {"0", "1"}, text
        assert all(" steps 40 " in row for row in rows.values()), text  # completed steps, as the worker's
        assert "STRAGGLER" in rows["1"] and "STRAGGLER" not in rows["0"], text
        assert any(line.startswith("WARNING: straggler: rank 1") for line in text.splitlines()), text
        assert "hang detection: OFF" not in text, text  # the beats judge hangs: detection is on
    finally:
        clean_up(tmp_path, proc)
