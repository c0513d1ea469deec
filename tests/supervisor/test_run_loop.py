"""The cycle of ``Supervisor`` with scripted attempts: decide, quarantine, back off, end (no torchrun).

Each attempt is a function returning an ``AttemptResult`` (what ``TorchrunAttempts`` would report),
so every branch of the cycle runs in milliseconds; ``test_run_e2e.py`` covers the real thing.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from shared.exit_codes import SupervisorExit, WorkerExit
from shared.run_dir import RunDir
from shared.vocabulary import OutcomeKind
from supervisor.attempts.attempt import AttemptResult
from supervisor.checkpoints.checkpoint_selection import CheckpointVerdict, Selection
from supervisor.multinode.node_coordination import NodeCoordination
from supervisor.policy import BackoffConfig, Outcome, RestartLimits
from supervisor.run_config import RunConfig
from supervisor.run_loop import Supervisor
from supervisor.run_start import RecordUnreadable
from supervisor.wiring import Select, Wiring

Script = Callable[[int], AttemptResult]


class RecordingReporter:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def update(self, snapshot: object) -> None:
        return None

    def event(self, line: str) -> None:
        self.lines.append(line)

    def close(self) -> None:
        return None


class ScriptedAttempts:
    def __init__(self, script: list[Script]) -> None:
        self.script = list(script)
        self.numbers: list[int] = []

    def run(self, number: int) -> AttemptResult:
        self.numbers.append(number)
        return self.script.pop(0)(number)

    def time_recovery(self, *, validation_s: float | None = None, backoff_s: float | None = None) -> None:
        pass  # the real attempts time restarts; a script has none to time


def scripted_wiring(attempts: ScriptedAttempts, select: Select,
                    coordination: NodeCoordination | None = None) -> Callable[[object], Wiring]:
    """The cycle's wiring for these tests: given attempts and selection, no validator."""
    return lambda _parts: Wiring(attempts, select, coordination=coordination)


class TrustingSelect:
    """Choose the newest checkpoint as valid (no probe); remember what each call chose."""

    def __init__(self) -> None:
        self.chosen: list[str | None] = []

    def __call__(self, run_dir: Path, **_: object) -> Selection:
        newest = RunDir.at(run_dir).newest_checkpoint()
        self.chosen.append(newest.path.name if newest else None)
        if newest is None:
            return Selection(chosen=None)
        verdict = CheckpointVerdict(newest.path, True, None, newest.step, newest.size, 0.01)
        return Selection(chosen=verdict, checked=[verdict])


def ends(kind: OutcomeKind, *, code: int | None = None, signal: int | None = None, step: int | None = 3,
         message: str | None = None, cause: str | None = None, bad: str | None = None,
         last: str | None = None, reason: str = "it ended") -> Script:
    def attempt(number: int) -> AttemptResult:
        return AttemptResult(Outcome(kind, exit_code=code, signal=signal, rank=0), reason, 1.0, step,
                             message=message, cause=cause, bad_checkpoint=bad, last_checkpoint=last)
    return attempt


def make(tmp_path: Path, script: list[Script], *, worker_args: list[str] | None = None, backoff: float = 0.0,
         coordination: object = None, **config: object,
         ) -> tuple[Supervisor, ScriptedAttempts, RecordingReporter, TrustingSelect]:
    cfg = RunConfig(log_dir=tmp_path, cwd=tmp_path, worker_args=list(worker_args or ["--max_steps", "12"]),
                    backoff=BackoffConfig(initial_s=backoff), **config)
    attempts, reporter, select = ScriptedAttempts(script), RecordingReporter(), TrustingSelect()
    return (Supervisor(cfg, scripted_wiring(attempts, select, coordination), reporter=reporter),  # type: ignore[arg-type]
            attempts, reporter, select)


def events(tmp_path: Path, name: str | None = None) -> list[dict]:
    records = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    return [r for r in records if name is None or r["event"] == name]


def state(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "supervisor.json").read_text())


def test_crashes_are_restarted_with_backoff_until_training_finishes(tmp_path):
    (tmp_path / "model_00011.pt").write_bytes(b"x")
    sup, attempts, reporter, _ = make(tmp_path, [ends(OutcomeKind.CRASHED, code=1), ends(OutcomeKind.CRASHED, code=1),
                                                 ends(OutcomeKind.FINISHED, step=11, last="model_00011.pt")],
                                      backoff=0.01)
    assert sup.run() == SupervisorExit.FINISHED
    assert attempts.numbers == [1, 2, 3]
    assert [e["delay_s"] for e in events(tmp_path, "backoff")] == [0.01, 0.02]
    assert [e["restarts_used"] for e in events(tmp_path, "restarted")] == [1, 2]
    assert state(tmp_path)["state"] == "finished" and state(tmp_path)["exit_code"] == 0
    assert "exit 0" in reporter.lines[-1] and "model_00011.pt" in reporter.lines[-1]


def test_a_permanent_worker_error_gives_up_at_once_with_the_workers_own_line(tmp_path):
    cause = "train_gpt2.py: error: unrecognized arguments: --max_stpes 10"
    sup, attempts, reporter, _ = make(tmp_path, [ends(OutcomeKind.PERMANENT, code=2, cause=cause)], backoff=60.0)
    assert sup.run() == SupervisorExit.GAVE_UP
    assert attempts.numbers == [1]
    assert not events(tmp_path, "backoff") and not events(tmp_path, "restarted")
    last = reporter.lines[-1]
    assert last.startswith(f"gave up: {cause}") and "attempts/001.log" in last and "\n" not in last


def test_a_run_mismatch_is_refused_with_each_difference_on_its_own_line(tmp_path):
    message = "these arguments describe another run\n  max_lr: 0.0006 -> 0.5\n  seed: 1 -> 2"
    sup, _, reporter, _ = make(tmp_path, [ends(OutcomeKind.PERMANENT, code=WorkerExit.RUN_MISMATCH, message=message,
                                               cause="these arguments describe another run")])
    assert sup.run() == SupervisorExit.REFUSED
    assert state(tmp_path)["state"] == "refused"
    lines = reporter.lines[-1].splitlines()
    assert lines[:3] == ["refused: these arguments describe another run", "  max_lr: 0.0006 -> 0.5", "  seed: 1 -> 2"]
    assert "--allow-config-change" in lines[3]


def test_a_checkpoint_the_worker_rejects_is_quarantined_and_the_previous_one_used(tmp_path):
    for step in (4, 8):
        (tmp_path / f"model_{step:05d}.pt").write_bytes(b"x" * 10)
    bad = ends(OutcomeKind.BAD_CHECKPOINT, code=WorkerExit.CHECKPOINT_ERROR, bad="model_00008.pt",
               cause="model_00008.pt: CRC mismatch in archive/data/3")
    sup, _, _, select = make(tmp_path, [bad, ends(OutcomeKind.FINISHED, step=11)], backoff=60.0)
    assert sup.run() == SupervisorExit.FINISHED
    assert select.chosen == ["model_00008.pt", "model_00004.pt"]
    assert (tmp_path / "model_00008.pt.corrupt").exists() and not (tmp_path / "model_00008.pt").exists()
    quarantined = events(tmp_path, "quarantined")
    assert [e["checkpoint"] for e in quarantined] == ["model_00008.pt"]
    assert "CRC mismatch" in quarantined[0]["reason"]
    assert not events(tmp_path, "backoff")  # the cause is gone: no reason to wait


def test_finishing_without_the_final_checkpoint_is_exit_5_not_finished(tmp_path):
    sup, _, reporter, _ = make(tmp_path, [ends(OutcomeKind.FINISHED_WITHOUT_CHECKPOINT, code=7, step=11,
                                               cause="no space left for model_00011.pt")])
    assert sup.run() == SupervisorExit.FINISHED_WITHOUT_CHECKPOINT
    assert state(tmp_path)["state"] == "finished_without_checkpoint"
    assert events(tmp_path, "finished_without_checkpoint") and not events(tmp_path, "finished")
    assert "NOT on disk" in reporter.lines[-1] and "exit 5" in reporter.lines[-1]


def test_a_stop_says_exit_4_and_the_checkpoint_it_saved(tmp_path):
    (tmp_path / "model_00059.pt").write_bytes(b"x")
    sup, _, reporter, _ = make(tmp_path, [])

    def stopped(number: int) -> AttemptResult:
        sup.stops.request()
        (tmp_path / "model_00073.pt").write_bytes(b"x")
        return ends(OutcomeKind.STOPPED, code=0, step=73, last="model_00073.pt",
                    reason="the workers saved and exited")(number)

    sup.attempts.script.append(stopped)
    assert sup.run() == SupervisorExit.STOPPED
    assert "exit 4" in reporter.lines[-1] and "exit 0" not in reporter.lines[-1]
    saved = state(tmp_path)
    assert saved["newest_checkpoint"] == "model_00073.pt" and saved["newest_checkpoint_valid"] is True


def test_a_stop_during_the_backoff_launches_nothing_more(tmp_path):
    sup, attempts, _, _ = make(tmp_path, [], backoff=30.0)

    def crash(number: int) -> AttemptResult:
        sup.stops.request()  # arrives while the attempt ends; the backoff must not wait 30 s
        return ends(OutcomeKind.CRASHED, code=1)(number)

    attempts.script.append(crash)
    assert sup.run() == SupervisorExit.STOPPED
    assert attempts.numbers == [1]


def test_giving_up_on_the_budget_quotes_the_last_failure(tmp_path):
    crash = ends(OutcomeKind.CRASHED, signal=9, reason="rank 0 crashed: killed by SIGKILL after step 3")
    sup, attempts, _, _ = make(tmp_path, [crash] * 3, limits=RestartLimits(max_restarts=2, max_no_progress_restarts=0))
    assert sup.run() == SupervisorExit.GAVE_UP
    assert attempts.numbers == [1, 2, 3]
    reason = state(tmp_path)["last_failure"]["reason"]
    assert "budget" in reason and "SIGKILL after step 3" in reason


def test_no_worker_arguments_reuse_the_previous_runs_and_say_so(tmp_path):
    first, _, _, _ = make(tmp_path, [ends(OutcomeKind.STOPPED, code=0)], worker_args=["--model", "tiny"])
    first.run()
    again, _, reporter, _ = make(tmp_path, [ends(OutcomeKind.FINISHED)], worker_args=[])
    again.config.worker_args = []
    again.run()
    assert again.config.worker_args == ["--model", "tiny"]
    assert state(tmp_path)["run_config"]["worker_args"] == ["--model", "tiny"]
    assert any("reusing the previous run's --model tiny" in line for line in reporter.lines)


def test_a_failing_console_is_noted_once_and_the_run_ends_as_it_would(tmp_path):
    class BrokenConsole(RecordingReporter):
        def event(self, line: str) -> None:
            raise BrokenPipeError(32, "Broken pipe")

    cfg = RunConfig(log_dir=tmp_path, cwd=tmp_path)
    sup = Supervisor(cfg, scripted_wiring(ScriptedAttempts([ends(OutcomeKind.STOPPED, code=0)]), TrustingSelect()),
                     reporter=BrokenConsole())
    assert sup.run() == SupervisorExit.STOPPED
    warnings = [e for e in events(tmp_path, "warning") if "console" in e["message"]]
    assert len(warnings) == 1


def test_the_refusal_names_gpt2sups_flags_not_the_workers(tmp_path):
    message = ("run holds another run: 1 setting(s) differ; pass --allow_config_change to resume anyway, or use a "
               "new --log_dir\n  max_lr: 0.001 -> 0.5")
    sup, _, reporter, _ = make(tmp_path, [ends(OutcomeKind.PERMANENT, code=WorkerExit.RUN_MISMATCH, message=message)])
    assert sup.run() == SupervisorExit.REFUSED
    summary = ("refused: run holds another run: 1 setting(s) differ; pass --allow-config-change to resume anyway, "
               "or use a new --log-dir")
    assert reporter.lines[-1].splitlines() == [summary, "  max_lr: 0.001 -> 0.5"]


def test_a_newer_format_checkpoint_ends_the_run_before_any_launch_with_exit_6(tmp_path):
    """Issue 19, section 2: the selection's UNSUPPORTED verdict ends the run at once: no attempt,
    no restart, nothing renamed, one line (``test_unsupported_format.py`` runs the real thing)."""
    (tmp_path / "model_00008.pt").write_bytes(b"x")
    reason = ("model_00008.pt has checkpoint format_version 2, newer than this gpt2sup reads (format_version 1): "
              "a newer gpt2sup wrote it, it is not damaged; upgrade gpt2sup to use it")
    newer = CheckpointVerdict(tmp_path / "model_00008.pt", False, reason, 8, 1, unsupported_format_version=2)
    cfg = RunConfig(log_dir=tmp_path, cwd=tmp_path, worker_args=["--max_steps", "12"])
    attempts, reporter = ScriptedAttempts([]), RecordingReporter()
    sup = Supervisor(cfg, scripted_wiring(attempts, lambda run_dir, **_: Selection(chosen=None, checked=[newer],
                                                                                   unsupported=newer)),
                     reporter=reporter)
    assert sup.run() == SupervisorExit.UNSUPPORTED_FORMAT
    assert attempts.numbers == [] and (tmp_path / "model_00008.pt").exists()
    (ending,) = events(tmp_path, "gave_up")
    assert ending["exit_code"] == 6 and reason in ending["message"] and "\n" not in ending["message"]
    assert state(tmp_path)["exit_code"] == 6 and not events(tmp_path, "quarantined")
def test_a_forced_stop_names_the_step_actually_finished_and_the_newest_checkpoint(tmp_path):
    """Issue 19: a forced stop said "after step 92" while model_00093.pt was on disk and the panel
    showed 94/300: the watcher's last poll was older than what the ranks had done."""
    from shared.heartbeat import Heartbeat, write_heartbeat

    def forced(number: int) -> AttemptResult:
        (tmp_path / "model_00093.pt").write_bytes(b"x")
        write_heartbeat(RunDir.at(tmp_path).heartbeat(0), Heartbeat(
            pid=1, rank=0, world_size=1, step=93, phase="train", time=0.0, status="running", max_steps=300))
        return ends(OutcomeKind.STOPPED, step=92, reason="forced (second Ctrl-C (SIGINT))")(number)

    sup, _, reporter, _ = make(tmp_path, [forced])
    assert sup.run() == SupervisorExit.STOPPED
    line = reporter.lines[-1]
    assert "after step 93" in line and "newest checkpoint model_00093.pt" in line, line
    assert "step 92" not in line and "saved" not in line, line


def test_a_forced_stop_in_a_relaunchs_start_up_never_names_the_earlier_attempts_steps(tmp_path):
    """The previous attempt trained to step 120 and crashed (newest checkpoint 100); the relaunch is
    force-stopped before its rank 0 beat: the beat on disk is the earlier attempt's, whose steps
    101-120 were lost, so the line must not say "after step 120"."""
    from dataclasses import replace

    from shared.heartbeat import Heartbeat, write_heartbeat

    def forced(number: int) -> AttemptResult:
        (tmp_path / "model_00100.pt").write_bytes(b"x")
        write_heartbeat(RunDir.at(tmp_path).heartbeat(0), Heartbeat(
            pid=1, rank=0, world_size=1, step=120, phase="train", time=0.0, status="running", max_steps=300,
            attempt_id="earlier-attempt"))
        result = ends(OutcomeKind.STOPPED, step=None, reason="forced (second Ctrl-C (SIGINT))")(number)
        return replace(result, attempt_id="this-attempt")

    sup, _, reporter, _ = make(tmp_path, [forced])
    assert sup.run() == SupervisorExit.STOPPED
    line = reporter.lines[-1]
    assert "step 120" not in line and "after step 100" in line, line


def test_an_unreadable_supervisor_json_with_arguments_given_is_replaced_and_said(tmp_path):
    (tmp_path / "supervisor.json").write_text("{garbage")
    sup, _, reporter, _ = make(tmp_path, [ends(OutcomeKind.FINISHED, step=11, last="model_00011.pt")])
    assert sup.run() == SupervisorExit.FINISHED
    assert any("supervisor.json was unreadable (not JSON)" in line for line in reporter.lines)
    assert state(tmp_path)["accepted_run"]["worker_args"] == ["--max_steps", "12"]


def test_an_unreadable_supervisor_json_without_arguments_refuses_before_anything_runs(tmp_path):
    (tmp_path / "supervisor.json").write_text("[1, 2")
    sup, attempts, _, _ = make(tmp_path, [ends(OutcomeKind.FINISHED)], worker_args=[])
    sup.config.worker_args = []
    with pytest.raises(RecordUnreadable, match="unreadable .not JSON.*after `--`"):
        sup.run()
    assert attempts.numbers == [] and (tmp_path / "supervisor.json").read_text() == "[1, 2"


def test_a_finished_run_stays_finished_across_a_refused_attempt_and_launches_nothing(tmp_path):
    (tmp_path / "model_00011.pt").write_bytes(b"x")
    first, _, _, _ = make(tmp_path, [ends(OutcomeKind.FINISHED, step=11, last="model_00011.pt")])
    assert first.run() == SupervisorExit.FINISHED
    refused, _, _, _ = make(tmp_path, [ends(OutcomeKind.PERMANENT, code=WorkerExit.RUN_MISMATCH, message="another run")],
                            worker_args=["--max_steps", "12", "--max_lr", "0.5"])
    assert refused.run() == SupervisorExit.REFUSED
    again, attempts, reporter, _ = make(tmp_path, [], worker_args=[])
    again.config.worker_args = []
    assert again.run() == SupervisorExit.FINISHED
    assert attempts.numbers == []
    assert reporter.lines[-1].startswith("already finished at step 11 (model_00011.pt)"), reporter.lines[-1]
    longer, attempts, _, _ = make(tmp_path, [ends(OutcomeKind.FINISHED, step=13, last="model_00013.pt")],
                                  worker_args=["--max_steps", "14"])
    assert longer.run() == SupervisorExit.FINISHED and attempts.numbers == [1]  # more steps asked: launched


def test_a_stop_whose_worker_aborted_past_the_newest_checkpoint_never_claims_a_save(tmp_path):
    """A full disk failed the stop's save and the worker then aborted (torchrun exit 1) instead of
    exiting 9: the line said "saved model_00004.pt" for a run that had reached step 6."""
    (tmp_path / "model_00004.pt").write_bytes(b"x")
    sup, _, reporter, _ = make(tmp_path, [ends(OutcomeKind.STOPPED, code=1, step=6, last="model_00004.pt",
                                                reason="stopped on request (torchrun exit 1)")])
    assert sup.run() == SupervisorExit.STOPPED
    line = reporter.lines[-1]
    assert "could NOT be written" in line and "resumes from model_00004.pt" in line, line
    assert "saved model_" not in line, line
