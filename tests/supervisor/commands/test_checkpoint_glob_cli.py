"""``gpt2sup run --checkpoint-glob DIR/PATTERN``: what it sets, and every misuse as one line, exit 2,
before anything starts (the end-to-end run is in tests/supervisor/test_own_script_e2e.py)."""
from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from shared.exit_codes import SupervisorExit
from shared.run_dir import NAMING_FILE
from supervisor.commands import run_cmd

SCRIPT_TEXT = "print('a trainer')\n"


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "train.py"
    path.write_text(SCRIPT_TEXT)
    return path


def invoke(tmp_path: Path, monkeypatch, *args: str):
    monkeypatch.chdir(tmp_path)
    seen: dict = {}
    monkeypatch.setattr(run_cmd, "_supervise", lambda config: seen.setdefault("config", config) and 0)
    return CliRunner().invoke(run_cmd.run, list(args)), seen.get("config")


def test_the_globs_directory_is_the_run_directory_and_its_pattern_the_naming(tmp_path, monkeypatch, script):
    result, config = invoke(tmp_path, monkeypatch, "--checkpoint-glob", "ckpt/step_*.pt", "--", str(script))
    assert result.exit_code == 0, result.output
    assert config.log_dir == (tmp_path / "ckpt").resolve() and config.checkpoint_naming == "step_*.pt"
    # The same directory named by --log-dir too is fine; the record is written under the run's lock.
    result, config = invoke(tmp_path, monkeypatch, "--log-dir", str(tmp_path / "ckpt"),
                            "--checkpoint-glob", "ckpt/step_*.pt", "--", str(script))
    assert result.exit_code == 0 and config.log_dir == (tmp_path / "ckpt").resolve(), result.output
    assert not (tmp_path / "ckpt" / NAMING_FILE).exists()


@pytest.mark.parametrize("glob, words", [
    ("ckpt/step_*_*.pt", "exactly one '*'"),
    ("ckpt/*", "matches every file"),
    ("ckpt/final.pt", "exactly one '*'"),
    ("ck*/step_*.pt", "the directory cannot hold wildcards"),
    ("ckpt/step_?.pt", "only '*'"),
])
def test_a_glob_without_one_readable_step_is_one_line(tmp_path, monkeypatch, script, glob, words):
    result, config = invoke(tmp_path, monkeypatch, "--checkpoint-glob", glob, "--", str(script))
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == SupervisorExit.REFUSED and len(lines) == 1, result.output
    assert lines[0].startswith("gpt2sup run: --checkpoint-glob") and words in lines[0], lines
    assert config is None and not (tmp_path / "ckpt").exists()


def test_a_glob_outside_the_given_log_dir_is_refused(tmp_path, monkeypatch, script):
    result, config = invoke(tmp_path, monkeypatch, "--log-dir", "elsewhere", "--checkpoint-glob", "ckpt/step_*.pt",
                            "--", str(script))
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == SupervisorExit.REFUSED and len(lines) == 1 and "is not in --log-dir" in lines[0], \
        result.output
    assert config is None


def test_the_glob_is_for_a_script_not_for_gpt2sups_worker(tmp_path, monkeypatch):
    result, config = invoke(tmp_path, monkeypatch, "--checkpoint-glob", "log/step_*.pt", "--", "--max_steps", "3")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == SupervisorExit.REFUSED and len(lines) == 1 and "is for a script" in lines[0], \
        result.output
    assert config is None
