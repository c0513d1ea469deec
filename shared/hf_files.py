"""A Hugging Face GPT-2 on disk: which files, how to read them safely, and a content fingerprint.

One job: given a path that ``--pretrained_checkpoint`` (or a test) names, say whether it is a
Hugging Face model (a directory holding ``model.safetensors``, or a bare ``.safetensors`` file),
read its tensors and ``config.json``, and fingerprint it for the run identity.

safetensors is the only format read here: a header of JSON and raw tensor bytes, nothing that can
run code (``pytorch_model.bin`` is a pickle and is refused with a one-line reason). The
``safetensors`` package is optional (``pip install 'gpt2sup[hf]'``) and imported only when
tensors are read; the header and the fingerprint need plain Python only.
"""
from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
INSTALL_HINT = "pip install 'gpt2sup[hf]'"
_MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit
_EDGE_BYTES = 1024 * 1024
_SAMPLE_BYTES = 64 * 1024
_SAMPLES = 32


class HFFileError(Exception):
    """The path is not a readable Hugging Face GPT-2; the message is the one line a user sees.

    ``missing_package`` is True when only the optional ``safetensors`` package is missing (a
    usage problem of this machine, not of the file).
    """

    def __init__(self, message: str, *, missing_package: bool = False) -> None:
        super().__init__(message)
        self.missing_package = missing_package


def looks_like_safetensors(path: Path) -> bool:
    """An 8-byte little-endian header length, then a JSON object: the safetensors signature."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(9)
            size = Path(path).stat().st_size
    except OSError:
        return False
    if len(head) < 9:
        return False
    (length,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and 0 < length <= min(_MAX_HEADER_BYTES, size - 8)


def is_hf_source(path: str | Path) -> bool:
    """A directory (a Hugging Face model directory, in any state) or a safetensors file.

    Directories are never torch.save checkpoints, so every directory is judged here and a
    directory without ``model.safetensors`` gets this module's one-line reason."""
    path = Path(path)
    return path.is_dir() or (path.is_file() and (path.suffix == ".safetensors" or looks_like_safetensors(path)))


def weights_file(path: str | Path) -> Path:
    """The safetensors file behind ``path`` (itself, or ``DIR/model.safetensors``)."""
    path = Path(path)
    if not path.is_dir():
        return path
    candidate = path / MODEL_FILE
    if candidate.is_file():
        return candidate
    if (path / f"{MODEL_FILE}.index.json").exists():
        raise HFFileError(f"{path} holds a sharded model (model.safetensors.index.json); gpt2sup reads one "
                          f"{MODEL_FILE}: save it with a larger max_shard_size")
    if (path / "pytorch_model.bin").exists():
        raise HFFileError(f"{path} holds only pytorch_model.bin, a pickle gpt2sup does not load; save it as "
                          f"safetensors (save_pretrained(..., safe_serialization=True))")
    raise HFFileError(f"{path} is a directory without {MODEL_FILE}; not a Hugging Face model")


def read_header(path: Path) -> tuple[bytes, dict[str, Any]]:
    """The raw JSON header of a safetensors file and its parsed form (tensor names, dtypes,
    shapes, offsets; ``__metadata__``)."""
    try:
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > _MAX_HEADER_BYTES:
                raise HFFileError(f"{path} is not a safetensors file (header length {length})")
            raw = handle.read(length)
    except (OSError, struct.error) as error:
        raise HFFileError(f"cannot read {path}: {getattr(error, 'strerror', None) or error}") from None
    try:
        header = json.loads(raw)
    except ValueError:
        header = None
    if not isinstance(header, dict) or len(raw) != length:
        raise HFFileError(f"{path} is not a safetensors file (damaged or cut-short header)")
    return raw, header


def read_config(path: str | Path) -> dict[str, Any] | None:
    """``config.json`` of the model directory (or beside a bare file); None when there is none."""
    path = Path(path)
    config_path = (path if path.is_dir() else path.parent) / CONFIG_FILE
    if not config_path.is_file():
        return None
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise HFFileError(f"cannot read {config_path}: {error}") from None
    if not isinstance(config, dict):
        raise HFFileError(f"{config_path} is not a JSON object")
    return config


def load_tensors(path: Path) -> dict[str, Any]:
    """Every tensor of a safetensors file, on CPU, with ``safetensors.torch.load_file`` (no pickle)."""
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise HFFileError(f"reading Hugging Face weights needs the safetensors package: {INSTALL_HINT}",
                          missing_package=True) from None
    read_header(path)  # a clear line for a file that is not safetensors at all
    try:
        return load_file(str(path), device="cpu")
    except Exception as error:  # noqa: BLE001  safetensors raises its own error types for damaged files
        text = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise HFFileError(f"cannot read {path}: {text[:300]}") from None


def fingerprint_hf_source(path: str | Path) -> dict[str, Any]:
    """A stable content hash of a Hugging Face model, reading a few MB however large it is.

    sha256 over: the safetensors header (every tensor's name, dtype, shape and byte range), the
    file size, the first and last MiB and 32 evenly spaced 64 KiB samples of the tensor bytes, and
    ``config.json`` when present. No mtime: a copied file keeps its fingerprint. Two files that
    differ only in bytes none of those samples covers would collide; a different training step
    changes every tensor, so that needs a deliberate edit.
    """
    path = Path(path).resolve()
    weights = weights_file(path)
    raw_header, _ = read_header(weights)
    size = weights.stat().st_size
    digest = hashlib.sha256()
    digest.update(raw_header)
    digest.update(str(size).encode())
    with open(weights, "rb") as handle:
        if size <= 2 * _EDGE_BYTES + _SAMPLES * _SAMPLE_BYTES:
            digest.update(handle.read())
        else:
            digest.update(handle.read(_EDGE_BYTES))
            span = size - 2 * _EDGE_BYTES - _SAMPLE_BYTES
            for index in range(_SAMPLES):
                handle.seek(_EDGE_BYTES + span * index // (_SAMPLES - 1))
                digest.update(handle.read(_SAMPLE_BYTES))
            handle.seek(size - _EDGE_BYTES)
            digest.update(handle.read(_EDGE_BYTES))
    config_path = (path if path.is_dir() else path.parent) / CONFIG_FILE
    if config_path.is_file():
        digest.update(config_path.read_bytes())
    return {"path": str(path), "bytes": size, "content_digest": digest.hexdigest()[:16]}
