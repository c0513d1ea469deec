"""``gpt2sup export CHECKPOINT OUTDIR``: a checkpoint's model as a Hugging Face GPT-2 directory.

The checkpoint is read with ``shared.checkpoint_loading.load_checkpoint`` (safe loading, our
format or build-nanogpt's); only its ``model`` and ``config`` are used. The directory is written by
``supervisor.checkpoints.hf_export`` (docs/interop.md has the layout mapping and what is not carried, e.g. the
optimizer state). torch is imported only when the command runs; every failure is one line
``gpt2sup export: ...`` and an exit code, never a traceback.
"""
from __future__ import annotations

import sys
from pathlib import Path

import click

from shared.exit_codes import ExportExit, exit_status_epilog


def _fail(message: str, code: int = ExportExit.NOT_EXPORTED) -> None:
    click.echo(f"gpt2sup export: {message}", err=True)
    sys.exit(code)


@click.command(
    "export",
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=(
        exit_status_epilog(ExportExit) + "\n"
        "\b\nExamples:\n"
        "  gpt2sup export log/model_19072.pt gpt2-124M-hf\n"
        "  python -c \"from transformers import pipeline; print(pipeline('text-generation', 'gpt2-124M-hf')('Hello'))\"\n"
        "  python -m worker.train_gpt2 --model gpt2 --pretrained_checkpoint gpt2-124M-hf --log_dir finetune"
    ),
)
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("outdir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Replace OUTDIR if it exists and is not empty.")
def export(checkpoint: Path, outdir: Path, force: bool) -> None:
    """Write the model of CHECKPOINT as a Hugging Face GPT-2 directory OUTDIR.

    OUTDIR gets config.json, generation_config.json, model.safetensors (Conv1D layout, the
    vocabulary padding 50304 -> 50257 removed, the head tied to wte) and the GPT-2 tokenizer files
    (vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json), so that
    GPT2LMHeadModel.from_pretrained(OUTDIR) and AutoTokenizer.from_pretrained(OUTDIR) work offline.
    Optimizer state, step, data position and RNG states are not exported. OUTDIR appears whole or
    not at all (written next to it, then renamed).
    """
    from supervisor.checkpoints.hf_export import (
        ExportError,
        export_model,
        outdir_is_free,
    )

    if not outdir_is_free(outdir) and not force:
        _fail(f"{outdir} exists and is not empty; pass --force to replace it", ExportExit.USAGE)
    if not checkpoint.exists():
        _fail(f"checkpoint not found: {checkpoint}")
    from shared.checkpoint_loading import CheckpointLoadError, load_checkpoint
    from shared.hf_gpt2 import HFMappingError

    try:
        loaded = load_checkpoint(checkpoint)
    except (CheckpointLoadError, OSError) as error:
        _fail(f"cannot export {checkpoint}: {error}")
    if not isinstance(loaded, dict) or not isinstance(loaded.get("model"), dict) or not isinstance(loaded.get("config"), dict):
        _fail(f"cannot export {checkpoint}: not a checkpoint with a model state dict and a model config")
    try:
        result = export_model(loaded["model"], loaded["config"], outdir, force=force)
    except HFMappingError as error:
        _fail(f"cannot export {checkpoint}: {error}")
    except ExportError as error:
        _fail(str(error), ExportExit.USAGE if error.usage else ExportExit.NOT_EXPORTED)
    step = loaded.get("step")
    at = f" (step {step})" if isinstance(step, int) else ""
    click.echo(f"{checkpoint}{at} -> {result.outdir}/: {result.parameters:,} parameters in {result.tensors} tensors; "
               f"{', '.join(result.files)}")
    sys.exit(ExportExit.EXPORTED)
