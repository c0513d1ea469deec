"""``--pretrained_checkpoint`` from a Hugging Face GPT-2: a directory or a bare ``model.safetensors``.

Reads the tensors with safetensors only (no pickle), maps them to our layout with
``shared.hf_gpt2`` (Conv1D matrices transposed, the vocabulary padded with zero rows to the run's
``vocab_size``, the head tied) and returns what ``CheckpointManager._load_pretrained`` needs from a
checkpoint: ``{"model": state_dict, "config": our config dict}``. The run's ``--model`` decides the
architecture; a file of another one is refused there (exit 6), exactly as for a ``.pt`` file.

Which failure is which exit: the ``safetensors`` package missing is a usage error (2: install it,
``pip install 'gpt2sup[hf]'``); an unreadable file is a pretrained-source error (11: permanent, the
source is never renamed); a readable model with
no gpt2sup equivalent (another activation, an untied head, unknown tensors) is a mismatch (6),
never a reason to quarantine the file.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from shared.exit_codes import WorkerExit
from shared.hf_files import HFFileError, load_tensors, read_config, weights_file
from shared.hf_gpt2 import (
    HFMappingError,
    from_hf_state_dict,
    gpt_config_from_hf,
    infer_hf_architecture,
)
from worker.errors import WorkerError


def load_hf_pretrained(path: Path, architecture: dict[str, Any],
                       log: Callable[[str], None] = print) -> dict[str, Any]:
    """``path`` as a checkpoint dict with ``model`` (our names, padded, tied) and ``config``.

    ``config["vocab_size"]`` is the run's when the file's vocabulary fits into it (the padding is
    ours), else the file's, so the architecture check names the difference. Raises ``HFFileError``
    for an unreadable file (the manager makes it a pretrained-source error, exit 11) and ``WorkerError``
    otherwise.
    """
    try:
        weights = weights_file(path)
        hf_config = read_config(path)
        tensors = load_tensors(weights)
    except HFFileError as error:
        if error.missing_package:
            raise WorkerError(str(error), WorkerExit.USAGE) from None
        raise
    try:
        if hf_config is not None:
            config = gpt_config_from_hf(hf_config)
        else:
            config = infer_hf_architecture(tensors)
            config["n_head"] = architecture.get("n_head")
            log(f"note: {path} has no config.json; n_head is not recorded in the tensors, the run's "
                f"({config['n_head']}) is assumed")
        run_vocab = int(architecture["vocab_size"])
        padded = {**config, "vocab_size": max(run_vocab, config["vocab_size"])}
        if any(padded.get(key) != value for key, value in architecture.items()):
            return {"model": {}, "config": padded}  # check_architecture lists every difference (exit 6)
        state = from_hf_state_dict(tensors, config, run_vocab)
    except HFMappingError as error:
        raise WorkerError(f"{path} cannot start this run: {error}", WorkerExit.RUN_MISMATCH) from None
    return {"model": state, "config": padded}
