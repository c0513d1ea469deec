"""Dolly-15k instruction data for ``worker.finetune_dolly``: template, masking, packing, loaders.

Each record (``instruction``, ``context``, ``response``, ``category``) becomes one text::

    ### Instruction:
    {instruction}

    ### Context:            <- only when the record has a context
    {context}

    ### Response:
    {response}<|endoftext|>

Everything up to and including ``### Response:\\n`` is the prompt; only the response's tokens
(and the closing ``<|endoftext|>``, so the model learns to stop) are trained on: a prompt token's
target is ``-100``, which the model's cross-entropy ignores. Examples are packed end to end into
one token stream (no padding is wasted; attention may see the previous example, as in
pre-training across documents), and a :class:`PackedExamplesLoader` reads it with the
pre-training loader's addressing, so its state (``{"shard_index": 0, "position": p}``) is
checkpointed, validated and resumed exactly like pre-training's.

The validation split is held out by a fixed seed (:data:`SPLIT_SEED`): the same records every
run, whatever ``--seed`` says.
"""
from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from worker.data.datasets import DatasetUnavailable, MalformedRecord, read_jsonl_records
from worker.data.shards import DataError, ShardedTokenLoader, _Shard

IGNORE_INDEX = -100  # F.cross_entropy's default ignore_index
SPLIT_SEED = 20230412  # Dolly-15k's release date: a fixed split, independent of --seed
DOLLY_URL = "https://huggingface.co/datasets/databricks/databricks-dolly-15k/resolve/main/databricks-dolly-15k.jsonl"
DOLLY_CACHE_NAME = "databricks-dolly-15k.jsonl"
DEFAULT_VAL_FRACTION = 0.05  # held out when --val_fraction is not given, raised if too few tokens
# The fine-tune's text samples: an instruction in the training template, not pre-training's
# "Hello, I'm a language model," (a fine-tuned model is asked questions).
SAMPLE_INSTRUCTION = "Give three tips for staying healthy."


@dataclass(frozen=True)
class InstructionExample:
    instruction: str
    context: str
    response: str
    category: str = ""


def prompt_text(example: InstructionExample) -> str:
    """The template up to the response (the part that is never trained on)."""
    parts = [f"### Instruction:\n{example.instruction.strip()}\n\n"]
    if example.context.strip():
        parts.append(f"### Context:\n{example.context.strip()}\n\n")
    parts.append("### Response:\n")
    return "".join(parts)


def sample_prompt() -> str:
    """The template up to the response, for :data:`SAMPLE_INSTRUCTION`: the model writes the answer."""
    return prompt_text(InstructionExample(SAMPLE_INSTRUCTION, "", ""))


def load_dolly(path: Path) -> list[InstructionExample]:
    """Every record of a Dolly-format jsonl; a malformed one is a :class:`DataError` naming its line."""
    examples = []
    try:
        for where, record in read_jsonl_records(path):
            if not all(isinstance(record.get(k), str) for k in ("instruction", "response")):
                raise MalformedRecord(f"{where}: needs string fields 'instruction' and 'response'")
            context = record.get("context") or ""
            if not isinstance(context, str):
                raise MalformedRecord(f"{where}: 'context' must be a string")
            examples.append(InstructionExample(record["instruction"], context, record["response"],
                                               str(record.get("category") or "")))
    except (MalformedRecord, DatasetUnavailable) as exc:
        raise DataError(str(exc)) from None
    if not examples:
        raise DataError(f"{path} holds no instruction examples")
    return examples


def split_train_val(examples: list[InstructionExample], val_fraction: float
                    ) -> tuple[list[InstructionExample], list[InstructionExample]]:
    """A fixed shuffle (:data:`SPLIT_SEED`); the first ``ceil(fraction * n)`` (at least 1) are held out."""
    if len(examples) < 2:
        raise DataError(f"{len(examples)} example(s): at least 2 are needed (one to train on, one held out)")
    order = _split_order(len(examples))
    held_out = held_out_count(len(examples), val_fraction)
    return [examples[i] for i in order[held_out:]], [examples[i] for i in order[:held_out]]


def held_out_count(n: int, val_fraction: float) -> int:
    return min(n - 1, max(1, math.ceil(val_fraction * n)))


def _split_order(n: int) -> list[int]:
    order = list(range(n))
    random.Random(SPLIT_SEED).shuffle(order)
    return order


def working_val_fraction(examples: list[InstructionExample], encode: Callable[[str], list[int]],
                         needed_tokens: int, at_least: float = DEFAULT_VAL_FRACTION) -> float | None:
    """The smallest fraction (3 decimals, not below ``at_least``) whose held-out split packs into at
    least ``needed_tokens`` tokens (one validation batch); None if even half the examples do not.

    Why: the 5% default holds out 10 records of a 200-record file, fewer tokens than one batch of
    a default model; the default adapts, and an explicit value that fails is told the one that works.
    """
    n = len(examples)
    if n < 2:
        return None
    order = _split_order(n)
    start = held_out_count(n, at_least)
    total = 0
    for count, index in enumerate(order[:max(start, n // 2)], 1):
        example = examples[index]
        total += len(encode(prompt_text(example))) + len(encode(example.response.strip())) + 1
        if count >= start and total >= needed_tokens:
            fraction = max(at_least, math.ceil(count / n * 1000) / 1000)
            while held_out_count(n, fraction) < count:  # ceil(f * n) must reach count despite rounding
                fraction += 0.001
            return round(fraction, 3)
    return None


@dataclass(frozen=True)
class PackedTokens:
    tokens: np.ndarray  # int64, every example's prompt + response + <|endoftext|>, end to end
    trained: np.ndarray  # bool, same length: True where the token is part of a response


def pack(examples: list[InstructionExample], encode: Callable[[str], list[int]], eot: int) -> PackedTokens:
    tokens: list[int] = []
    trained: list[bool] = []
    for example in examples:
        prompt = encode(prompt_text(example))
        response = [*encode(example.response.strip()), eot]
        tokens += prompt + response
        trained += [False] * len(prompt) + [True] * len(response)
    return PackedTokens(np.asarray(tokens, dtype=np.int64), np.asarray(trained, dtype=bool))


def targets_of(tokens: torch.Tensor, trained: torch.Tensor) -> torch.Tensor:
    """``y`` for ``x = tokens[:-1]``: the next token where it is a response token, else ignored."""
    return torch.where(trained[1:], tokens[1:], torch.full_like(tokens[1:], IGNORE_INDEX))


class PackedExamplesLoader(ShardedTokenLoader):
    """The pre-training loader over one in-memory packed stream, with prompt targets masked.

    Same addressing, wrapping and state as :class:`worker.data.shards.ShardedTokenLoader` (one "shard"),
    so checkpoints, the probe's loader check and resume need nothing new.
    """

    def __init__(self, packed: PackedTokens, split: str, micro_batch_size: int, seq_len: int, rank: int = 0,
                 world_size: int = 1, grad_accum_steps: int = 1) -> None:
        self._configure(split, micro_batch_size, seq_len, rank, world_size, grad_accum_steps)
        self._packed = packed
        self._trained = torch.from_numpy(packed.trained)
        self._use_shards([_Shard(Path(f"dolly {split}"), int(packed.tokens.shape[0]))])
        self._tokens = packed.tokens
        self._mapped_index = 0
        self.reset()

    def _current_tokens(self) -> np.ndarray:
        return self._packed.tokens

    def _targets(self, window: torch.Tensor, start: int) -> torch.Tensor:
        return targets_of(window, self._trained[start : start + window.shape[0]])

    def _release_consumed_pages(self) -> None:
        """In memory: nothing is mapped."""
