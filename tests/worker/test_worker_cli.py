"""The worker's command line: bad input gets one clear line and a documented exit code, never a
traceback; fault injection and divergence exit as documented.

Every case is a real ``python -m worker.train_gpt2`` process. They are independent, so the module
fixture starts them all at once and each test only inspects its own result: the suite pays for
importing torch in parallel rather than eleven times in a row.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from shared.exit_codes import WorkerExit
from tests.worker.conftest import (
    FAST_ARGS,
    FINAL_CHECKPOINT,
    WorkerLaunch,
    WorkerLauncher,
    checkpoint_steps,
    read_heartbeat,
    read_metrics,
)


@dataclass
class CliCase:
    args: list[str]
    env: dict[str, str] | None = None


@dataclass
class CliResult:
    launch: WorkerLaunch
    returncode: int

    @property
    def log_dir(self) -> Path:
        return self.launch.log_dir

    @property
    def stdout(self) -> str:
        return self.launch.stdout()

    @property
    def stderr(self) -> str:
        return self.launch.stderr()


@pytest.fixture(scope="module")
def cli(launcher: WorkerLauncher, ref_bare: Path, tmp_path_factory) -> dict[str, CliResult]:
    base = tmp_path_factory.mktemp("worker_cli")
    garbage = base / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint\n" * 100)
    truncated = base / "model_00023.pt"
    whole = (ref_bare / FINAL_CHECKPOINT).read_bytes()
    truncated.write_bytes(whole[: len(whole) // 2])
    empty_data = base / "empty_data"
    empty_data.mkdir()
    # A checkpoint whose data position names a shard this data directory does not have.
    other_data = base / "model_00023_other_data.pt"
    state = torch.load(ref_bare / FINAL_CHECKPOINT, weights_only=True)
    state["train_loader_state"] = {"shard_index": 99, "position": 0}
    torch.save(state, other_data)
    short = [*FAST_ARGS, "--max_steps", "2"]
    cases = {
        "help": CliCase(["--help"]),
        "resume_without_path": CliCase([*short, "--resume"]),
        "missing_checkpoint": CliCase([*short, "--resume", "--checkpoint_path", str(base / "nope.pt")]),
        "garbage_checkpoint": CliCase([*short, "--resume", "--checkpoint_path", str(garbage)]),
        "truncated_checkpoint": CliCase([*short, "--resume", "--checkpoint_path", str(truncated)]),
        "other_model": CliCase([*short, "--model", "mini", "--resume",
                                "--checkpoint_path", str(ref_bare / FINAL_CHECKPOINT)]),
        "missing_pretrained": CliCase([*short, "--pretrained_checkpoint", str(base / "nope.pt")]),
        "auto_resume_empty": CliCase([*short, "--auto_resume"]),
        "empty_data_dir": CliCase([*short, "--data_dir", str(empty_data)]),
        "other_data": CliCase([*short, "--resume", "--checkpoint_path", str(other_data)]),
        "crash_injection": CliCase([*FAST_ARGS, "--max_steps", "6"], env={"GPT2SUP_INJECT_CRASH_AT_STEP": "2"}),
        # AdamW's first update at lr 1e30 moves every weight by ~1e30: the next loss is NaN.
        "diverged": CliCase([*FAST_ARGS, "--max_steps", "6", "--warmup_steps", "0", "--max_lr", "1e30",
                             "--checkpoint_interval", "1"]),
    }
    started = {name: launcher.start(base / name, case.args, env=case.env) for name, case in cases.items()}
    return {name: CliResult(launch, launch.wait(300)) for name, launch in started.items()}


def assert_one_line_error(result: CliResult, code: WorkerExit, *needles: str) -> str:
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output[-3000:]
    assert result.returncode == int(code), f"exit {result.returncode}, expected {code!r}:\n{output[-3000:]}"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("train_gpt2: error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def test_help_reads_like_a_manual(cli):
    result = cli["help"]
    assert result.returncode == 0, result.stderr
    for flag in ("--auto_resume", "--resume", "--checkpoint_path", "--pretrained_checkpoint",
                 "--checkpoint_interval", "--keep_last_n_checkpoints", "--eval_interval",
                 "--hellaswag_interval", "--generate_interval", "--log_dir", "--data_dir", "--model",
                 "--max_steps", "--dropout", "--compile"):
        assert flag in result.stdout, flag


def test_resume_without_checkpoint_path_is_a_usage_error(cli):
    assert_one_line_error(cli["resume_without_path"], WorkerExit.USAGE, "--checkpoint_path")


def test_missing_checkpoint_file(cli):
    assert_one_line_error(cli["missing_checkpoint"], WorkerExit.CHECKPOINT_ERROR, "not found", "nope.pt")


def test_garbage_file_as_checkpoint(cli):
    assert_one_line_error(cli["garbage_checkpoint"], WorkerExit.CHECKPOINT_ERROR, "garbage.pt")


def test_truncated_checkpoint(cli):
    assert_one_line_error(cli["truncated_checkpoint"], WorkerExit.CHECKPOINT_ERROR, "model_00023.pt")


def test_checkpoint_of_another_model_names_the_difference(cli):
    # tiny is 2 layers x 64 wide, mini 4 x 128.
    assert_one_line_error(cli["other_model"], WorkerExit.CHECKPOINT_ERROR, "different model", "n_layer 2 != 4",
                          "n_embd 64 != 128")
    assert checkpoint_steps(cli["other_model"].log_dir) == []  # nothing trained, nothing written
    beat = read_heartbeat(cli["other_model"].log_dir)
    assert beat["status"] == "failed" and "different model" in beat["message"]


def test_missing_pretrained_checkpoint(cli):
    assert_one_line_error(cli["missing_pretrained"], WorkerExit.CHECKPOINT_ERROR, "nope.pt")


def test_auto_resume_with_nothing_to_resume_starts_fresh_and_says_so(cli):
    result = cli["auto_resume_empty"]
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no checkpoint" in result.stdout and "starting fresh" in result.stdout
    assert [m["step"] for m in read_metrics(result.log_dir)] == [0, 1]
    assert read_heartbeat(result.log_dir)["status"] == "finished"


def test_data_dir_without_shards_is_a_data_error(cli):
    assert_one_line_error(cli["empty_data_dir"], WorkerExit.DATA_ERROR, "empty_data", "shards")


def test_checkpoint_from_other_data_is_a_data_error(cli):
    assert_one_line_error(cli["other_data"], WorkerExit.DATA_ERROR, "does not fit the data", "shard 99")


def test_injected_crash_exits_1_right_after_the_step(cli):
    result = cli["crash_injection"]
    assert result.returncode == int(WorkerExit.CRASHED) == 1, result.stdout + result.stderr
    assert "fault injection" in result.stderr
    assert read_metrics(result.log_dir)[-1]["step"] == 2
    beat = read_heartbeat(result.log_dir)
    # The heartbeat says the rank is dead, so `gpt2sup status` does not show it as running.
    assert beat["step"] == 2 and beat["status"] == "failed"
    assert "fault injection" in beat["message"]


def test_non_finite_loss_exits_diverged_without_saving(cli):
    result = cli["diverged"]
    assert "Traceback" not in result.stderr
    assert result.returncode == int(WorkerExit.DIVERGED), result.stdout + result.stderr
    beat = read_heartbeat(result.log_dir)
    assert beat["status"] == "diverged", beat
    assert "not finite" in result.stdout
    # Step 1 diverged: nothing after step 0 is logged, and the poisoned state was never saved.
    assert [m["step"] for m in read_metrics(result.log_dir)] == [0]
    assert beat["step"] == 1 and checkpoint_steps(result.log_dir) == []
