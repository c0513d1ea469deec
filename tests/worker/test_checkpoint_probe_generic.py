"""The load-probe's generic mode (``--generic``) on real files, through real probe children.

Generic mode judges a checkpoint in a format of its own (a user's training script's) without
gpt2sup's format checks: safe load, step vs. file name, tensors (finite with ``deep``). A file
whose pickle names a class we never load is INCONCLUSIVE, not damaged.
"""
from __future__ import annotations

import json
import subprocess
import sys
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from shared.vocabulary import Verdict
from supervisor.checkpoints.checkpoint_validation import (
    ProbeSession,
    probe_command,
    validate_checkpoint,
    validate_many,
)
from worker import checkpoint_probe

# Probe children import torch: the end-to-end layer, like tests/worker/test_checkpoint_probe.py.
pytestmark = pytest.mark.slow

PROJECT_ROOT = Path(__file__).resolve().parents[2]

# Saves checkpoints exactly as the build-nanogpt guide does, run as a script so that the pickle
# really names ``__main__.GPTConfig`` (and ``__main__.Weird`` for the refused file).
GUIDE_SCRIPT = '''
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


@dataclass
class GPTConfig:
    block_size: int = 16
    vocab_size: int = 32
    n_layer: int = 1
    n_head: int = 2
    n_embd: int = 8


class Weird:  # a class of the script's own, not a config: safe loading never builds it
    def __init__(self):
        self.x = 1


torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 8))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
model(torch.randn(4, 8)).sum().backward()
optimizer.step()


def checkpoint(step):
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "config": GPTConfig(),
        "step": step,
        "val_loss": None,
        "train_loader_state": {"current_position": 123},
        "rng_state": torch.get_rng_state(),
        "cuda_rng_state": None,
        "numpy_rng_state": np.random.get_state(),
        "python_rng_state": random.getstate(),
    }


out = Path(sys.argv[1])
for name, step in (("good", 20), ("wrong_step", 19)):
    (out / name).mkdir()
    torch.save(checkpoint(step), out / name / f"model_{20:05d}.pt")
(out / "weird").mkdir()
torch.save({**checkpoint(20), "extra": Weird()}, out / "weird" / "model_00020.pt")
(out / "strings").mkdir()  # a numpy array of strings: a type gpt2sup's safe loading does not rebuild
torch.save({**checkpoint(20), "tokens": np.array(["a", "b"])}, out / "strings" / "model_00020.pt")
'''


@pytest.fixture(scope="module")
def guide_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """model_00020.pt saved by the guide's code with step 20, with step 19, and with a __main__.Weird."""
    root = tmp_path_factory.mktemp("guide")
    script = root / "train.py"
    script.write_text(GUIDE_SCRIPT)
    subprocess.run([sys.executable, str(script), str(root)], check=True, timeout=300, cwd=root)
    return {name: root / name / "model_00020.pt" for name in ("good", "wrong_step", "weird", "strings")}


@pytest.fixture(scope="module")
def session() -> Iterator[ProbeSession]:
    """One default (gpt2sup-format) probe child; ``generic=True`` requests ask it for generic mode."""
    with ProbeSession(120.0) as shared:
        yield shared


def check_named(result, name: str):
    return next(check for check in result.checks if check.name == name)


def test_a_guide_checkpoint_passes_the_generic_probe_but_not_the_gpt2sup_format_probe(
        guide_files: dict[str, Path], session: ProbeSession) -> None:
    path = guide_files["good"]
    generic = validate_checkpoint(path, generic=True)  # its own `--serve --generic` child
    assert generic.ok, generic.reason
    assert generic.verdict is Verdict.VALID and not generic.inconclusive
    assert generic.step == 20 and generic.source_format == "generic"
    assert generic.config == {"block_size": 16, "vocab_size": 32, "n_layer": 1, "n_head": 2, "n_embd": 8}
    assert [c.name for c in generic.checks] == ["file", "size", "zip-crc", "load-probe", "load", "step", "tensors"]
    assert check_named(generic, "step").detail == "step 20 matches the file name"
    # 4 model tensors, 3 per parameter in AdamW (step, exp_avg, exp_avg_sq), torch RNG, numpy RNG keys.
    assert check_named(generic, "tensors").detail == "18 tensors in the file"

    # Why generic mode exists: gpt2sup's own probe judges this user's file INVALID (it would be quarantined).
    default = validate_checkpoint(path, session=session)
    assert default.verdict is Verdict.INVALID and not default.inconclusive
    assert "model state_dict does not match its config" in default.reason


def test_a_step_that_disagrees_with_the_file_name_fails(guide_files: dict[str, Path], session: ProbeSession) -> None:
    result = validate_checkpoint(guide_files["wrong_step"], session=session, generic=True)
    assert result.verdict is Verdict.INVALID and not result.inconclusive
    assert result.reason == "step 19 inside the file disagrees with its name model_00020.pt (step 20)"
    assert result.checks[-1].name == "step"


def test_a_pickle_naming_an_unknown_class_is_inconclusive_not_damaged(
        guide_files: dict[str, Path], session: ProbeSession) -> None:
    result = validate_checkpoint(guide_files["weird"], session=session, generic=True)
    assert not result.ok and result.inconclusive
    assert result.verdict is Verdict.INCONCLUSIVE
    assert result.reason.startswith("cannot judge without loading code the file names: ")
    assert "__main__.Weird" in result.reason
    assert result.checks[-1].name == "load" and not result.checks[-1].passed
    # The gpt2sup-format probe keeps calling such a file invalid, as before.
    assert validate_checkpoint(guide_files["weird"], session=session).verdict is Verdict.INVALID


def test_a_numpy_array_of_strings_is_inconclusive_not_damaged(guide_files: dict[str, Path], session: ProbeSession) -> None:
    # Nothing is wrong with the bytes: safe loading just does not rebuild such arrays. Called
    # damaged, every checkpoint of such a script would be quarantined and the run start over.
    result = validate_checkpoint(guide_files["strings"], session=session, generic=True)
    assert not result.ok and result.inconclusive and result.verdict is Verdict.INCONCLUSIVE, result.reason
    assert "numpy array of type '<U1'" in result.reason or "numpy array" in result.reason


def test_a_truncated_file_fails(guide_files: dict[str, Path], session: ProbeSession, tmp_path: Path) -> None:
    data = guide_files["good"].read_bytes()
    cut = tmp_path / "model_00020.pt"
    cut.write_bytes(data[: len(data) // 2])
    result = validate_checkpoint(cut, session=session, generic=True)
    assert not result.ok and not result.inconclusive
    assert result.verdict is Verdict.INVALID and result.checks[-1].name == "zip-crc"


def test_deep_catches_a_nan_in_a_model_tensor_that_shallow_does_not_read(
        session: ProbeSession, tmp_path: Path) -> None:
    model = torch.nn.Linear(4, 3).state_dict()
    model["weight"][1, 2] = float("nan")
    model["weight"][0, 0] = float("inf")
    path = tmp_path / "model_00005.pt"
    torch.save({"model": model, "step": 5, "notes": ["a user's own field"]}, path)
    shallow = validate_checkpoint(path, session=session, generic=True)
    assert shallow.ok, shallow.reason
    deep = validate_checkpoint(path, session=session, generic=True, deep=True)
    assert deep.verdict is Verdict.INVALID and not deep.inconclusive
    assert deep.reason == "tensor model.weight holds 2 non-finite values (NaN/inf)"


def test_a_bare_state_dict_passes(session: ProbeSession, tmp_path: Path) -> None:
    path = tmp_path / "model_00003.pt"
    torch.save(OrderedDict(torch.nn.Linear(4, 3).state_dict()), path)
    for deep in (False, True):
        result = validate_checkpoint(path, session=session, generic=True, deep=deep)
        assert result.ok, result.reason
        assert result.step == 3  # from the file name: the file holds no step
        assert check_named(result, "step").detail == "no step to compare (no int 'step' in the file)"
    assert check_named(result, "tensors").detail == "2 tensors in the file; 2 floating tensors of the state_dict finite"


def test_validate_many_and_the_single_file_cli_in_generic_mode(
        guide_files: dict[str, Path], tmp_path: Path) -> None:
    bare = tmp_path / "model_00003.pt"
    torch.save({"w": torch.ones(2), "b": torch.tensor([float("nan")])}, bare)
    good, wrong = validate_many([guide_files["good"], guide_files["wrong_step"]], generic=True)
    assert good.ok and not wrong.ok and "disagrees with its name" in wrong.reason

    completed = subprocess.run(
        [sys.executable, "-m", "worker.checkpoint_probe", "--generic", "--deep", str(bare)], cwd=PROJECT_ROOT,
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert completed.returncode == 0, completed.stderr
    (line,) = completed.stdout.strip().splitlines()
    verdict = json.loads(line)
    assert verdict["ok"] is False and verdict["inconclusive"] is False
    assert verdict["reason"] == "tensor b holds 1 non-finite values (NaN/inf)"
    assert verdict["source_format"] == "generic" and verdict["deep"] is True


def test_probe_command_and_walking_odd_structures() -> None:
    assert probe_command()[-1] == "--serve"
    assert probe_command(generic=True)[-2:] == ["--serve", "--generic"]
    looped: list = [torch.zeros(1)]
    looped.append(looped)  # a pickle can reference itself: walked once, no recursion error
    deep_nest: object = torch.zeros(1)
    for _ in range(5000):
        deep_nest = [deep_nest]
    names = [name for name, _ in checkpoint_probe._walk_tensors({"a": looped, "b": (deep_nest,)}, torch)]
    assert names[0] == "a.0" and len(names) == 2


# A user's own restore without training (``gpt2sup run --probe probe:restore``), imported in the
# probe child from the run's directory: here it rebuilds the guide's GPTConfig and rejects a
# checkpoint whose model lacks a key, the way a real restore would fail on a state dict.
USER_PROBE = '''
import torch


def restore(path):
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    missing = {"w"} - set(checkpoint["model"])
    if missing:
        raise KeyError(f"model state dict misses {sorted(missing)}")


def broken(path):
    return undefined_name  # noqa: F821 - a bug in the probe itself, not in the file
'''


def test_a_users_own_probe_runs_after_the_generic_checks_and_its_exception_rejects_the_file(tmp_path: Path) -> None:
    (tmp_path / "userprobe.py").write_text(USER_PROBE)
    good, bad = tmp_path / "good" / "model_00002.pt", tmp_path / "bad" / "model_00002.pt"
    for path, model in ((good, {"w": torch.ones(2)}), (bad, {"v": torch.ones(2)})):
        path.parent.mkdir()
        torch.save({"model": model, "step": 2}, path)

    command = probe_command(True, "userprobe:restore", tmp_path)
    assert command[-4:] == ["--user-probe", "userprobe:restore", "--user-probe-path", str(tmp_path)]
    passed = validate_checkpoint(good, generic=True, command=command)
    assert passed.ok and [c.name for c in passed.checks][-1] == "user-probe", passed.checks
    rejected = validate_checkpoint(bad, generic=True, command=command)
    assert rejected.verdict is Verdict.INVALID and not rejected.inconclusive
    assert rejected.reason == "--probe userprobe:restore could not restore it: KeyError: \"model state dict misses ['w']\""
    # Without --probe the same file passes: the generic checks know nothing of the user's model.
    assert validate_checkpoint(bad, generic=True).ok


def test_a_probe_that_cannot_be_imported_or_fails_in_its_own_code_judges_nothing(tmp_path: Path) -> None:
    # A bug in the user's probe must never quarantine their checkpoints: inconclusive, said so.
    (tmp_path / "userprobe.py").write_text(USER_PROBE)
    path = tmp_path / "model_00002.pt"
    torch.save({"model": {"w": torch.ones(2)}, "step": 2}, path)
    for spec, words in (("userprobe:broken", "failed in its own code: NameError"),
                        ("no_such_module:restore", "could not be imported: ModuleNotFoundError")):
        result = validate_checkpoint(path, generic=True, command=probe_command(True, spec, tmp_path))
        assert result.verdict is Verdict.INCONCLUSIVE and result.inconclusive, (spec, result.reason)
        assert words in result.reason and spec in result.reason
