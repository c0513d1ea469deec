"""Write a checkpoint's model as a Hugging Face GPT-2 directory (``gpt2sup export``).

The directory is what ``GPT2LMHeadModel.from_pretrained(DIR)`` and
``AutoTokenizer.from_pretrained(DIR)`` read, offline: ``config.json``, ``generation_config.json``,
``model.safetensors`` (HF's layout: ``shared.hf_gpt2.to_hf_state_dict``) and the tokenizer files
derived from the packaged rank table (``shared.hf_tokenizer``).

Atomic enough for a directory: everything is written into a fresh temporary directory next to
OUTDIR (same file system), each file fsynced, then renamed to OUTDIR in one step. A failure at
any point leaves no half-written OUTDIR, only nothing (the temporary directory is removed). With
``force`` an existing OUTDIR is first renamed aside and removed after the new one is in place.
torch and safetensors are imported by the caller's call, never at import time.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.atomic_io import fsync_path
from shared.hf_files import (
    CONFIG_FILE,
    GENERATION_CONFIG_FILE,
    INSTALL_HINT,
    MODEL_FILE,
)
from shared.hf_gpt2 import generation_config_dict, hf_config_dict, to_hf_state_dict
from shared.hf_tokenizer import write_tokenizer_files


class ExportError(Exception):
    """The export cannot be written; the message is one line. ``usage`` marks the caller's
    mistakes (exit 2) as opposed to an unusable checkpoint or a failed write (exit 1)."""

    def __init__(self, message: str, *, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage


@dataclass(frozen=True)
class ExportResult:
    outdir: Path
    files: list[str]
    tensors: int
    parameters: int


def outdir_is_free(outdir: Path) -> bool:
    """Nothing there, or an empty directory."""
    if not outdir.exists() and not outdir.is_symlink():
        return True
    return outdir.is_dir() and not outdir.is_symlink() and not any(outdir.iterdir())


def export_model(state: dict[str, Any], config: dict[str, Any], outdir: Path, *, force: bool = False) -> ExportResult:
    """Map ``state`` (our GPT, ``config`` its model config) and write OUTDIR (module doc).

    Raises ``shared.hf_gpt2.HFMappingError`` for weights without a GPT-2 equivalent and
    :class:`ExportError` for everything else.
    """
    if not outdir_is_free(outdir) and not force:
        raise ExportError(f"{outdir} exists and is not empty; pass --force to replace it", usage=True)
    if outdir.exists() and not outdir.is_dir():
        raise ExportError(f"{outdir} exists and is not a directory", usage=True)
    tensors = to_hf_state_dict(state, config)  # refuses before anything is written
    try:
        from safetensors.torch import save_file
    except ImportError:
        raise ExportError(f"writing model.safetensors needs the safetensors package: {INSTALL_HINT}",
                          usage=True) from None
    parent = outdir.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{outdir.name}.", suffix=".tmp", dir=parent))
    except OSError as error:
        raise ExportError(f"cannot write into {parent}: {error.strerror or error}") from None
    try:
        files = _write_all(staging, tensors, config, save_file)
        _swap_in(staging, outdir)
    except (OSError, RuntimeError, ValueError) as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise ExportError(f"cannot write {outdir}: {getattr(error, 'strerror', None) or error}") from None
    parameters = sum(int(t.numel()) for t in tensors.values())
    return ExportResult(outdir=outdir, files=files, tensors=len(tensors), parameters=parameters)


def _write_json(path: Path, value: dict[str, Any]) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")


def _write_all(staging: Path, tensors: dict[str, Any], config: dict[str, Any], save_file: Any) -> list[str]:
    hf_config = hf_config_dict(config, dtype=str(tensors["transformer.wte.weight"].dtype).removeprefix("torch."))
    _write_json(staging / CONFIG_FILE, hf_config)
    _write_json(staging / GENERATION_CONFIG_FILE, generation_config_dict())
    save_file(tensors, str(staging / MODEL_FILE), metadata={"format": "pt"})  # "pt": what HF itself writes
    files = [CONFIG_FILE, GENERATION_CONFIG_FILE, MODEL_FILE,
             *write_tokenizer_files(staging, model_max_length=int(hf_config["n_positions"]))]
    umask = _umask()
    for name in files:
        os.chmod(staging / name, 0o666 & ~umask)  # safetensors writes 0600; a model is meant to be shared
        fsync_path(staging / name)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes it 0700
    fsync_path(staging)
    return files


def _umask() -> int:
    current = os.umask(0o022)
    os.umask(current)
    return current


def _swap_in(staging: Path, outdir: Path) -> None:
    """Rename ``staging`` to ``outdir``; an existing OUTDIR (``--force``) goes aside first."""
    aside = None
    if outdir.exists():
        if not any(outdir.iterdir()):
            outdir.rmdir()
        else:
            aside = outdir.with_name(f".{outdir.name}.old-{os.getpid()}")
            os.replace(outdir, aside)
    try:
        os.replace(staging, outdir)
    except OSError:
        if aside is not None:
            os.replace(aside, outdir)  # put the previous export back
        raise
    fsync_path(outdir.absolute().parent)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
