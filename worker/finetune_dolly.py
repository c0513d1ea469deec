"""Instruction fine-tuning on Dolly-15k, supervised and resumed exactly like pre-training.

    python -m worker.finetune_dolly --pretrained_checkpoint log/model_00299.pt --data_path dolly.jsonl
    gpt2sup run --worker worker.finetune_dolly -- --pretrained_checkpoint log/model_00299.pt --data_path dolly.jsonl

The checkpoint guide's second loading mode: the model's weights come from
``--pretrained_checkpoint`` (one of our checkpoints, or a Hugging Face GPT-2: docs/interop.md);
optimizer, step, schedule and data start fresh. Everything else is pre-training's own code, called with another parser and another data source
(``worker.train_gpt2.main``): the step loop, the checkpoint manager, heartbeats, stop handling,
evaluations and the run identity. So ``--auto_resume`` prefers the run's own checkpoint (it
records the pretrained file's identity: a relaunch never starts over from the pretrained
weights), and a fine-tune killed mid-way resumes bit for bit. The data, template and loss mask:
``worker.data.finetune_data`` and docs/finetuning.md.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable

from shared.exit_codes import WorkerExit
from shared.tokenizer import get_gpt2_encoding
from worker.data.datasets import DatasetUnavailable, find_or_download
from worker.data.finetune_data import (
    DEFAULT_VAL_FRACTION,
    DOLLY_CACHE_NAME,
    DOLLY_URL,
    PackedExamplesLoader,
    load_dolly,
    pack,
    sample_prompt,
    split_train_val,
    working_val_fraction,
)
from worker.data.shards import DataError, cache_root
from worker.errors import WorkerError
from worker.runtime.distributed import Distributed
from worker.runtime.lifetime import end_process
from worker.train_gpt2 import (
    TrainConfig,
    TrainingData,
    accumulation_steps,
    build_arg_parser,
)
from worker.train_gpt2 import main as run_training

PROG = "finetune_dolly"
NEEDS_PRETRAINED = ("fine-tuning starts from --pretrained_checkpoint PATH (a pre-training checkpoint, or a "
                    "Hugging Face GPT-2 directory or model.safetensors)")


def build_finetune_parser() -> argparse.ArgumentParser:
    parser = build_arg_parser()
    parser.prog = "python -m worker.finetune_dolly"
    parser.description = ("Instruction fine-tuning (Dolly-15k) from --pretrained_checkpoint, with pre-training's "
                          "exact checkpoint/resume (docs/finetuning.md).")
    group = parser.add_argument_group("fine-tuning (docs/finetuning.md)")
    group.add_argument("--data_path", default=None,
                       help="Dolly-format jsonl (instruction, context, response, category); without it the cached "
                            "copy, else Dolly-15k downloaded once (default: none)")
    group.add_argument("--val_fraction", type=float, default=None,
                       help=f"share of the examples held out for validation, by a fixed seed (default: "
                            f"{DEFAULT_VAL_FRACTION}, raised as far as one validation batch needs, up to half the "
                            "examples: a small file still validates)")
    # Samples in the instruction template: a fine-tuned model answers instructions.
    parser.set_defaults(generate_prompt=sample_prompt())
    return parser


def build_dolly_data(config: TrainConfig, dist: Distributed, say: Callable[[str], None]) -> TrainingData:
    """Train and held-out loaders over the packed, masked instruction data."""
    if not config.pretrained_checkpoint:
        raise WorkerError(NEEDS_PRETRAINED, WorkerExit.USAGE)
    if config.val_fraction is not None and not 0.0 < config.val_fraction < 1.0:
        raise WorkerError("--val_fraction must be between 0 and 1", WorkerExit.USAGE)
    grad_accum_steps = accumulation_steps(config, dist, say)
    try:
        path = find_or_download(config.data_path, "--data_path", cache_root(), DOLLY_CACHE_NAME, DOLLY_URL, say=say)
    except DatasetUnavailable as exc:
        raise DataError(str(exc)) from None
    examples = load_dolly(path)
    encoding = get_gpt2_encoding()
    eot = encoding.eot_token
    B, T = config.micro_batch_size, config.seq_len
    val_batch = B * T * dist.world_size + 1
    fraction = config.val_fraction
    if fraction is None:
        working = working_val_fraction(examples, encoding.encode_ordinary, val_batch) if config.eval_interval > 0 else None
        fraction = working if working is not None else DEFAULT_VAL_FRACTION
        if fraction != DEFAULT_VAL_FRACTION:
            say(f"--val_fraction {fraction}: the default {DEFAULT_VAL_FRACTION} of {len(examples)} examples holds out "
                f"fewer tokens than one validation batch ({val_batch:,})")
    train_examples, val_examples = split_train_val(examples, fraction)
    train_tokens = pack(train_examples, encoding.encode_ordinary, eot)
    loaders = []
    for split, packed, accum in (("train", train_tokens, grad_accum_steps), ("val", None, 1)):
        if split == "val" and config.eval_interval <= 0:
            loaders.append(None)
            continue
        packed = packed if packed is not None else pack(val_examples, encoding.encode_ordinary, eot)
        needed = B * T * dist.world_size * accum + 1
        if packed.tokens.size < needed:
            what = ("the held-out split" if split == "val" else "the training split")
            hint = "use more data or lower"
            if split == "val":
                working = working_val_fraction(examples, encoding.encode_ordinary, needed)
                hint = (f"--val_fraction {working} holds out enough, or lower" if working is not None
                        else "raise --val_fraction or lower")
            raise DataError(f"{what} of {path} has {packed.tokens.size:,} tokens but one batch needs {needed:,} "
                            f"(micro_batch_size x seq_len x processes{' x accumulation' if accum > 1 else ''} + 1): "
                            f"{hint} --micro_batch_size / --seq_len")
        loaders.append(PackedExamplesLoader(packed, split, B, T, dist.rank, dist.world_size, accum))
    trained = float(train_tokens.trained.mean())
    say(f"data: {path}: {len(train_examples)} examples for training ({train_tokens.tokens.size:,} tokens, "
        f"{trained:.0%} of them response tokens trained on), {len(val_examples)} held out")
    return TrainingData(loaders[0], loaders[1], grad_accum_steps, path)


def main(argv: list[str] | None = None) -> int:
    parser = build_finetune_parser()
    if not parser.parse_args(argv).pretrained_checkpoint:  # before anything is created in --log_dir
        parser.error(NEEDS_PRETRAINED)
    return run_training(argv, parser=parser, build=build_dolly_data, prog=PROG)


if __name__ == "__main__":
    end_process(main())
