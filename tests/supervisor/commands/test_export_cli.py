"""``gpt2sup export`` end to end: real checkpoint files in, a real directory out, exit codes, one line.

In-process (click's runner) for the refusals and the directory's life cycle; one real subprocess
(marked slow) proves the installed command works and never prints a traceback.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from shared.hf_files import MODEL_FILE, load_tensors
from shared.hf_gpt2 import HF_VOCAB_SIZE
from supervisor.cli import cli
from tests.checkpoint_factory import (
    TINY,
    make_checkpoint,
    make_checkpoint_dict,
    make_guide_checkpoint,
    write_hostile_pickle,
)

PROJECT_ROOT = Path(__file__).resolve().parents[3]
EXPORTED_FILES = {"config.json", "generation_config.json", MODEL_FILE, "vocab.json", "merges.txt",
                  "tokenizer_config.json", "special_tokens_map.json"}


def export(*args: str):
    result = CliRunner().invoke(cli, ["export", *map(str, args)])
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def error_lines(result) -> list[str]:
    return [line for line in result.output.splitlines() if line.startswith("gpt2sup export:")]


def leftovers(parent: Path) -> list[str]:
    """Temporary or set-aside directories an export must never leave behind."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ck") / "model_00100.pt", 100)


def test_export_writes_the_directory_and_reports_it_in_one_line(tmp_path: Path, checkpoint: Path) -> None:
    result = export(checkpoint, tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert {p.name for p in (tmp_path / "out").iterdir()} == EXPORTED_FILES
    assert result.output.strip().splitlines() == [result.output.strip()]
    assert "(step 100)" in result.output and "tensors" in result.output
    assert leftovers(tmp_path) == []
    original = torch.load(checkpoint, weights_only=True)["model"]
    written = load_tensors(tmp_path / "out" / MODEL_FILE)
    assert torch.equal(written["transformer.wte.weight"], original["transformer.wte.weight"][:HF_VOCAB_SIZE])
    assert torch.equal(written["transformer.h.0.attn.c_attn.weight"], original["transformer.h.0.attn.c_attn.weight"].t())
    assert json.loads((tmp_path / "out" / "config.json").read_text())["n_positions"] == TINY["block_size"]


def test_an_existing_outdir_is_refused_untouched_and_force_replaces_it_whole(tmp_path: Path, checkpoint: Path) -> None:
    outdir = tmp_path / "out"
    outdir.mkdir()
    (outdir / "mine.txt").write_text("keep me")
    refused = export(checkpoint, outdir)
    assert refused.exit_code == 2 and len(error_lines(refused)) == 1 and "--force" in refused.output
    assert [p.name for p in outdir.iterdir()] == ["mine.txt"]

    replaced = export(checkpoint, outdir, "--force")
    assert replaced.exit_code == 0, replaced.output
    assert {p.name for p in outdir.iterdir()} == EXPORTED_FILES  # the old contents are gone, not merged
    assert leftovers(tmp_path) == []

    empty = tmp_path / "empty"
    empty.mkdir()
    assert export(checkpoint, empty).exit_code == 0  # an empty directory is not "existing work"


@pytest.mark.slow  # writes the file with the guide's own code in a child process
def test_a_guide_format_checkpoint_exports(tmp_path: Path) -> None:
    guide = make_guide_checkpoint(tmp_path / "guide.pt", 10)
    result = export(guide, tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / MODEL_FILE).is_file()


def _saved(path: Path, value) -> Path:
    torch.save(value, path)
    return path


def _with_model_entries(path: Path, **entries: torch.Tensor) -> Path:
    """A conforming checkpoint whose state dict gets ``entries`` added or replaced."""
    checkpoint = make_checkpoint_dict(1)
    state = dict(checkpoint["model"])
    state.update({name.replace("__", "."): tensor for name, tensor in entries.items()})
    return _saved(path, checkpoint | {"model": state})


def _garbage(path: Path) -> Path:
    path.write_bytes(b"not a zip")
    return path


@pytest.mark.parametrize(("build", "says"), [
    (lambda p: p / "missing.pt", "checkpoint not found"),
    (lambda p: _saved(p / "list.pt", [1, 2]), "not a checkpoint with a model state dict"),
    (lambda p: _saved(p / "small_vocab.pt", make_checkpoint_dict(1, TINY | {"vocab_size": 50000})),
     "smaller than GPT-2's 50257"),
    (lambda p: _with_model_entries(p / "extra.pt", transformer__h__0__attn__rope=torch.zeros(2)),
     "unexpected transformer.h.0.attn.rope"),
    (lambda p: _with_model_entries(p / "untied.pt", lm_head__weight=torch.zeros(TINY["vocab_size"], TINY["n_embd"])),
     "not tied"),
    (lambda p: _garbage(p / "garbage.pt"), "not a readable torch.save file"),
], ids=["missing", "not-a-dict", "small-vocab", "extra-tensor", "untied-head", "garbage"])
def test_a_checkpoint_without_a_gpt2_equivalent_is_one_line_exit_1_and_writes_nothing(tmp_path: Path, build, says) -> None:
    source = build(tmp_path)
    result = export(source, tmp_path / "out")
    assert result.exit_code == 1, result.output
    lines = error_lines(result)
    assert len(lines) == 1 and says in lines[0], result.output
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_a_hostile_pickle_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    result = export(write_hostile_pickle(tmp_path / "evil.pt", marker), tmp_path / "out")
    assert result.exit_code == 1 and "refused" in error_lines(result)[0]
    assert not marker.exists() and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_the_real_command_exports_refuses_and_documents_its_exit_codes(tmp_path: Path, checkpoint: Path) -> None:
    def gpt2sup(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "supervisor.cli", *args], cwd=PROJECT_ROOT,
                              capture_output=True, text=True, timeout=300, check=False)

    done = gpt2sup("export", str(checkpoint), str(tmp_path / "out"))
    assert done.returncode == 0 and done.stderr == "", done.stderr
    again = gpt2sup("export", str(checkpoint), str(tmp_path / "out"))
    assert again.returncode == 2 and again.stderr.strip().splitlines() == [
        f"gpt2sup export: {tmp_path / 'out'} exists and is not empty; pass --force to replace it"]
    missing = gpt2sup("export", str(tmp_path / "nope.pt"), str(tmp_path / "out2"))
    assert missing.returncode == 1 and missing.stderr.strip().splitlines() == [
        f"gpt2sup export: checkpoint not found: {tmp_path / 'nope.pt'}"]
    helped = gpt2sup("export", "--help")
    assert helped.returncode == 0 and "Exit status:" in helped.stdout and "--force" in helped.stdout
    assert "export" in gpt2sup("--help").stdout
