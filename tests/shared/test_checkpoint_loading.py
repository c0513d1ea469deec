"""shared.checkpoint_loading: the guide's own checkpoints load, nothing in a file ever runs.

Guide-format files are written by the guide's exact code in a real child process (the trainer run
as ``__main__``), so the pickle names ``__main__.GPTConfig`` and numpy's reconstruction functions
exactly as a user's file does.
"""
from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from shared.checkpoint_format import FORMAT_VERSION
from shared.checkpoint_loading import GUIDE_FORMAT, CheckpointLoadError, load_checkpoint
from tests.checkpoint_factory import (
    make_checkpoint,
    make_checkpoint_dict,
    make_guide_checkpoint,
    write_hostile_pickle,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def guide_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_guide_checkpoint(tmp_path_factory.mktemp("guide") / "model_00010.pt", 10)


@pytest.mark.slow  # seconds of torch.load / probe children: CI runs it, the inner loop does not
def test_plain_torch_load_refuses_the_guides_file(guide_file: Path) -> None:
    # The starting point: safe loading alone cannot read what the guide's trainer writes.
    with pytest.raises(Exception, match="GPTConfig"):
        torch.load(guide_file, weights_only=True)


def test_a_guide_checkpoint_loads_normalised_to_our_format(guide_file: Path) -> None:
    checkpoint = load_checkpoint(guide_file)
    assert checkpoint["config"] == {"block_size": 64, "vocab_size": 50304, "n_layer": 2, "n_head": 2, "n_embd": 32}
    assert checkpoint["source_format"] == GUIDE_FORMAT and checkpoint["format_version"] == FORMAT_VERSION
    name, keys, pos, _has_gauss, cached = checkpoint["numpy_rng_state"]
    assert name == "MT19937" and keys.dtype == torch.int64 and keys.shape == (624,)
    assert isinstance(pos, int) and isinstance(cached, float)
    version, internal, _gauss_next = checkpoint["python_rng_state"]
    assert version == 3 and isinstance(internal, list) and len(internal) == 625
    assert checkpoint["train_loader_state"] == {"shard_index": 0, "position": 128}
    assert checkpoint["step"] == 10 and checkpoint["model"]["lm_head.weight"].shape == (50304, 32)


@pytest.mark.slow  # seconds of torch.load / probe children: CI runs it, the inner loop does not
def test_the_normalised_rng_states_restore_the_exact_generators(tmp_path: Path) -> None:
    # What the guide stored must drive numpy and random exactly as in the process that saved it.
    script = tmp_path / "save_rng.py"
    script.write_text(
        "import random, sys\nimport numpy as np\nimport torch\n"
        "np.random.seed(7); random.seed(7); np.random.rand(3); random.random()\n"
        "torch.save({'numpy_rng_state': np.random.get_state(), 'python_rng_state': random.getstate()}, sys.argv[1])\n"
        "print(np.random.rand(), random.random())\n")
    out = tmp_path / "rng.pt"
    printed = subprocess.run([sys.executable, str(script), str(out)], capture_output=True, text=True,
                             check=True, timeout=120).stdout.split()
    state = load_checkpoint(out)
    name, keys, pos, has_gauss, cached = state["numpy_rng_state"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss_next = state["python_rng_state"]
    random.setstate((version, tuple(internal), gauss_next))
    assert [repr(np.random.rand()), repr(random.random())] == printed


@pytest.mark.slow  # seconds of torch.load / probe children: CI runs it, the inner loop does not
def test_our_own_format_passes_through_unchanged(tmp_path: Path) -> None:
    path = make_checkpoint(tmp_path / "model_00100.pt", 100)
    checkpoint = load_checkpoint(path, mmap=True)
    assert "source_format" not in checkpoint and checkpoint["config"]["n_embd"] == 32
    assert checkpoint.keys() == make_checkpoint_dict(100).keys()


def test_a_hostile_pickle_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    path = write_hostile_pickle(tmp_path / "model_00100.pt", marker)
    with pytest.raises(CheckpointLoadError) as refused:
        load_checkpoint(path)
    message = str(refused.value)
    assert refused.value.refused and "posix.system" in message and "safe loading does not execute" in message
    assert "weights_only" not in message and "\x1b" not in message and "\n" not in message
    assert not marker.exists(), "loading the checkpoint executed code from it"


class GPTConfig:
    """Pickled as ``tests.shared.test_checkpoint_loading.GPTConfig``: a name the stand-in answers.

    Its pickle calls the class with a shell command as argument; loading must reach only our
    stand-in, which records nothing from it.
    """

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (GPTConfig, (self.command,))


def test_a_file_naming_gptconfig_cannot_run_code_through_the_stand_in(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    path = tmp_path / "x.pt"
    torch.save({"config": GPTConfig(f"touch {marker}")}, path)
    loaded = load_checkpoint(path)
    assert loaded["config"] == {} and not marker.exists()


def test_a_numpy_object_array_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "objects.pt"
    torch.save({"numpy_rng_state": np.array([1, "two"], dtype=object), "config": {}}, path)
    with pytest.raises(CheckpointLoadError) as refused:
        load_checkpoint(path)
    assert "numpy array of type" in str(refused.value) or "cannot rebuild" in str(refused.value)


def test_numpy_scalars_become_python_numbers(tmp_path: Path) -> None:
    path = tmp_path / "scalar.pt"
    torch.save({"val_loss": np.float64(3.25), "step": np.int64(7), "rng": np.arange(4, dtype=np.uint8)}, path)
    loaded = load_checkpoint(path)
    assert loaded["val_loss"] == 3.25 and isinstance(loaded["val_loss"], float)
    assert loaded["step"] == 7 and isinstance(loaded["step"], int)
    assert torch.equal(loaded["rng"], torch.arange(4, dtype=torch.uint8))


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 not really", b"\x80\x04K\x01."])
def test_unreadable_files_raise_one_line(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointLoadError) as failed:
        load_checkpoint(path)
    assert not failed.value.refused and "\n" not in str(failed.value)


def test_loading_module_does_not_import_torch_until_called() -> None:
    code = "import sys, shared.checkpoint_loading; assert 'torch' not in sys.modules and 'numpy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, check=True, timeout=60)
