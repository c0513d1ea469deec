"""``--tensorboard``: the curves and the fault history in ``<log_dir>/tb``, read back the way TensorBoard
reads them (``EventAccumulator``, which applies the writer's purge events).

In-process tests drive ``TensorBoardLog`` with the real ``SummaryWriter`` (resume supersedes later
steps; a really full disk, a tmpfs, warns once and the curves still end complete). The slow ones
are real worker processes: every tag once per step and equal to ``metrics.jsonl``; a crash and
``--auto_resume`` give the uninterrupted run's curves without a duplicated step; the fault history
of ``events.jsonl`` at each start; a missing ``tensorboard`` package is one line and exit 2; no flag,
no ``tb/``; and ``gpt2sup run -- --tensorboard`` through a real crash and restart.
"""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shared.exit_codes import WorkerExit
from tests.worker.helpers import (
    REPO_ROOT,
    WorkerLaunch,
    WorkerLauncher,
    read_metrics,
    run_ok,
)
from worker.runtime.telemetry import WriteWarnings
from worker.runtime.tensorboard_log import (
    RETRY_INTERVAL_S,
    TensorBoardLog,
    fault_summary,
)

TEXT_TAG = "faults/text_summary"  # add_text("faults", ...) as the text plugin files it
TRAIN_TAGS = {"loss": "train/loss", "lr": "train/lr", "norm": "train/grad_norm", "tokens_per_s": "train/tokens_per_s"}
EVAL_TAGS = {"val_loss": "val/loss", "hellaswag": "eval/hellaswag_acc"}


# ----------------------------------------------------------------------------- reading tb/ back


def accumulator(tb: Path) -> Any:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb), size_guidance={"scalars": 0, "tensors": 0})  # 0: keep every event
    acc.Reload()
    return acc


def scalars(acc: Any, tag: str) -> list[tuple[int, float]]:
    return [(event.step, event.value) for event in acc.Scalars(tag)]


def texts(acc: Any) -> list[tuple[int, str]]:
    if TEXT_TAG not in acc.Tags()["tensors"]:
        return []
    return [(event.step, event.tensor_proto.string_val[0].decode("utf-8")) for event in acc.Tensors(TEXT_TAG)]


def f32(value: float) -> float:
    """What a TensorBoard scalar holds: the float32 nearest the value."""
    return float(np.float32(value))


def one_per_step(points: list[tuple[int, float]]) -> dict[int, float]:
    steps = [step for step, _ in points]
    assert steps == sorted(set(steps)), f"duplicated or unordered steps: {steps}"
    return dict(points)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def step_record(step: int, loss: float, **more: float) -> dict[str, float]:
    return {"step": step, "time": 1.7e9 + step, "loss": loss, "lr": 1e-3, "norm": 1.5, "dt": 0.1,
            "tokens_per_s": 1000.0 + step, **more}


# ----------------------------------------------------------------------------- in process


def test_the_fault_summary_reads_a_torn_journal_and_keeps_its_table_intact(tmp_path):
    journal = tmp_path / "events.jsonl"
    assert fault_summary(journal, 0) is None  # a bare worker: no journal, no text
    records = [{"time": 1795000000.25, "event": "launched", "attempt": 1, "message": "attempt 1 | launched"},
               {"time": 1795000060, "event": "crashed", "attempt": 1, "message": "rank 0 exited 1\nafter step 6 " + "x" * 400},
               {"time": 1795000061, "event": "checkpoint_valid", "attempt": 1, "path": "model_00004.pt"}]
    journal.write_text("".join(json.dumps(r) + "\n" for r in records) + "not json\n[1, 2]\n" + '{"time": 17950')
    text = fault_summary(journal, 5)
    assert text is not None
    assert "3 event(s) in events.jsonl when this attempt started at step 5 (3 unreadable line(s) skipped)" in text
    rows = [line for line in text.splitlines() if line.startswith("| 2026")]
    assert len(rows) == 3
    assert rows[0] == "| 2026-11-18 11:06:40 | 1 | launched | attempt 1 \\| launched |"
    assert "rank 0 exited 1 after step 6 xxx" in rows[1] and rows[1].endswith("… |") and len(rows[1]) < 250
    assert "path=model_00004.pt" in rows[2]  # no message: the record's own details
    # Every row has the header's four columns: an escaped "|" never splits a cell.
    assert all(row.replace("\\|", "").count("|") == 5 for row in rows)


def test_many_events_show_the_newest_and_say_how_many_are_left_out(tmp_path):
    journal = tmp_path / "events.jsonl"
    journal.write_text("".join(json.dumps({"time": 1795000000 + i, "event": "disk_warning", "attempt": 1,
                                           "message": f"warning {i}"}) + "\n" for i in range(250)))
    text = fault_summary(journal, 0)
    assert "250 event(s)" in text and "the oldest 50 not shown" in text
    assert "warning 249 |" in text and "warning 50 |" in text and "warning 49 |" not in text


class RecordingSink:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def open(self, resumed_step: int | None) -> None:
        self.calls.append(("open", resumed_step))

    def record(self, metrics: Any) -> None:
        self.calls.append(("record", metrics["step"]))

    def close(self) -> None:
        self.calls.append(("close", None))


@pytest.mark.parametrize("rank0", [True, False])
def test_the_run_logger_hands_its_sinks_every_record_on_rank_0_only(tmp_path, rank0):
    from shared.run_dir import RunDir
    from worker.runtime.telemetry import RunLogger

    sink = RecordingSink()
    logger = RunLogger(RunDir.at(tmp_path), enabled=rank0, sinks=[sink])
    logger.open(resumed_step=4)
    logger.metrics(step_record(5, 1.0))
    logger.metrics(step_record(6, 1.0))
    logger.close()
    assert sink.calls == ([("open", 4), ("record", 5), ("record", 6), ("close", None)] if rank0 else [])


def test_records_become_scalars_and_a_resume_supersedes_every_later_step(tmp_path):
    pytest.importorskip("tensorboard")
    tb, journal = tmp_path / "tb", tmp_path / "events.jsonl"
    first = TensorBoardLog(tb, journal, WriteWarnings(0))
    first.open(resumed_step=None)
    for step in range(6):  # the attempt that crashed after step 5
        first.record(step_record(step, 10.0 + step, **({"val_loss": 9.0 + step} if step % 3 == 0 else {})))
    first.close()
    journal.write_text(json.dumps({"time": 1795000000, "event": "crashed", "attempt": 1, "message": "boom"}) + "\n")
    resumed = TensorBoardLog(tb, journal, WriteWarnings(0))
    resumed.open(resumed_step=2)  # from the checkpoint of step 2: steps 3-7 are trained (again)
    for step in range(3, 8):
        resumed.record(step_record(step, 20.0 + step, **({"val_loss": 19.0 + step, "hellaswag": 0.25} if step % 3 == 0 else {})))
    resumed.close()

    acc = accumulator(tb)
    losses = one_per_step(scalars(acc, "train/loss"))
    assert losses == {0: 10.0, 1: 11.0, 2: 12.0, 3: 23.0, 4: 24.0, 5: 25.0, 6: 26.0, 7: 27.0}
    assert one_per_step(scalars(acc, "val/loss")) == {0: 9.0, 3: 22.0, 6: 25.0}
    assert one_per_step(scalars(acc, "eval/hellaswag_acc")) == {3: 0.25, 6: 0.25}
    assert [event.wall_time for event in acc.Scalars("train/tokens_per_s")] == [1.7e9 + s for s in range(8)]
    assert [step for step, _ in texts(acc)] == [3] and "| crashed | boom |" in texts(acc)[0][1]

    fresh = TensorBoardLog(tb, journal, WriteWarnings(0))
    fresh.open(resumed_step=None)  # a new run in the same directory: the old curves go, as log.txt's lines do
    fresh.record(step_record(0, 5.0))
    fresh.close()
    assert len(list(tb.glob("events.out.tfevents.*"))) == 1
    assert one_per_step(scalars(accumulator(tb), "train/loss")) == {0: 5.0}


# The writer thread's own traceback would reach pytest as this warning: an error here.
@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
@pytest.mark.slow  # a real tmpfs filled up: seconds
def test_a_full_disk_warns_once_never_raises_and_the_curves_end_complete(tmp_path, capfd):
    pytest.importorskip("tensorboard")
    from bench import disk_fill

    try:
        mount = disk_fill.mounted_tmpfs(tmp_path / "small", "256k")
        disk = mount.__enter__()
    except disk_fill.MountRefused as refused:
        pytest.skip(str(refused))
    try:
        clock = FakeClock()
        warnings = WriteWarnings(0)
        log = TensorBoardLog(disk / "tb", disk / "events.jsonl", warnings, clock=clock)
        filler = disk_fill.fill_disk(disk)
        log.open(resumed_step=None)  # not even the event file can be created
        assert warnings.failing
        step = 0
        for step in range(3):
            log.record(step_record(step, 10.0 + step))
        filler.unlink()
        clock.now += RETRY_INTERVAL_S + 1
        log.record(step_record(3, 13.0))  # a new writer writes everything that waited
        assert not warnings.failing
        filler = disk_fill.fill_disk(disk)
        # The event file's last page still has room for a few steps: train until a write fails.
        for step in range(4, 400):
            log.record(step_record(step, 10.0 + step))
            if warnings.failing:
                break
        assert warnings.failing, "the full disk never failed a write"
        failed_at = step
        for step in range(failed_at + 1, failed_at + 4):
            log.record(step_record(step, 10.0 + step))
        filler.unlink()
        clock.now += RETRY_INTERVAL_S + 1
        last = failed_at + 4
        log.record(step_record(last, 10.0 + last))
        log.close()
        assert not warnings.failing
        captured = capfd.readouterr()
        assert captured.err.count("cannot write its TensorBoard events (tb/)") == 2  # once per outage
        assert captured.err.count("writing its TensorBoard events (tb/) works again") == 2
        assert "Traceback" not in captured.err, captured.err
        losses = one_per_step(scalars(accumulator(disk / "tb"), "train/loss"))
        assert losses == {s: f32(10.0 + s) for s in range(last + 1)}
    finally:
        mount.__exit__(None, None, None)


# ----------------------------------------------------------------------------- real workers

STEPS = 10
CRASH_AFTER = 7  # resumes from the checkpoint of step 4: steps 5-9 are trained again
RESUMED_FROM = 4
EVAL_STEPS = [0, 3, 6, 9]
BASE_ARGS = ["--model", "tiny", "--micro_batch_size", "2", "--seq_len", "32", "--total_batch_size", "128",
             "--max_steps", str(STEPS), "--checkpoint_interval", "4", "--dropout", "0.1",
             "--eval_interval", "3", "--val_steps", "2", "--hellaswag_interval", "3", "--hellaswag_limit", "4",
             "--generate_interval", "0"]
# `python -c BLOCKED ARGS...`: the worker where `import tensorboard` fails, as where it is not installed.
BLOCKED = ("import sys; sys.modules['tensorboard'] = None; "
           "from worker.train_gpt2 import main; sys.exit(main())")


@dataclass
class Runs:
    reference: Path  # uninterrupted, --tensorboard
    resumed: WorkerLaunch  # crashed after CRASH_AFTER with a journal beside it, then --auto_resume
    plain: Path  # no --tensorboard


def tensorboard_args(hellaswag: Path) -> list[str]:
    return [*BASE_ARGS, "--hellaswag_path", str(hellaswag), "--tensorboard"]


@pytest.fixture(scope="module")
def hellaswag_file(tmp_path_factory) -> Path:
    from tests.worker.test_hellaswag import write_hellaswag

    return write_hellaswag(tmp_path_factory.mktemp("tb_hellaswag") / "hs.jsonl", 4)


@pytest.fixture(scope="module")
def runs(launcher: WorkerLauncher, hellaswag_file: Path, tmp_path_factory) -> Runs:
    pytest.importorskip("tensorboard")
    base = tmp_path_factory.mktemp("tensorboard")
    args = tensorboard_args(hellaswag_file)
    crashed_dir = base / "crashed"
    crashed_dir.mkdir()
    # The supervisor's journal as a killed supervisor may leave it: good records, a bad line, a torn one.
    (crashed_dir / "events.jsonl").write_text(
        json.dumps({"time": 1795000000, "event": "launched", "attempt": 1, "message": "attempt 1 launched"}) + "\n"
        + "garbage\n" + '{"time": 1795000001, "event": "cra')
    started = [launcher.start(base / "reference", args),
               launcher.start(crashed_dir, args, env={"GPT2SUP_INJECT_CRASH_AT_STEP": str(CRASH_AFTER)}),
               launcher.start(base / "plain", [*BASE_ARGS, "--max_steps", "2", "--hellaswag_interval", "0"])]
    reference, crashed, plain = started
    for launch in (reference, plain):
        assert launch.wait() == 0, launch.output_tail()
    assert crashed.wait() == int(WorkerExit.CRASHED), crashed.output_tail()
    resumed = run_ok(launcher, crashed_dir, [*args, "--auto_resume"])
    assert f"(step {RESUMED_FROM}); continuing at step {RESUMED_FROM + 1}" in resumed.stdout()
    return Runs(reference.log_dir, resumed, plain.log_dir)


@pytest.mark.slow
def test_every_tag_has_one_value_per_step_equal_to_metrics_jsonl(runs: Runs) -> None:
    acc = accumulator(runs.reference / "tb")
    records = read_metrics(runs.reference)
    assert [r["step"] for r in records] == list(range(STEPS))
    for key, tag in TRAIN_TAGS.items():
        assert one_per_step(scalars(acc, tag)) == {r["step"]: f32(r[key]) for r in records}, tag
    for key, tag in EVAL_TAGS.items():
        assert one_per_step(scalars(acc, tag)) == {r["step"]: f32(r[key]) for r in records if key in r}, tag
        assert [step for step, _ in scalars(acc, tag)] == EVAL_STEPS, tag
    assert [event.wall_time for event in acc.Scalars("train/loss")] == [r["time"] for r in records]
    assert texts(acc) == []  # a bare worker has no events.jsonl: no fault history to show


@pytest.mark.slow
def test_a_crash_and_auto_resume_continue_the_same_curves_without_a_duplicated_step(runs: Runs) -> None:
    resumed_tb = runs.resumed.log_dir / "tb"
    assert len(list(resumed_tb.glob("events.out.tfevents.*"))) == 2  # one per attempt
    resumed, reference = accumulator(resumed_tb), accumulator(runs.reference / "tb")
    for tag in [*TRAIN_TAGS.values(), *EVAL_TAGS.values()]:
        if tag == "train/tokens_per_s":  # a timing: one per step, but never the same twice
            assert sorted(one_per_step(scalars(resumed, tag))) == list(range(STEPS))
            continue
        # Bitwise-exact resume: the resumed run's points are the uninterrupted run's, each once.
        assert one_per_step(scalars(resumed, tag)) == one_per_step(scalars(reference, tag)), tag
    # The points of the steps re-done are the second attempt's (its wall times), not the first's.
    records = {r["step"]: r for r in read_metrics(runs.resumed.log_dir)}
    assert [event.wall_time for event in resumed.Scalars("train/loss")] == [records[s]["time"] for s in range(STEPS)]


@pytest.mark.slow
def test_each_start_writes_the_fault_history_at_its_first_step(runs: Runs) -> None:
    history = texts(accumulator(runs.resumed.log_dir / "tb"))
    assert [step for step, _ in history] == [0, RESUMED_FROM + 1]
    newest = history[-1][1]
    assert f"when this attempt started at step {RESUMED_FROM + 1}" in newest
    assert "| launched | attempt 1 launched |" in newest
    # The worker's own replay_check record (appended during the resumed attempt) comes after it;
    # the torn and the bad line are counted, not fatal.
    assert "(2 unreadable line(s) skipped)" in newest


@pytest.mark.slow
def test_without_the_tensorboard_package_one_line_and_the_usage_exit(
        launcher: WorkerLauncher, hellaswag_file: Path, tmp_path: Path) -> None:
    log_dir = tmp_path / "blocked"
    result = subprocess.run([sys.executable, "-c", BLOCKED, "--log_dir", str(log_dir), *tensorboard_args(hellaswag_file)],
                            cwd=REPO_ROOT, env=launcher.env(), capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == int(WorkerExit.USAGE), result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    expected = ("train_gpt2: error: --tensorboard needs the tensorboard package, which is not installed: "
                "pip install 'gpt2sup[tensorboard]'")
    assert lines == [expected], result.stderr
    assert not log_dir.exists()  # refused before anything was created


@pytest.mark.slow
def test_without_the_flag_there_is_no_tb_directory(runs: Runs) -> None:
    assert [r["step"] for r in read_metrics(runs.plain)] == [0, 1]
    assert not (runs.plain / "tb").exists()


@pytest.mark.slow
def test_gpt2sup_run_passes_the_flag_through_and_the_newest_history_shows_the_crash(
        runs: Runs, hellaswag_file: Path, tmp_path: Path) -> None:
    from tests.supervisor.helpers import console_text, start_supervisor, wait_exit

    log_dir = tmp_path / "supervised"
    once = tmp_path / "crashed.once"
    proc = start_supervisor(log_dir, "--max-restarts", "2", nproc=1, worker_args=tensorboard_args(hellaswag_file),
                            env={"GPT2SUP_INJECT_CRASH_AT_STEP": str(CRASH_AFTER),
                                 "GPT2SUP_INJECT_CRASH_ONCE_FILE": str(once)})
    assert wait_exit(proc, log_dir) == 0, console_text(log_dir)[-3000:]
    acc, reference = accumulator(log_dir / "tb"), accumulator(runs.reference / "tb")
    for tag in [*TRAIN_TAGS.values(), *EVAL_TAGS.values()]:
        mine, theirs = one_per_step(scalars(acc, tag)), one_per_step(scalars(reference, tag))
        assert mine == theirs or (tag == "train/tokens_per_s" and sorted(mine) == sorted(theirs)), tag
    history = texts(acc)
    assert [step for step, _ in history] == [0, RESUMED_FROM + 1]
    first, newest = history[0][1], history[-1][1]
    assert "| launched |" in first and "| crashed |" not in first
    # The newest holds the whole history so far: both launches, the crash between them.
    assert newest.index("| 1 | launched |") < newest.index("| crashed |") < newest.index("| 2 | launched |")
