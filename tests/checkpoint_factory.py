"""Build real, conforming checkpoints for tests (docs/checkpoints.md), without the worker.

The worker is written by another team in parallel; the validation tests must not depend on it,
yet they must exercise the same bytes the worker will write. So this factory assembles the
checkpoint dict from the real ingredients: a state_dict whose names and shapes come from
``expected_model_shapes`` (``lm_head.weight`` *is* ``transformer.wte.weight``, one tensor, as a
tied GPT's state_dict has), a real ``torch.optim.AdamW`` stepped once with build-nanogpt's
decay / no-decay parameter groups, and RNG states taken from torch / numpy / ``random`` and
converted to the plain types ``torch.load(weights_only=True)`` accepts. Saved with ``torch.save``
(zip format), exactly as the worker saves.

Helpers below also damage files in the specific ways the tests need (flip a byte inside a tensor's
stored bytes, truncate), so each test reads as "make a good file, break it one way, verify".
"""
from __future__ import annotations

import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shared.checkpoint_format import FORMAT_VERSION, expected_model_shapes

# Small enough that a file is ~20 MB and a save takes a fraction of a second.
TINY: dict[str, Any] = {
    "block_size": 64,
    "vocab_size": 50304,
    "n_layer": 2,
    "n_head": 2,
    "n_embd": 32,
    "dropout": 0.0,
}

TIED_NAME = "lm_head.weight"
TIED_TO = "transformer.wte.weight"


def make_state_dict(config: dict[str, Any], *, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random fp32 tensors with exactly the expected names and shapes, head tied to wte."""
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for name, shape in expected_model_shapes(config).items():
        if name == TIED_NAME:
            state[name] = state[TIED_TO]  # same tensor object: the tie survives torch.save
        else:
            state[name] = torch.randn(shape, generator=generator) * 0.02
    return state


def named_parameters_of(state: dict[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    """What ``model.named_parameters()`` yields: state_dict order, the tied head only once."""
    return [(name, tensor) for name, tensor in state.items() if name != TIED_NAME]


def make_optimizer_state(
    state: dict[str, torch.Tensor], *, stepped: bool = True, grouping: str = "nanogpt"
) -> dict[str, Any]:
    """A real AdamW's ``state_dict()`` over the model's parameters.

    ``grouping="nanogpt"``: build-nanogpt's ``configure_optimizers`` (weight decay on >= 2-D
    params, none on the rest: two groups). ``grouping="single"``: one group in
    ``named_parameters()`` order. ``stepped`` runs one step so exp_avg / exp_avg_sq exist.
    """
    params = [(name, tensor.clone().requires_grad_(True)) for name, tensor in named_parameters_of(state)]
    if grouping == "nanogpt":
        groups = [
            {"params": [p for _, p in params if p.dim() >= 2], "weight_decay": 0.1},
            {"params": [p for _, p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
    elif grouping == "single":
        groups = [{"params": [p for _, p in params], "weight_decay": 0.1}]
    else:
        raise ValueError(f"unknown grouping {grouping!r}")
    optimizer = torch.optim.AdamW(groups, lr=6e-4, betas=(0.9, 0.95), eps=1e-8)
    if stepped:
        generator = torch.Generator().manual_seed(1)
        for _, p in params:
            p.grad = torch.randn(p.shape, generator=generator)
        optimizer.step()
    return optimizer.state_dict()


def rng_states() -> dict[str, Any]:
    """The four RNG states, as weights_only-safe types (tensors, ints, strings, tuples)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "rng_state": torch.get_rng_state(),
        "cuda_rng_state": None,  # CPU-only machine; the worker stores the CUDA state when it has one
        "numpy_rng_state": (str(kind), torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
        "python_rng_state": (int(version), tuple(int(x) for x in internal), gauss_next),
    }


def make_checkpoint_dict(
    step: int,
    config: dict[str, Any] = TINY,
    *,
    with_optimizer: bool = True,
    grouping: str = "nanogpt",
    seed: int = 0,
) -> dict[str, Any]:
    """The checkpoint dict the worker saves; ``with_optimizer=False`` leaves AdamW unstepped."""
    model = make_state_dict(config, seed=seed)
    checkpoint: dict[str, Any] = {
        "model": model,
        "optimizer": make_optimizer_state(model, stepped=with_optimizer, grouping=grouping),
        "config": dict(config),
        "step": int(step),
        "val_loss": 4.25,
        "train_loader_state": {"shard_index": 0, "position": 123456},
        **rng_states(),
        "format_version": FORMAT_VERSION,
        "train_config": {"max_steps": 1000, "checkpoint_interval": 100},
    }
    return checkpoint


def make_checkpoint(
    path: str | Path,
    step: int,
    config: dict[str, Any] = TINY,
    with_optimizer: bool = True,
    **kwargs: Any,
) -> Path:
    """Write a real conforming checkpoint to ``path`` with ``torch.save``; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(make_checkpoint_dict(step, config, with_optimizer=with_optimizer, **kwargs), path)
    return path


def resave_with_format_version(path: str | Path, version: int) -> Path:
    """Re-save a real checkpoint as a newer gpt2sup would write it: the same contents with a higher
    ``format_version``, written by the worker's own save function (every zip CRC-32 valid). Not
    damage: every check but the version would pass."""
    from shared.checkpoint_loading import load_checkpoint
    from worker.checkpointing.checkpoint_write import save_checkpoint_file

    path = Path(path)
    checkpoint = load_checkpoint(path)
    checkpoint["format_version"] = int(version)
    save_checkpoint_file(checkpoint, path)
    return path


# --- ways to break a file ------------------------------------------------------------------------

class _ShellCommand:
    """Pickles as a call of ``os.system(command)``: what a hostile checkpoint would do on load."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple:
        import os

        return (os.system, (self.command,))


def write_hostile_pickle(path: str | Path, marker: str | Path) -> Path:
    """A zip-valid torch.save file whose pickle would ``touch marker`` if anything ran it."""
    path = Path(path)
    torch.save({"model": _ShellCommand(f"touch {marker}"), "step": 100}, path)
    return path


def tensor_data_span(path: str | Path) -> tuple[str, int, int]:
    """(member name, absolute offset of its first byte, length) of the largest ``*/data/*`` member.

    torch.save stores tensor bytes uncompressed, so the member's bytes sit verbatim in the file
    right after its local header; the offset comes from parsing that header ourselves.
    """
    with zipfile.ZipFile(path) as archive:
        members = [info for info in archive.infolist() if "/data/" in info.filename]
        info = max(members, key=lambda item: item.file_size)
    with open(path, "rb") as handle:
        handle.seek(info.header_offset)
        header = handle.read(30)
        assert header[:4] == b"PK\x03\x04", "not a local file header"
        name_len = int.from_bytes(header[26:28], "little")
        extra_len = int.from_bytes(header[28:30], "little")
    return info.filename, info.header_offset + 30 + name_len + extra_len, info.compress_size


def flip_byte(path: str | Path, offset: int) -> None:
    """Invert every bit of the byte at ``offset`` in place (bit rot, a bad sector)."""
    with open(path, "r+b") as handle:
        handle.seek(offset)
        value = handle.read(1)[0]
        handle.seek(offset)
        handle.write(bytes([value ^ 0xFF]))


def flip_byte_in_tensor_data(path: str | Path) -> str:
    """Flip a byte in the middle of the largest tensor's stored bytes; return the member name."""
    member, start, length = tensor_data_span(path)
    flip_byte(path, start + length // 2)
    return member


def truncate_to_fraction(path: str | Path, fraction: float = 0.5) -> None:
    """Cut the file to ``fraction`` of its size (a crash mid-copy, a full disk)."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "r+b") as handle:
        handle.truncate(int(size * fraction))


# --- checkpoints in the build-nanogpt guide's own format ----------------------------------------

# A trainer script as users have it: GPTConfig is a dataclass of the script itself (pickled as
# ``__main__.GPTConfig`` when run as ``python train_gpt2.py``), and the checkpoint dict is the
# guide's, line for line. The weights come from our GPT (same names and shapes as build-nanogpt's).
GUIDE_TRAINER_SCRIPT = '''
import json
import random
import sys
from dataclasses import asdict, dataclass

import numpy as np
import torch

from worker.model import GPT as _OurGPT, GPTConfig as _OurConfig


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50257
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768


class GPT(_OurGPT):
    def __init__(self, config):
        super().__init__(_OurConfig(**asdict(config)))
        self.config = config


class DataLoaderLite:
    def __init__(self, B, T):
        self.B, self.T = B, T
        self.current_shard, self.current_position = 0, 0

    def next_batch(self):
        self.current_position += self.B * self.T

    def get_state(self):
        return {"current_shard": self.current_shard, "current_position": self.current_position}


if __name__ == "__main__":
    out, step, sizes, position = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), json.loads(sys.argv[4])
    torch.manual_seed(1337)
    np.random.seed(1337)
    random.seed(1337)
    model = GPT(GPTConfig(**sizes))
    optimizer = model.configure_optimizers(weight_decay=0.1, learning_rate=6e-4, device_type="cpu")
    train_loader = DataLoaderLite(B=2, T=sizes["block_size"])
    x = torch.randint(0, sizes["vocab_size"], (2, sizes["block_size"]))
    _, loss = model(x, x)
    loss.backward()
    optimizer.step()
    train_loader.next_batch()
    if position is not None:
        train_loader.current_shard, train_loader.current_position = position
    val_loss = 4.5
    checkpoint = {
        "model": model.state_dict(),                    # model weights
        "optimizer": optimizer.state_dict(),             # optimizer state
        "config": model.config,                         # model config
        "step": step,                                   # training step
        "val_loss": val_loss,                          # validation loss
        "train_loader_state": train_loader.get_state(), # data loader state
        "rng_state": torch.get_rng_state(),            # PyTorch RNG state
        "cuda_rng_state": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,  # CUDA RNG state
        "numpy_rng_state": np.random.get_state(),      # NumPy RNG state
        "python_rng_state": random.getstate(),         # Python RNG state
    }
    torch.save(checkpoint, out)
'''


GUIDE_SIZES = {"block_size": 64, "vocab_size": 50304, "n_layer": 2, "n_head": 2, "n_embd": 32}


def make_guide_checkpoint(path: str | Path, step: int, *, sizes: dict[str, int] | None = None,
                          loader_position: tuple[int, int] | None = None) -> Path:
    """Write a checkpoint with the guide's exact code, run as ``__main__`` in a real child process.

    The only change to the guide's dict: ``cuda_rng_state`` is None on a machine without CUDA
    (``torch.cuda.get_rng_state()`` raises there). ``sizes`` is the GPTConfig (default
    ``GUIDE_SIZES``); ``loader_position`` overrides (current_shard, current_position).
    """
    import json
    import os
    import subprocess
    import sys

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    script = path.parent / "train_gpt2.py"
    script.write_text(GUIDE_TRAINER_SCRIPT)
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p)}
    argv = [sys.executable, str(script), str(path), str(step), json.dumps(sizes or GUIDE_SIZES),
            json.dumps(loader_position)]
    subprocess.run(argv, check=True, env=env, timeout=300, cwd=script.parent)
    script.unlink()
    return path
