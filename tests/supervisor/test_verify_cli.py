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
from pathlib import Path
from typing import Callable

import pytest
import torch
from click.testing import CliRunner

from supervisor.cli import cli
from tests.checkpoint_factory import (
    TINY,
    flip_byte_in_tensor_data,
    make_checkpoint,
    make_checkpoint_dict,
    truncate_to_fraction,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]


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
    assert " probe " in line and line.endswith("s")


def test_malicious_pickle_fails_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "model_00100.pt"
    torch.save({"model": Exploit()}, path)
    result = verify(str(path))
    assert result.exit_code == 1
    assert "refused by the weights_only unpickler" in result.output
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
    assert "30% of the median size of its 2 sibling checkpoint(s)" in lines(bad)[2]


def test_directory_without_checkpoints_and_missing_path_fail_with_exit_1(tmp_path: Path) -> None:
    empty_dir = verify(str(tmp_path))
    assert empty_dir.exit_code == 1
    assert lines(empty_dir) == [f"FAIL {tmp_path}  directory holds no model_*.pt checkpoint"]
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


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert verify().exit_code == 2
    assert verify("--timeout", "0", str(tmp_path)).exit_code == 2
    assert verify("--no-such-option", str(tmp_path)).exit_code == 2


def test_help_documents_checks_and_exit_codes() -> None:
    result = verify("--help")
    assert result.exit_code == 0
    for words in ("zip-crc", "CRC-32", "weights_only", "--deep", "Exit status", "usage error"):
        assert words in result.output


def test_console_script_plain_output_off_a_tty(tmp_path: Path) -> None:
    """The real entry point in a subprocess: exit code, no ANSI colour when piped, no traceback."""
    flipped = tmp_path / "model_00100.pt"
    make_checkpoint(flipped, 100)
    flip_byte_in_tensor_data(flipped)
    completed = subprocess.run(
        [sys.executable, "-m", "supervisor.cli", "verify", str(flipped), str(tmp_path / "missing.pt")],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 1
    assert "\x1b[" not in completed.stdout and "Traceback" not in completed.stdout + completed.stderr
    out = completed.stdout.splitlines()
    assert len(out) == 2 and out[0].startswith(f"FAIL {flipped}  CRC-32 mismatch") and out[1].endswith("no such file")
