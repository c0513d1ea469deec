"""HellaSwag accuracy the way build-nanogpt measures it, during training or on any checkpoint.

    python -m worker.hellaswag CHECKPOINT [--hellaswag_path FILE] [--limit N] [--device cpu]

Each example is four rows, the context's tokens followed by one ending's tokens (``" " + ending``).
The model's loss is averaged over the ending's tokens only, and the row with the lowest average is
its answer (``acc_norm``, the completion-style figure: 0.2955 for OpenAI's GPT-2 124M on the full
validation set). In training the examples are split across ranks (example ``i`` on rank
``i % world_size``) and the counts all-reduced. Nothing here touches the training RNG, the data
loaders or the autocast state; the model is put back in train mode afterwards.

The data is the official validation jsonl (``ctx`` or ``ctx_a``/``ctx_b``, ``endings``, ``label``):
``--hellaswag_path FILE``, else the cached copy, else downloaded once into the cache when the
network allows. When none of these works the caller gets a :class:`HellaSwagUnavailable` with one
line saying why, and training goes on without the evaluation.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from worker.data.datasets import (
    DatasetUnavailable,
    MalformedRecord,
    find_or_download,
    read_jsonl_records,
)

OFFICIAL_VAL_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
CACHE_NAME = "hellaswag_val.jsonl"
ENDINGS = 4


class HellaSwagUnavailable(Exception):
    """No HellaSwag data could be found or fetched; the message is the one line a user sees."""


@dataclass(frozen=True)
class Example:
    context: str
    endings: tuple[str, ...]
    label: int


@dataclass(frozen=True)
class RenderedExample:
    tokens: torch.Tensor  # (4, T) long: context + ending, right-padded with 0
    mask: torch.Tensor  # (4, T) long: 1 on the ending's tokens, 0 on context and padding
    label: int


@dataclass(frozen=True)
class HellaSwagResult:
    correct: int
    total: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0


# ----------------------------------------------------------------------------- data


def parse_example(record: dict[str, Any], where: str) -> Example:
    """One jsonl record; ``ctx`` or else ``ctx_a`` + " " + ``ctx_b`` (the dataset's two halves)."""
    context = record.get("ctx")
    if not isinstance(context, str):
        halves = [record.get("ctx_a"), record.get("ctx_b")]
        if not all(isinstance(h, str) for h in halves):
            raise ValueError(f"{where}: no 'ctx' (nor 'ctx_a' and 'ctx_b')")
        context = f"{halves[0]} {halves[1]}".strip()
    endings = record.get("endings")
    if not isinstance(endings, list) or len(endings) != ENDINGS or not all(isinstance(e, str) for e in endings):
        raise ValueError(f"{where}: 'endings' must be a list of {ENDINGS} strings")
    label = record.get("label")
    if isinstance(label, str) and label.isdigit():
        label = int(label)
    if not isinstance(label, int) or not 0 <= label < ENDINGS:
        raise ValueError(f"{where}: 'label' must be 0-{ENDINGS - 1}")
    return Example(context, tuple(endings), label)


def load_examples(path: Path, limit: int | None = None) -> list[Example]:
    """The first ``limit`` examples of a HellaSwag jsonl file (all when ``limit`` is None or <= 0)."""
    examples: list[Example] = []
    try:
        for where, record in read_jsonl_records(path):
            if limit and limit > 0 and len(examples) >= limit:
                break
            examples.append(parse_example(record, where))
    except (MalformedRecord, DatasetUnavailable, ValueError) as exc:
        raise HellaSwagUnavailable(str(exc)) from None
    if not examples:
        raise HellaSwagUnavailable(f"{path} holds no HellaSwag examples")
    return examples


def resolve_data(explicit: str | None, cache_dir: Path, *, may_download: bool | None = None,
                 say: Callable[[str], None] = print) -> Path:
    """``--hellaswag_path``, else the cached copy, else the official file downloaded into the cache."""
    try:
        return find_or_download(explicit, "--hellaswag_path", cache_dir, CACHE_NAME, OFFICIAL_VAL_URL,
                                may_download=may_download, say=say)
    except DatasetUnavailable as exc:
        raise HellaSwagUnavailable(str(exc).replace("no data", "no HellaSwag data", 1)) from None


# ----------------------------------------------------------------------------- scoring


def render_example(example: Example, encode: Callable[[str], list[int]], block_size: int) -> RenderedExample:
    """Four rows of context + ending tokens with a mask on the ending (build-nanogpt's layout).

    A row longer than the model's context keeps its last ``block_size`` tokens (the ending and
    the end of the context): the ending is what is scored.
    """
    context = encode(example.context)
    rows, masks = [], []
    for ending in example.endings:
        ending_tokens = encode(" " + ending)
        row, mask = context + ending_tokens, [0] * len(context) + [1] * len(ending_tokens)
        rows.append(row[-block_size:])
        masks.append(mask[-block_size:])
    width = max(len(r) for r in rows)
    tokens = torch.zeros((ENDINGS, width), dtype=torch.long)
    mask = torch.zeros((ENDINGS, width), dtype=torch.long)
    for i, (row, row_mask) in enumerate(zip(rows, masks, strict=True)):
        tokens[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row_mask)] = torch.tensor(row_mask)
    return RenderedExample(tokens, mask, example.label)


def ending_losses(tokens: torch.Tensor, mask: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Per row, the mean cross-entropy of predicting the ending's tokens."""
    shift_logits = logits[..., :-1, :].contiguous().float()
    shift_tokens = tokens[..., 1:].contiguous()
    losses = F.cross_entropy(shift_logits.view(-1, shift_logits.size(-1)), shift_tokens.view(-1), reduction="none")
    losses = losses.view(tokens.size(0), -1)
    shift_mask = mask[..., 1:].contiguous().to(losses.dtype)
    return (losses * shift_mask).sum(dim=1) / shift_mask.sum(dim=1)


def predict(model: Any, example: RenderedExample, device: str, autocast: Callable[[], Any]) -> int:
    """The row whose ending the model finds most likely (lowest mean loss)."""
    tokens, mask = example.tokens.to(device), example.mask.to(device)
    with torch.no_grad(), autocast():
        logits, _ = model(tokens)
    return int(ending_losses(tokens, mask, logits).argmin().item())


def evaluate(model: Any, examples: Sequence[Example], encode: Callable[[str], list[int]], *, device: str,
             rank: int = 0, world_size: int = 1, autocast: Callable[[], Any] | None = None,
             all_reduce_sum: Callable[[torch.Tensor], None] | None = None) -> HellaSwagResult:
    """Score this rank's share of ``examples``; with ``all_reduce_sum`` the counts of every rank.

    Runs the model in eval mode and puts it back in the mode it was in: dropout off while scoring,
    and no random numbers drawn (the training RNG is untouched).
    """
    autocast = autocast or contextlib.nullcontext
    block_size = int(model.config.block_size)
    was_training = model.training
    model.eval()
    correct = total = 0
    try:
        for index, example in enumerate(examples):
            if index % world_size != rank:
                continue
            rendered = render_example(example, encode, block_size)
            correct += int(predict(model, rendered, device, autocast) == rendered.label)
            total += 1
    finally:
        model.train(was_training)
    counts = torch.tensor([correct, total], dtype=torch.long, device=device)
    if all_reduce_sum is not None:
        all_reduce_sum(counts)
    return HellaSwagResult(int(counts[0].item()), int(counts[1].item()))


# ----------------------------------------------------------------------------- one-off CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m worker.hellaswag", allow_abbrev=False,
        description="HellaSwag acc_norm of a checkpoint (build-nanogpt's completion-style method).",
    )
    p.add_argument("checkpoint", help="a checkpoint file (ours, or the build-nanogpt guide's format)")
    p.add_argument("--hellaswag_path", default=None,
                   help="HellaSwag jsonl (ctx or ctx_a/ctx_b, endings, label) (default: the cached copy, "
                        "else download the official validation set once)")
    p.add_argument("--limit", type=int, default=0, help="score only the first N examples, 0 = all (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    return p


def main(argv: Iterable[str] | None = None) -> int:
    from shared.checkpoint_loading import CheckpointLoadError, load_checkpoint
    from shared.tokenizer import get_gpt2_encoding
    from worker.data.shards import cache_root
    from worker.model import GPT, GPTConfig

    args = build_parser().parse_args(list(argv) if argv is not None else None)
    try:
        path = resolve_data(args.hellaswag_path, cache_root(), say=lambda line: print(line, file=sys.stderr))
        examples = load_examples(path, args.limit)
        checkpoint = load_checkpoint(Path(args.checkpoint))
    except HellaSwagUnavailable as exc:
        print(f"hellaswag: error: {exc}", file=sys.stderr)
        return 2
    except (CheckpointLoadError, OSError) as exc:
        print(f"hellaswag: error: cannot load {args.checkpoint}: {exc}", file=sys.stderr)
        return 2
    try:
        model = GPT(GPTConfig.from_dict(checkpoint["config"]))
        model.load_state_dict(checkpoint["model"])
    except (KeyError, TypeError, RuntimeError) as exc:
        print(f"hellaswag: error: {args.checkpoint} is not a GPT-2 checkpoint this code can load: "
              f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", file=sys.stderr)
        return 2
    model.to(args.device)
    encode = get_gpt2_encoding().encode_ordinary
    result = evaluate(model, examples, encode, device=args.device)
    print(f"HellaSwag accuracy: {result.correct}/{result.total}={result.accuracy:.4f} ({path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
