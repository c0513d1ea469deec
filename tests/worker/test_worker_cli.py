"""The worker's command line: bad input gets one clear line and a documented exit code, never a
traceback; fault injection and divergence exit as documented.

Every case is a real ``python -m worker.train_gpt2`` process. They are independent, so the module
fixture starts them all at once and each test only inspects its own result: the suite pays for
importing torch in parallel rather than eleven times in a row.
"""
from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from shared.exit_codes import WorkerExit
from tests.checkpoint_factory import flip_byte_in_tensor_data
from tests.worker.helpers import (
    FAST_ARGS,
    FINAL_CHECKPOINT,
    N_STEPS,
    RESUME_ARGS,
    WorkerLaunch,
    WorkerLauncher,
    checkpoint_steps,
    read_heartbeat,
    read_metrics,
)

# Real training processes or probe children: the end-to-end layer, run by CI, not the inner loop.
pytestmark = pytest.mark.slow

class RunsCodeWhenUnpickled:
    """Unpickling this would run a shell command: a hostile "checkpoint" (safe loading refuses it)."""

    def __reduce__(self):
        return (os.system, ("echo this must never run",))


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
    # A checkpoint from before run identities were recorded: its train_config names no model.
    old_format = base / "model_00023.pt.old"
    old_state = torch.load(ref_bare / FINAL_CHECKPOINT, weights_only=True)
    old_state["train_config"] = {"max_steps": old_state["train_config"]["max_steps"]}
    torch.save(old_state, old_format)
    # A checkpoint whose data position names a shard this data directory does not have.
    other_data = base / "model_00023_other_data.pt"
    state = torch.load(ref_bare / FINAL_CHECKPOINT, weights_only=True)
    state["train_loader_state"] = {"shard_index": 99, "position": 0}
    torch.save(state, other_data)
    # A byte of tensor data flipped after the file was written (bit rot, or a change after the
    # supervisor validated it): torch.load would not notice, the CRC-32 does.
    flipped_run = base / "flipped_auto_resume"
    flipped_run.mkdir()
    shutil.copy(ref_bare / FINAL_CHECKPOINT, flipped_run / FINAL_CHECKPOINT)
    flip_byte_in_tensor_data(flipped_run / FINAL_CHECKPOINT)
    flipped_pretrained = base / "flipped_pretrained.pt"
    shutil.copy(ref_bare / FINAL_CHECKPOINT, flipped_pretrained)
    flip_byte_in_tensor_data(flipped_pretrained)
    # A loader state that is not one (a damaged or foreign file): a verdict on the file (exit 4),
    # not "other data" (exit 5, which the supervisor would treat as permanent).
    junk_loader = base / "model_00007.pt"
    state["train_loader_state"] = {"shard_index": "zero", "position": 0}
    torch.save(state, junk_loader)
    hostile = base / "model_00005.pt"
    torch.save({"model": RunsCodeWhenUnpickled()}, hostile)
    short = [*FAST_ARGS, "--max_steps", "2"]
    cases = {
        "help": CliCase(["--help"]),
        "resume_without_path": CliCase([*short, "--resume"]),
        "missing_checkpoint": CliCase([*short, "--resume", "--checkpoint_path", str(base / "nope.pt")]),
        "garbage_checkpoint": CliCase([*short, "--resume", "--checkpoint_path", str(garbage)]),
        "truncated_checkpoint": CliCase([*short, "--resume", "--checkpoint_path", str(truncated)]),
        # The checkpoint's own arguments but another model: a different run, not a bad file.
        "other_model": CliCase([*RESUME_ARGS, "--model", "mini", "--resume",
                                "--checkpoint_path", str(ref_bare / FINAL_CHECKPOINT)]),
        "missing_pretrained": CliCase([*short, "--pretrained_checkpoint", str(base / "nope.pt")]),
        # The same refusal, then an abort in the interpreter's teardown (gloo's threads do that now and
        # then: "terminate called without an active exception").
        "abort_after_refusal": CliCase([*short, "--pretrained_checkpoint", str(base / "nope.pt")],
                                       env={"GPT2SUP_INJECT_EXIT_ABORT": "0"}),
        "auto_resume_empty": CliCase([*short, "--auto_resume"]),
        "empty_data_dir": CliCase([*short, "--data_dir", str(empty_data)]),
        "other_data": CliCase([*RESUME_ARGS, "--resume", "--checkpoint_path", str(other_data)]),
        "flipped_auto_resume": CliCase([*FAST_ARGS, "--max_steps", str(N_STEPS + 2), "--auto_resume"]),
        "flipped_pretrained": CliCase([*short, "--pretrained_checkpoint", str(flipped_pretrained)]),
        "old_other_model": CliCase([*RESUME_ARGS, "--model", "mini", "--resume", "--checkpoint_path", str(old_format)]),
        "junk_loader_state": CliCase([*RESUME_ARGS, "--resume", "--checkpoint_path", str(junk_loader)]),
        "hostile_pickle": CliCase([*short, "--resume", "--checkpoint_path", str(hostile)]),
        "abbreviated_flag": CliCase([*FAST_ARGS, "--max_step", "2"]),
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
                 "--max_steps", "--dropout", "--compile", "--allow_config_change"):
        assert flag in result.stdout, flag


def test_resume_without_checkpoint_path_is_a_usage_error(cli):
    assert_one_line_error(cli["resume_without_path"], WorkerExit.USAGE, "--checkpoint_path")


def test_missing_checkpoint_file(cli):
    assert_one_line_error(cli["missing_checkpoint"], WorkerExit.CHECKPOINT_ERROR, "not found", "nope.pt")


def test_garbage_file_as_checkpoint(cli):
    assert_one_line_error(cli["garbage_checkpoint"], WorkerExit.CHECKPOINT_ERROR, "garbage.pt")


def test_truncated_checkpoint(cli):
    assert_one_line_error(cli["truncated_checkpoint"], WorkerExit.CHECKPOINT_ERROR, "model_00023.pt")


def test_checkpoint_of_another_model_is_a_run_mismatch_naming_the_difference(cli):
    # tiny is 2 layers x 64 wide, mini 4 x 128. Exit 6, not 4: the file is fine (no quarantine),
    # the arguments describe another run, and no --allow_config_change can load other shapes.
    result = cli["other_model"]
    assert "Traceback" not in result.stderr
    assert result.returncode == int(WorkerExit.RUN_MISMATCH), result.stdout + result.stderr
    summary, *differences = [line for line in result.stderr.splitlines() if line.strip()]
    assert summary.startswith("train_gpt2: error: ") and "different model" in summary
    expected = ("  model: tiny (block_size=128, n_layer=2, n_head=2, n_embd=64) -> "
                "mini (block_size=256, n_layer=4, n_head=4, n_embd=128) "
                "(other parameter shapes: the checkpoint's weights cannot be loaded)")
    assert differences == [expected]
    assert checkpoint_steps(cli["other_model"].log_dir) == []  # nothing trained, nothing written
    beat = read_heartbeat(cli["other_model"].log_dir)
    assert beat["status"] == "failed" and "different model" in beat["message"]


def test_an_older_checkpoint_of_another_model_is_a_run_mismatch_too_never_a_bad_file(cli):
    # Without a recorded identity the architecture check decides; a sound file of another model must
    # not be exit 4, which the supervisor answers by quarantining the file.
    result = cli["old_other_model"]
    assert "Traceback" not in result.stdout + result.stderr
    assert result.returncode == int(WorkerExit.RUN_MISMATCH), result.stdout + result.stderr
    assert "different model" in result.stderr
    assert read_heartbeat(result.log_dir).get("bad_checkpoint") is None


def test_missing_pretrained_checkpoint(cli):
    # A --pretrained_checkpoint is an input of the command, not one of the run's checkpoints: its own
    # permanent exit (11), never CHECKPOINT_ERROR (4), which would have the supervisor quarantine it.
    assert_one_line_error(cli["missing_pretrained"], WorkerExit.PRETRAINED_ERROR, "nope.pt")


def test_an_abort_in_the_teardown_after_a_refusal_keeps_the_refusals_exit_code(cli):
    """CI once saw a rank refuse a damaged pretrained file, write why, and then die of SIGABRT in
    its teardown: the supervisor read a crash and restarted a permanent error. The exit code a
    worker decided is its exit code, whatever the interpreter's teardown would do after it."""
    assert_one_line_error(cli["abort_after_refusal"], WorkerExit.PRETRAINED_ERROR, "nope.pt")


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


def test_a_byte_flipped_in_the_checkpoint_to_resume_is_caught_by_its_crc_and_named(cli):
    result = cli["flipped_auto_resume"]
    line = assert_one_line_error(result, WorkerExit.CHECKPOINT_ERROR, FINAL_CHECKPOINT, "CRC-32 mismatch")
    assert "damaged" in line
    beat = read_heartbeat(result.log_dir)
    # The supervisor quarantines exactly the file named here and falls back to an older one.
    assert beat["status"] == "failed" and beat["bad_checkpoint"] == FINAL_CHECKPOINT
    assert "CRC-32 mismatch" in beat["message"]
    assert read_metrics(result.log_dir) == [], "nothing may be trained from a damaged file"


def test_a_byte_flipped_in_the_pretrained_checkpoint_is_caught_before_it_is_used(cli):
    result = cli["flipped_pretrained"]
    assert_one_line_error(result, WorkerExit.PRETRAINED_ERROR, "flipped_pretrained.pt", "CRC-32 mismatch")
    assert read_heartbeat(result.log_dir).get("bad_checkpoint") is None  # not the run's: never quarantined
    assert checkpoint_steps(result.log_dir) == []


def test_a_hostile_pickle_is_refused_in_plain_words_without_advice_to_load_unsafely(cli):
    result = cli["hostile_pickle"]
    line = assert_one_line_error(result, WorkerExit.CHECKPOINT_ERROR, "model_00005.pt", "posix.system",
                                 "safe loading does not execute")
    assert "this must never run" not in result.stdout + result.stderr
    assert "weights_only" not in line and "\x1b" not in line
    assert line.endswith(")"), f"the message was cut: {line!r}"
    assert read_heartbeat(result.log_dir)["bad_checkpoint"] == "model_00005.pt"


def test_an_abbreviated_flag_is_rejected(cli):
    result = cli["abbreviated_flag"]
    assert result.returncode == int(WorkerExit.USAGE)
    assert "unrecognized arguments: --max_step" in result.stderr
    assert read_metrics(result.log_dir) == []


def test_a_save_and_an_eval_report_their_duration_in_the_heartbeat(cli):
    beat = read_heartbeat(cli["auto_resume_empty"].log_dir)  # evals and saves at its last step
    assert beat["status"] == "finished"
    assert isinstance(beat["save_seconds"], float) and beat["save_seconds"] > 0
    assert isinstance(beat["eval_seconds"], float) and beat["eval_seconds"] > 0


def test_every_flag_has_a_help_text_with_its_default():
    from worker.train_gpt2 import build_arg_parser

    parser = build_arg_parser()
    for action in parser._actions:
        if action.dest == "help":
            continue
        assert action.help, f"{action.option_strings} has no help text"
        text = action.help % {"default": action.default}
        assert re.search(r"default", text), f"{action.option_strings}: {text!r} does not say its default"
        assert "None" not in text, f"{action.option_strings}: {text!r} shows a meaningless default"


@pytest.mark.parametrize("max_steps, expected", [(10, 1), (24, 2), (300, 30), (5000, 30), (5, 0)])
def test_the_cpu_profile_warm_up_never_exceeds_ten_percent_of_max_steps(max_steps, expected):
    from worker.train_gpt2 import TrainConfig, build_arg_parser

    args = build_arg_parser().parse_args(["--device", "cpu", "--max_steps", str(max_steps)])
    config = TrainConfig.from_args(args, cuda_available=False)
    assert config.warmup_steps == expected <= max_steps // 10
    assert f"warmup_steps={expected}" in config.profile_note
    explicit = build_arg_parser().parse_args(["--device", "cpu", "--max_steps", "10", "--warmup_steps", "7"])
    assert TrainConfig.from_args(explicit, cuda_available=False).warmup_steps == 7  # an explicit value wins


def test_train_config_is_frozen():
    from dataclasses import FrozenInstanceError

    from worker.train_gpt2 import TrainConfig, build_arg_parser

    config = TrainConfig.from_args(build_arg_parser().parse_args(["--device", "cpu"]), cuda_available=False)
    with pytest.raises(FrozenInstanceError):
        config.max_steps = 5  # type: ignore[misc]


def test_a_malformed_loader_state_is_a_bad_checkpoint_not_a_data_error(cli):
    result = cli["junk_loader_state"]
    assert_one_line_error(result, WorkerExit.CHECKPOINT_ERROR, "model_00007.pt", "does not fit this run",
                          "invalid data-loader state")
    assert read_heartbeat(result.log_dir)["bad_checkpoint"] == "model_00007.pt"
