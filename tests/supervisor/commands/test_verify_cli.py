"""``gpt2sup verify`` end to end: real checkpoint files, the real probe child, exit codes, output.

Every case asserts the exit code, that exactly one line per file came out, what that line says,
and that no traceback leaked.
"""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from supervisor.checkpoints.checkpoint_selection import quarantine
from supervisor.cli import cli
from tests.checkpoint_factory import (
    TINY,
    flip_byte_in_tensor_data,
    make_checkpoint,
    make_checkpoint_dict,
    make_guide_checkpoint,
    truncate_to_fraction,
    write_hostile_pickle,
)

# Real training processes or probe children: the end-to-end layer, run by CI, not the inner loop.
# One real probe child serves the module's verdicts (tests/shared_probe_child.py); the tests about
# the child's own life build their ProbeSession themselves.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_probe_child_per_module")]

PROJECT_ROOT = Path(__file__).resolve().parents[3]


def verify(*args: str):
    result = CliRunner().invoke(cli, ["verify", *args])
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def lines(result) -> list[str]:
    return [line for line in result.output.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def base_dict() -> dict:
    return make_checkpoint_dict(100)


# --- each way a file can be bad: (builder, the words its FAIL line must contain) -------------------

def _empty(path: Path, base: dict) -> None:
    path.touch()


def _truncated(path: Path, base: dict) -> None:
    torch.save(base, path)
    truncate_to_fraction(path, 0.5)


def _random_bytes(path: Path, base: dict) -> None:
    path.write_bytes(os.urandom(300_000))


def _flipped_byte(path: Path, base: dict) -> None:
    torch.save(base, path)
    flip_byte_in_tensor_data(path)


def _a_list(path: Path, base: dict) -> None:
    torch.save([1, 2, 3], path)


def _missing_keys(path: Path, base: dict) -> None:
    torch.save({k: v for k, v in base.items() if k != "optimizer"}, path)


def _step_mismatch(path: Path, base: dict) -> None:
    torch.save({**base, "step": 99}, path)


def _wrong_shapes(path: Path, base: dict) -> None:
    torch.save({**base, "config": {**TINY, "n_layer": 1}}, path)


def _plain_pickle(path: Path, base: dict) -> None:
    path.write_bytes(pickle.dumps({"step": 100}))


BAD_FILES: dict[str, tuple[Callable[[Path, dict], None], str]] = {
    "empty": (_empty, "empty file (0 bytes)"),
    "truncated": (_truncated, "not a zip archive"),
    "random-bytes": (_random_bytes, "not a zip archive"),
    "flipped-byte": (_flipped_byte, "CRC-32 mismatch in model_00100/data/"),
    "a-list": (_a_list, "not a checkpoint: the file holds a list"),
    "bad-loader-state": (lambda path, base: torch.save({**base, "train_loader_state": {"pos": 1}}, path),
                         "the worker's restore fails on this file: ValueError: invalid data-loader state"),
    "missing-keys": (_missing_keys, "missing required keys: optimizer"),
    "step-mismatch": (_step_mismatch, "step 99 inside the file disagrees with its name model_00100.pt"),
    "wrong-shapes": (_wrong_shapes, "unexpected transformer.h.1."),
    "plain-pickle": (_plain_pickle, "not a zip archive"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_file_gives_one_fail_line_and_exit_1(case: str, tmp_path: Path, base_dict: dict) -> None:
    build, expected = BAD_FILES[case]
    path = tmp_path / "model_00100.pt"
    build(path, base_dict)
    result = verify(str(path))
    assert result.exit_code == 1
    (line,) = lines(result)
    assert line.startswith(f"FAIL {path}  ") and expected in line


def test_good_file_gives_ok_line_and_exit_0(tmp_path: Path) -> None:
    path = make_checkpoint(tmp_path / "model_00100.pt", 100)
    result = verify(str(path))
    assert result.exit_code == 0, result.output
    (line,) = lines(result)
    assert line.startswith(f"OK   {path}  step 100  19.7 MB  crc ")
    assert " probe " in line and line.endswith("s") and "[deep:" not in line


def test_malicious_pickle_fails_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    path = write_hostile_pickle(tmp_path / "model_00100.pt", marker)
    result = verify(str(path))
    assert result.exit_code == 1
    (line,) = lines(result)
    assert line.startswith("FAIL ") and "refused" in line and "posix.system" in line
    assert "weights_only" not in line  # never advice to switch safe loading off
    assert not marker.exists()


def test_directory_is_expanded_in_step_order(tmp_path: Path) -> None:
    for step in (200, 100):
        make_checkpoint(tmp_path / f"model_{step:05d}.pt", step)
    (tmp_path / "model_00400.pt.tmp").write_bytes(b"staging")  # never a checkpoint
    (tmp_path / "model_00050.pt.corrupt").write_bytes(b"quarantined")
    (tmp_path / "notes.txt").write_text("x")
    good = verify(str(tmp_path))
    assert good.exit_code == 0, good.output
    assert [line.split()[:2] for line in lines(good)] == [
        ["OK", str(tmp_path / f"model_{s:05d}.pt")] for s in (100, 200)
    ]


def test_one_bad_file_in_a_directory_fails_it(tmp_path: Path) -> None:
    for step in (100, 200, 300):
        make_checkpoint(tmp_path / f"model_{step:05d}.pt", step)
    truncate_to_fraction(tmp_path / "model_00300.pt", 0.3)
    bad = verify(str(tmp_path))
    assert bad.exit_code == 1
    assert [line.split()[0] for line in lines(bad)] == ["OK", "OK", "FAIL"]
    assert "not a zip archive" in lines(bad)[2]
    assert "30% of the median size of its 2 sibling checkpoint(s)" in lines(bad)[2] and "cut short" in lines(bad)[2]


def test_a_run_directory_before_its_first_save_is_no_checkpoint_yet_not_a_failure(tmp_path: Path) -> None:
    """The README's "while it runs" ``gpt2sup verify log/`` said FAIL (exit 1) until the first
    save: nothing failed. It says so, with its own exit code (issue 19, section 6)."""
    (tmp_path / "events.jsonl").write_text("")  # a run that has started but not saved yet
    (tmp_path / "model_00008.pt.tmp").write_bytes(b"being written")  # a save in flight is no checkpoint
    result = verify(str(tmp_path))
    assert result.exit_code == 5, result.output  # VerifyExit.NO_CHECKPOINT_YET
    (line,) = lines(result)
    assert line.startswith(f"NO CHECKPOINT YET {tmp_path}  no checkpoint yet") and "FAIL" not in line
    data = json.loads(verify("--json", str(tmp_path)).output)
    assert [item["verdict"] for item in data] == ["no_checkpoint"]
    # A real failure elsewhere still wins: a missing file is FAIL, exit 1.
    assert verify(str(tmp_path), str(tmp_path / "model_00500.pt")).exit_code == 1


def test_a_missing_path_fails_with_exit_1(tmp_path: Path) -> None:
    missing = verify(str(tmp_path / "model_00500.pt"), str(tmp_path / "nope"))
    assert missing.exit_code == 1
    assert lines(missing) == [f"FAIL {tmp_path / 'model_00500.pt'}  no such file", f"FAIL {tmp_path / 'nope'}  no such file"]


def test_json_output_parses_with_one_object_per_file(tmp_path: Path) -> None:
    good = make_checkpoint(tmp_path / "model_00100.pt", 100)
    empty = tmp_path / "model_00200.pt"
    empty.touch()
    result = verify("--json", str(good), str(empty))
    assert result.exit_code == 1
    data = json.loads(result.output)
    assert [item["ok"] for item in data] == [True, False]
    assert data[0]["step"] == 100 and data[0]["size_bytes"] == good.stat().st_size
    assert [c["name"] for c in data[0]["checks"]][:4] == ["file", "size", "zip-crc", "load-probe"]
    assert [item["verdict"] for item in data] == ["valid", "invalid"]
    assert "empty" in data[1]["reason"]


def test_deep_catches_nan_that_the_default_checks_miss(tmp_path: Path, base_dict: dict) -> None:
    model = dict(base_dict["model"])
    model["transformer.ln_f.weight"] = model["transformer.ln_f.weight"].clone()
    model["transformer.ln_f.weight"][0] = float("nan")
    path = tmp_path / "model_00100.pt"
    torch.save({**base_dict, "model": model}, path)
    assert verify(str(path)).exit_code == 0
    deep = verify("--deep", str(path))
    assert deep.exit_code == 1
    assert "transformer.ln_f.weight holds 1 non-finite values" in deep.output


def test_deep_says_what_it_checked(tmp_path: Path) -> None:
    path = make_checkpoint(tmp_path / "model_00100.pt", 100)
    (line,) = lines(verify("--deep", str(path)))
    assert line.startswith("OK   ")
    assert "[deep: 29 model tensors finite, head tied to wte; 28 AdamW states shaped like their parameters" in line
    assert "optimizer tensors finite]" in line


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert verify().exit_code == 2
    assert verify("--timeout", "0", str(tmp_path)).exit_code == 2
    assert verify("--no-such-option", str(tmp_path)).exit_code == 2


@pytest.mark.parametrize("value", ["nan", "inf", "1e308", "-3", "0", "soon"])
def test_every_bad_timeout_is_one_line_and_exit_2(tmp_path: Path, value: str) -> None:
    # Before: nan/inf/1e308 printed a traceback from inside the probe's timer.
    result = verify("--timeout", value, str(tmp_path))
    assert result.exit_code == 2
    error = [line for line in lines(result) if "Error" in line]
    assert len(error) == 1 and "--timeout" in error[0] and "seconds" in error[0]


def test_a_probe_that_runs_out_of_time_is_inconclusive_exit_3_not_a_failure(tmp_path: Path) -> None:
    path = make_checkpoint(tmp_path / "model_00100.pt", 100)
    result = verify("--timeout", "0.001", str(path))
    assert result.exit_code == 3
    (line,) = lines(result)
    assert line.startswith(f"INCONCLUSIVE {path}  load-probe gave no verdict within 0.001s")
    assert path.exists()


def test_a_checkpoint_whose_numpy_rng_state_is_junk_fails_verify(tmp_path: Path, base_dict: dict) -> None:
    # Reproduced before the fix: "OK" even with --deep, then the worker exited 4 on it.
    path = tmp_path / "model_00100.pt"
    torch.save({**base_dict, "numpy_rng_state": ["MT19937", torch.zeros(3, dtype=torch.int64), 0, 0, 0.0]}, path)
    for args in ((), ("--deep",)):
        result = verify(*args, str(path))
        assert result.exit_code == 1
        (line,) = lines(result)
        assert line.startswith(f"FAIL {path}  the worker's restore fails on this file: ")


def test_a_smaller_checkpoint_of_another_model_beside_larger_siblings_passes(tmp_path: Path) -> None:
    for step in (10, 20):
        make_checkpoint(tmp_path / f"model_{step:05d}.pt", step, {**TINY, "n_embd": 64})
    small = make_checkpoint(tmp_path / "model_00030.pt", 30)
    result = verify(str(small))
    assert result.exit_code == 0, result.output
    assert "cut short" not in result.output


def test_a_guide_format_checkpoint_verifies_and_converts(tmp_path: Path) -> None:
    old = make_guide_checkpoint(tmp_path / "old" / "model_00010.pt", 10)
    checked = verify(str(old))
    assert checked.exit_code == 0, checked.output
    (line,) = lines(checked)
    assert line.startswith(f"OK   {old}  step 10") and "build-nanogpt format (gpt2sup convert" in line
    new = tmp_path / "new" / "model_00010.pt"
    converted = CliRunner().invoke(cli, ["convert", str(old), str(new)])
    assert converted.exit_code == 0, converted.output
    assert "converted from the build-nanogpt format" in converted.output
    plain = torch.load(new, weights_only=True)  # no allowlist needed any more
    assert plain["config"]["n_embd"] == 32 and plain["converted_from"]["format"] == "build-nanogpt"
    assert plain["train_loader_state"] == {"shard_index": 0, "position": 128}
    again = CliRunner().invoke(cli, ["convert", str(old), str(new)])
    assert again.exit_code == 2 and "--force" in again.output


def test_convert_refuses_a_hostile_pickle_and_writes_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    old = write_hostile_pickle(tmp_path / "old.pt", marker)
    new = tmp_path / "new.pt"
    result = CliRunner().invoke(cli, ["convert", str(old), str(new)])
    assert result.exit_code == 1 and "posix.system" in result.output and "weights_only" not in result.output
    assert not new.exists() and not marker.exists()


def test_a_quarantined_file_shows_why_it_was_set_aside(tmp_path: Path) -> None:
    path = make_checkpoint(tmp_path / "model_00100.pt", 100)
    truncate_to_fraction(path, 0.5)
    corrupt = quarantine(path, "the worker exited 4: CRC-32 mismatch in model_00100/data/3")
    result = verify(str(corrupt))
    assert result.exit_code == 1
    (line,) = lines(result)
    assert line.startswith(f"FAIL {corrupt}  not a zip archive")
    assert "[quarantined 20" in line and "the worker exited 4: CRC-32 mismatch in model_00100/data/3]" in line
    data = json.loads(verify("--json", str(corrupt)).output)
    assert data[0]["quarantine"]["reason"].startswith("the worker exited 4")


def test_many_files_share_one_probe_child(tmp_path: Path) -> None:
    """Three files, one child: the probe detail of every file says the import was paid once."""
    for step in (100, 200, 300):
        make_checkpoint(tmp_path / f"model_{step:05d}.pt", step)
    data = json.loads(verify("--json", str(tmp_path)).output)
    imports = {next(c["detail"] for c in item["checks"] if c["name"] == "load-probe") for item in data}
    assert len(imports) == 1 and "paid once per call" in imports.pop()


def test_help_documents_checks_and_exit_codes() -> None:
    result = verify("--help")
    assert result.exit_code == 0
    for words in ("zip-crc", "CRC-32", "weights_only", "--deep", "Exit status", "usage error",
                  "INCONCLUSIVE", "worker's own restore", "auto"):
        assert words in result.output


def test_console_script_plain_output_off_a_tty(tmp_path: Path) -> None:
    """The real entry point in a subprocess: exit code, no ANSI colour when piped, no traceback."""
    flipped = tmp_path / "model_00100.pt"
    make_checkpoint(flipped, 100)
    flip_byte_in_tensor_data(flipped)
    completed = subprocess.run(
        [sys.executable, "-m", "supervisor.cli", "verify", str(flipped), str(tmp_path / "missing.pt")],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert completed.returncode == 1
    assert "\x1b[" not in completed.stdout and "Traceback" not in completed.stdout + completed.stderr
    out = completed.stdout.splitlines()
    assert len(out) == 2 and out[0].startswith(f"FAIL {flipped}  CRC-32 mismatch") and out[1].endswith("no such file")


def test_the_worst_verdict_decides_the_exit_code() -> None:
    from supervisor.checkpoints.checkpoint_validation import ValidationResult
    from supervisor.commands.verify_cmd import exit_code

    ok = ValidationResult("a", ok=True)
    failed = ValidationResult("b", ok=False, reason="CRC-32 mismatch")
    unjudged = ValidationResult("c", ok=False, reason="timed out", inconclusive=True)
    newer = ValidationResult("d", ok=False, reason="format_version 2", unsupported_format_version=2)
    empty = ValidationResult("e", ok=False, reason="no checkpoint yet", no_checkpoint=True)
    assert exit_code([ok]) == 0 and exit_code([]) == 1
    assert exit_code([ok, empty]) == 5
    assert exit_code([ok, empty, unjudged]) == 3
    assert exit_code([ok, empty, unjudged, newer]) == 4
    assert exit_code([ok, empty, unjudged, newer, failed]) == 1
