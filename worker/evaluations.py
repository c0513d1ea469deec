"""What runs between optimizer steps and reads the model without training it.

Validation loss, HellaSwag accuracy and text samples, each on its own interval and at the last
step, each under a heartbeat phase (``eval`` / ``generate``) so the supervisor's eval timeout
applies. None of them may change the training: no draw from the training RNG (samples come from a
private ``torch.Generator`` seeded ``42 + rank``), the train loader untouched (validation has its
own loader, reset each time), the model back in train mode, autocast as it was. HellaSwag and
samples use the raw (uncompiled, unwrapped) model, so both also run under ``--compile``: their
varying shapes would only make the compiled one recompile.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from shared.vocabulary import Phase
from worker import hellaswag
from worker.data.shards import ShardedTokenLoader, cache_root
from worker.runtime.distributed import Distributed
from worker.runtime.telemetry import HeartbeatWriter, RunLogger

SAMPLE_SEQUENCES = 4
SAMPLE_TOKENS = 32
SAMPLE_TOP_K = 50
SAMPLE_SEED = 42  # + rank: build-nanogpt's sampling generator


def is_due(interval: int, step: int, last_step: bool) -> bool:
    return interval > 0 and (step % interval == 0 or last_step)


@contextlib.contextmanager
def timed_phase(heartbeat: HeartbeatWriter, phase: Phase) -> Iterator[None]:
    """Beat the phase change, and afterwards how long it took (``eval_seconds``)."""
    heartbeat.beat(phase=phase)
    started = time.perf_counter()
    yield
    heartbeat.beat(phase=Phase.TRAIN, eval_seconds=round(time.perf_counter() - started, 3))


@dataclass
class Schedule:
    eval_interval: int
    hellaswag_interval: int
    generate_interval: int
    val_steps: int
    generate_prompt: str


class Evaluations:
    """The three activities of build-nanogpt's loop, called once per step by ``train``."""

    def __init__(self, schedule: Schedule, dist: Distributed, model: Any, raw_model: Any,
                 val_loader: ShardedTokenLoader | None, heartbeat: HeartbeatWriter, run_log: RunLogger,
                 say: Callable[[str], None], autocast: Callable[[], Any], progress: Any,
                 hellaswag_examples: list[hellaswag.Example] | None) -> None:
        self.schedule = schedule
        self.dist = dist
        self.model = model  # what trains: maybe compiled, maybe DDP-wrapped (fixed shapes: validation)
        self.raw_model = raw_model  # the plain GPT: HellaSwag and samples
        self.val_loader = val_loader
        self.heartbeat = heartbeat
        self.run_log = run_log
        self.say = say
        self.autocast = autocast
        self.hellaswag_examples = hellaswag_examples
        self.progress = progress  # TrainProgress: the newest val loss is part of the checkpoint
        self._encoding: Any = None

    @property
    def encoding(self) -> Any:
        if self._encoding is None:
            from shared.tokenizer import get_gpt2_encoding

            self._encoding = get_gpt2_encoding()
        return self._encoding

    def after_step(self, step: int, last_step: bool) -> dict[str, Any]:
        """Run what is due after ``step``; returns the figures for that step's metrics.jsonl record."""
        s = self.schedule
        measured: dict[str, Any] = {}
        if self.val_loader is not None and is_due(s.eval_interval, step, last_step):
            with timed_phase(self.heartbeat, Phase.EVAL):
                self.progress.val_loss = self.validation_loss()
            self.say(f"validation loss: {self.progress.val_loss:.4f}")
            self.run_log.log_line(f"{step} val {self.progress.val_loss:.4f}")
            measured["val_loss"] = self.progress.val_loss
        if self.hellaswag_examples and is_due(s.hellaswag_interval, step, last_step):
            with timed_phase(self.heartbeat, Phase.EVAL):
                result = self.hellaswag()
            self.say(f"HellaSwag accuracy: {result.correct}/{result.total}={result.accuracy:.4f}")
            self.run_log.log_line(f"{step} hella {result.accuracy:.4f}")
            measured.update(hellaswag=result.accuracy, hellaswag_correct=result.correct, hellaswag_total=result.total)
        if step > 0 and is_due(s.generate_interval, step, last_step):
            with timed_phase(self.heartbeat, Phase.GENERATE):
                lines = self.samples()
            for line in lines:
                self.say(line)
                self.run_log.sample_line(f"{step} {line}")
        return measured

    def validation_loss(self) -> float:
        assert self.val_loader is not None
        model = self.model
        model.eval()
        self.val_loader.reset()
        with torch.no_grad():
            total = torch.zeros((), device=self.dist.device)
            for _ in range(self.schedule.val_steps):
                x, y = self.val_loader.next_batch()
                with self.autocast():
                    _, loss = model(x.to(self.dist.device), y.to(self.dist.device))
                total += loss.detach() / self.schedule.val_steps
        self.dist.mean_(total)
        model.train()
        return total.item()

    def hellaswag(self) -> hellaswag.HellaSwagResult:
        assert self.hellaswag_examples is not None
        return hellaswag.evaluate(
            self.raw_model, self.hellaswag_examples, self.encoding.encode_ordinary, device=self.dist.device,
            rank=self.dist.rank, world_size=self.dist.world_size, autocast=self.autocast,
            all_reduce_sum=self.dist.sum_)

    def samples(self) -> list[str]:
        """build-nanogpt's samples on every rank; rank 0 gets all ranks' lines (rank order)."""
        mine = generate_samples(self.raw_model, self.encoding, self.schedule.generate_prompt, self.dist.device,
                                self.dist.rank, self.autocast)
        lines = [f"rank {self.dist.rank} sample {i}: {text!r}" for i, text in enumerate(mine)]
        return self.dist.gather_lines(lines)


def generate_samples(model: Any, encoding: Any, prompt: str, device: str, rank: int,
                     autocast: Callable[[], Any] = contextlib.nullcontext) -> list[str]:
    """``SAMPLE_SEQUENCES`` continuations of ``prompt``, top-k sampling from a private generator.

    The generator is seeded ``SAMPLE_SEED + rank`` each time, so the samples of a step are the
    same whether or not the run was resumed, and the training RNG is never drawn from.
    """
    was_training = model.training
    model.eval()
    tokens = torch.tensor(encoding.encode_ordinary(prompt), dtype=torch.long, device=device)
    generated = tokens.unsqueeze(0).repeat(SAMPLE_SEQUENCES, 1)
    generator = torch.Generator(device=device).manual_seed(SAMPLE_SEED + rank)
    limit = min(SAMPLE_TOKENS, int(model.config.block_size))
    try:
        with torch.no_grad():
            while generated.size(1) < limit:
                with autocast():
                    logits, _ = model(generated)
                probs = F.softmax(logits[:, -1, :].float(), dim=-1)
                top_probs, top_indices = torch.topk(probs, SAMPLE_TOP_K, dim=-1)
                choice = torch.multinomial(top_probs, 1, generator=generator)
                generated = torch.cat((generated, torch.gather(top_indices, -1, choice)), dim=1)
    finally:
        model.train(was_training)
    return [encoding.decode([t for t in row.tolist() if t < encoding.n_vocab]) for row in generated]


def load_hellaswag(interval: int, path: str | None, limit: int, dist: Distributed,
                   say: Callable[[str], None]) -> list[hellaswag.Example] | None:
    """The examples every rank scores, or None (one warning) when there is no data: training goes on.

    Rank 0 finds (or downloads) the file first; the others then read the same file, and all
    ranks agree to skip the evaluation if any of them could not.
    """
    if interval <= 0:
        return None
    error: str | None = None
    found: str | None = None
    if dist.master:
        try:
            found = str(hellaswag.resolve_data(path, cache_root(), say=say))
        except hellaswag.HellaSwagUnavailable as exc:
            error = str(exc)
    found = dist.broadcast_from_master(found)
    examples = None
    if found is not None:
        try:
            examples = hellaswag.load_examples(Path(found), limit)
        except hellaswag.HellaSwagUnavailable as exc:
            error = str(exc)
    error = dist.first_given(error)
    if error is not None:
        say(f"WARNING: HellaSwag evaluation skipped: {error}")
        return None
    say(f"HellaSwag: {len(examples or [])} examples from {found}, every {interval} steps and at the last step")
    return examples
