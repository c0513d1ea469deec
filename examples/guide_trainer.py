"""A user's own GPT-2-style trainer that follows the build-nanogpt checkpoint guide.

This script stands in for someone's own ``train_gpt2.py``: a small, self-contained, build-nanogpt
style trainer written by following the "checkpoint guide" step by step. It imports nothing from
gpt2sup (only torch, numpy and the standard library). It exists to show, and to test, that gpt2sup
supervises a training script it did not write, with zero changes to that script.

Everything is tiny so a step takes a few milliseconds on a CPU: a 2-layer, 2-head GPT with
``n_embd`` 32, ``block_size`` 32 and a 256-token byte-level vocabulary, trained with AdamW on a
deterministic synthetic byte corpus generated in memory (no files, no downloads).

How to run it::

    OMP_NUM_THREADS=1 python examples/guide_trainer.py --max_steps 50
    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node=2 examples/guide_trainer.py \\
        --max_steps 50 --checkpoint_interval 10 --auto_resume

What it saves (rank 0 only), in ``--log_dir`` (default ``log``):

* ``model_{step:05d}.pt`` after training step ``step`` when ``step > 0`` and
  ``step % checkpoint_interval == 0``, and after the last step. The file is a dict with the keys
  ``model``, ``optimizer``, ``config`` (the ``GPTConfig`` dataclass, pickled as
  ``__main__.GPTConfig``), ``step``, ``val_loss``, ``train_loader_state``, ``rng_state``,
  ``cuda_rng_state``, ``numpy_rng_state`` and ``python_rng_state``. It is written to
  ``model_{step:05d}.pt.tmp``, flushed, fsynced and renamed into place. ``--checkpoint_prefix``
  names them otherwise (``step_`` gives ``step_{step:05d}.pt``; supervise those with
  ``gpt2sup run --checkpoint-glob LOG_DIR/step_*.pt``).
* ``latest_checkpoint.pt``: a relative symlink to the newest saved checkpoint, replaced
  atomically after each save.
* ``log.txt``: one ``{step} train {loss:.6f}`` line per step and ``{step} val {loss:.6f}`` lines.

Steps are numbered from 0 to ``max_steps - 1``. A checkpoint of step ``N`` holds the state right
after the optimizer update of step ``N``; resuming (``--auto_resume``, or ``--resume
--checkpoint_path P``) continues at step ``N + 1`` and reproduces an uninterrupted run bit for bit
(with ``OMP_NUM_THREADS=1``): the data order is a pure function of the loader position, the
learning-rate schedule does not depend on ``--max_steps``, and all four random generators are
saved and restored. The script does no signal handling: SIGTERM simply ends it.
"""

from __future__ import annotations

import argparse
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

LATEST_LINK = "latest_checkpoint.pt"
MAX_LR = 3e-3
WARMUP_STEPS = 10
VAL_BATCHES = 4


# ----------------------------------------------------------------------------------------------
# Model


@dataclass
class GPTConfig:
    """The model architecture (pickled into every checkpoint as ``config``)."""

    block_size: int = 32
    vocab_size: int = 256
    n_layer: int = 2
    n_head: int = 2
    n_embd: int = 32
    dropout: float = 0.0


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend over the previous positions of ``x`` (B, T, C)."""
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """The feed-forward block."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the MLP to ``x``."""
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """A pre-norm transformer block."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply attention then the MLP, each with a residual connection."""
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """A tiny GPT-2 with tied input and output embeddings."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict({
            "wte": nn.Embedding(config.vocab_size, config.n_embd),
            "wpe": nn.Embedding(config.block_size, config.n_embd),
            "drop": nn.Dropout(config.dropout),
            "h": nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            "ln_f": nn.LayerNorm(config.n_embd),
        })
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return the logits for ``idx`` (B, T) and, given ``targets``, the cross-entropy loss."""
        T = idx.size(1)
        pos = torch.arange(0, T, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss


# ----------------------------------------------------------------------------------------------
# Data


def synthetic_corpus(n_bytes: int = 200_000, seed: int = 1234) -> np.ndarray:
    """Return a deterministic, learnable byte corpus: random sentences from a small word list."""
    words = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "and", "cat", "runs",
             "to", "a", "tree", "while", "bird", "sings", "in", "morning", "light", "river",
             "flows", "past", "old", "stone", "bridge", "under", "grey", "sky"]
    rng = np.random.RandomState(seed)  # a private generator: the global ones are left alone
    parts: list[str] = []
    size = 0
    while size < n_bytes:
        sentence = " ".join(words[i] for i in rng.randint(0, len(words), size=rng.randint(4, 12)))
        sentence = sentence.capitalize() + ". "
        parts.append(sentence)
        size += len(sentence)
    return np.frombuffer("".join(parts).encode("ascii")[:n_bytes], dtype=np.uint8).copy()


class DataLoaderLite:
    """Serves (x, y) batches from a token array; the batch order depends only on the position.

    The position is the global offset of the current step's first token; process ``rank`` reads
    its ``B * T`` tokens right after those of the lower ranks. So a saved position means the
    same thing on every rank, and every rank restores its own slice from it.
    """

    def __init__(self, tokens: np.ndarray, B: int, T: int, rank: int, world_size: int) -> None:
        self.tokens = torch.from_numpy(tokens.astype(np.int64))
        self.B, self.T, self.rank, self.world_size = B, T, rank, world_size
        if B * T * world_size + 1 > len(self.tokens):
            raise ValueError("the corpus is too small for this batch size")
        self.current_position = 0

    def reset(self) -> None:
        """Go back to the start of the data."""
        self.current_position = 0

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return this rank's next (inputs, targets) pair and advance the global position."""
        B, T = self.B, self.T
        start = self.current_position + self.rank * B * T
        buf = self.tokens[start:start + B * T + 1]
        x, y = buf[:-1].view(B, T), buf[1:].view(B, T)
        self.current_position += B * T * self.world_size
        if self.current_position + B * T * self.world_size + 1 > len(self.tokens):
            self.current_position = 0
        return x, y

    def get_state(self) -> dict[str, int]:
        """Return the loader's position (saved in the checkpoint as ``train_loader_state``)."""
        return {"current_position": self.current_position}

    def set_state(self, state: dict[str, int]) -> None:
        """Continue from a position returned by :meth:`get_state`."""
        self.current_position = int(state["current_position"])


# ----------------------------------------------------------------------------------------------
# Arguments, distributed setup, learning rate


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and check the command line (argparse exits 2 on a bad argument)."""
    p = argparse.ArgumentParser(description="A tiny GPT trainer following the checkpoint guide.")
    p.add_argument("--log_dir", default="log", help="where checkpoints and log.txt go")
    p.add_argument("--max_steps", type=int, default=50, help="train steps 0 .. max_steps-1")
    p.add_argument("--checkpoint_interval", type=int, default=10, help="save every N steps")
    p.add_argument("--keep_last_n_checkpoints", type=int, default=-1, help="-1 keeps all")
    p.add_argument("--checkpoint_prefix", default="model_", help="checkpoint files are PREFIX{step:05d}.pt")
    p.add_argument("--auto_resume", action="store_true", help="resume from the newest checkpoint")
    p.add_argument("--resume", action="store_true", help="resume from --checkpoint_path")
    p.add_argument("--checkpoint_path", default=None, help="the checkpoint --resume loads")
    p.add_argument("--step_sleep", type=float, default=0.0, help="seconds to sleep after a step")
    p.add_argument("--micro_batch_size", type=int, default=4, help="sequences per rank per step")
    p.add_argument("--seq_len", type=int, default=32, help="tokens per sequence (<= 32)")
    p.add_argument("--dropout", type=float, default=0.0, help="dropout probability")
    args = p.parse_args(argv)
    if args.max_steps < 1:
        p.error("--max_steps must be at least 1")
    if args.checkpoint_interval < 1:
        p.error("--checkpoint_interval must be at least 1")
    if args.keep_last_n_checkpoints != -1 and args.keep_last_n_checkpoints < 1:
        p.error("--keep_last_n_checkpoints must be -1 (keep all) or at least 1")
    if args.step_sleep < 0:
        p.error("--step_sleep must not be negative")
    if args.micro_batch_size < 1:
        p.error("--micro_batch_size must be at least 1")
    if not 1 <= args.seq_len <= GPTConfig.block_size:
        p.error(f"--seq_len must be between 1 and {GPTConfig.block_size}")
    if not 0.0 <= args.dropout < 1.0:
        p.error("--dropout must be in [0, 1)")
    if args.resume and not args.checkpoint_path:
        p.error("--resume needs --checkpoint_path")
    return args


def setup_distributed() -> tuple[bool, int, int, str]:
    """Join the process group when run under torchrun; return (ddp, rank, world_size, device)."""
    ddp = int(os.environ.get("RANK", "-1")) != -1
    if not ddp:
        return False, 0, 1, "cuda" if torch.cuda.is_available() else "cpu"
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl")
        return True, rank, world_size, f"cuda:{local_rank}"
    dist.init_process_group(backend="gloo")
    return True, rank, world_size, "cpu"


def get_lr(step: int) -> float:
    """Linear warmup, then constant (independent of --max_steps, so a resume is exact)."""
    if step < WARMUP_STEPS:
        return MAX_LR * (step + 1) / WARMUP_STEPS
    return MAX_LR


# ----------------------------------------------------------------------------------------------
# Checkpoints


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(checkpoint: dict[str, Any], log_dir: Path, step: int, prefix: str = "model_") -> Path:
    """Write ``{prefix}{step:05d}.pt`` atomically and point ``latest_checkpoint.pt`` at it."""
    path = log_dir / f"{prefix}{step:05d}.pt"
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(checkpoint, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(log_dir)
    link, tmp_link = log_dir / LATEST_LINK, log_dir / (LATEST_LINK + ".tmp")
    if tmp_link.is_symlink() or tmp_link.exists():
        tmp_link.unlink()
    os.symlink(path.name, tmp_link)  # relative target
    os.replace(tmp_link, link)
    _fsync_dir(log_dir)
    return path


def prune_checkpoints(log_dir: Path, keep: int, prefix: str = "model_") -> None:
    """Delete the oldest ``{prefix}*.pt`` (by step) so that ``keep`` remain; -1 keeps all."""
    if keep == -1:
        return
    saved = sorted((p for p in log_dir.glob(f"{prefix}*.pt") if p.stem[len(prefix):].isdigit()),
                   key=lambda p: int(p.stem[len(prefix):]))
    for old in saved[:-keep]:
        old.unlink(missing_ok=True)


def find_latest_checkpoint(log_dir: Path, prefix: str = "model_") -> Path | None:
    """The target of ``latest_checkpoint.pt`` if it exists, else the newest ``{prefix}*.pt``."""
    link = log_dir / LATEST_LINK
    if link.is_symlink() and link.exists():
        return link.resolve()
    candidates = [p for p in log_dir.glob(f"{prefix}*.pt") if p.is_file()]  # "*.pt" skips ".pt.tmp"
    if not candidates:
        return None
    return max(candidates, key=lambda p: p.stat().st_mtime)


def choose_resume_path(args: argparse.Namespace, ddp: bool, rank: int) -> str | None:
    """Decide on rank 0 which checkpoint to load and share that choice with every rank."""
    choice: list[str | None] = [None]
    if rank == 0:
        if args.resume:
            choice[0] = args.checkpoint_path
        elif args.auto_resume:
            found = find_latest_checkpoint(Path(args.log_dir), args.checkpoint_prefix)
            choice[0] = str(found) if found is not None else None
    if ddp:
        dist.broadcast_object_list(choice, src=0)
    return choice[0]


def make_checkpoint(raw_model: GPT, optimizer: torch.optim.Optimizer, step: int,
                    val_loss: float | None, train_loader: DataLoaderLite) -> dict[str, Any]:
    """Gather the state the guide saves, all captured right after step ``step``'s update."""
    return {
        "model": raw_model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "config": raw_model.config,
        "step": step,
        "val_loss": val_loss,
        "train_loader_state": train_loader.get_state(),
        "rng_state": torch.get_rng_state(),
        "cuda_rng_state": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "numpy_rng_state": np.random.get_state(),
        "python_rng_state": random.getstate(),
    }


def restore_checkpoint(path: str, raw_model: GPT, optimizer: torch.optim.Optimizer,
                       train_loader: DataLoaderLite) -> int:
    """Load every piece of state from ``path``; return the step to continue from."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    raw_model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    train_loader.set_state(checkpoint["train_loader_state"])
    torch.set_rng_state(checkpoint["rng_state"])
    if torch.cuda.is_available() and checkpoint["cuda_rng_state"] is not None:
        torch.cuda.set_rng_state(checkpoint["cuda_rng_state"])
    np.random.set_state(checkpoint["numpy_rng_state"])
    random.setstate(checkpoint["python_rng_state"])
    return int(checkpoint["step"]) + 1


# ----------------------------------------------------------------------------------------------
# Training


def all_reduce_mean(value: torch.Tensor, ddp: bool, world_size: int) -> float:
    """The mean of ``value`` over all ranks."""
    value = value.detach().clone()
    if ddp:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= world_size
    return float(value.item())


@torch.no_grad()
def evaluate(model: nn.Module, val_loader: DataLoaderLite, device: str, ddp: bool,
             world_size: int) -> float:
    """Mean loss over the first few validation batches (no dropout, no random numbers used)."""
    model.eval()
    val_loader.reset()
    total = torch.zeros((), device=device)
    for _ in range(VAL_BATCHES):
        x, y = val_loader.next_batch()
        _, loss = model(x.to(device), y.to(device))
        total += loss / VAL_BATCHES
    model.train()
    return all_reduce_mean(total, ddp, world_size)


def log_line(log_file: Path, text: str) -> None:
    """Append one line to ``log.txt``."""
    with open(log_file, "a") as f:
        f.write(text + "\n")


def train_step(model: nn.Module, raw_model: GPT, optimizer: torch.optim.Optimizer,
               train_loader: DataLoaderLite, step: int, device: str, ddp: bool,
               world_size: int) -> tuple[float, float, float]:
    """Run one optimizer step; return (loss averaged over ranks, gradient norm, learning rate)."""
    x, y = train_loader.next_batch()
    _, loss = model(x.to(device), y.to(device))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), 1.0)
    lr = get_lr(step)
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.step()
    return all_reduce_mean(loss, ddp, world_size), float(norm), lr


def main(argv: list[str] | None = None) -> int:
    """Train, saving and resuming exactly as the checkpoint guide describes."""
    args = parse_args(argv)
    ddp, rank, world_size, device = setup_distributed()
    master = rank == 0
    log_dir = Path(args.log_dir)
    log_file = log_dir / "log.txt"
    if master:
        log_dir.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(1337)
    if torch.cuda.is_available():
        torch.cuda.manual_seed(1337)
    random.seed(1337)
    np.random.seed(1337)

    tokens = synthetic_corpus()
    split = int(len(tokens) * 0.9)
    B, T = args.micro_batch_size, args.seq_len
    train_loader = DataLoaderLite(tokens[:split], B, T, rank, world_size)
    val_loader = DataLoaderLite(tokens[split:], B, T, rank, world_size)

    raw_model = GPT(GPTConfig(dropout=args.dropout)).to(device)
    optimizer = torch.optim.AdamW(raw_model.parameters(), lr=MAX_LR, betas=(0.9, 0.95),
                                  eps=1e-8, weight_decay=0.1)

    start_step = 0
    resume_path = choose_resume_path(args, ddp, rank)
    if resume_path is not None:
        start_step = restore_checkpoint(resume_path, raw_model, optimizer, train_loader)
        if master:
            print(f"resumed from {resume_path} at step {start_step}", flush=True)
    elif master:
        open(log_file, "w").close()  # a fresh run starts a fresh log

    model: nn.Module = DDP(raw_model) if ddp else raw_model
    for step in range(start_step, args.max_steps):
        t0 = time.time()
        loss, norm, lr = train_step(model, raw_model, optimizer, train_loader, step, device, ddp,
                                    world_size)
        dt = time.time() - t0
        if master:
            print(f"step {step:5d} | loss {loss:.6f} | lr {lr:.4e} | norm {norm:.4f} "
                  f"| dt {dt * 1000:.1f}ms | tok/sec {B * T * world_size / dt:.0f}", flush=True)
            log_line(log_file, f"{step} train {loss:.6f}")

        if (step > 0 and step % args.checkpoint_interval == 0) or step == args.max_steps - 1:
            val_loss = evaluate(raw_model, val_loader, device, ddp, world_size)
            if master:
                print(f"validation loss: {val_loss:.4f}", flush=True)
                log_line(log_file, f"{step} val {val_loss:.6f}")
                checkpoint = make_checkpoint(raw_model, optimizer, step, val_loss, train_loader)
                path = save_checkpoint(checkpoint, log_dir, step, args.checkpoint_prefix)
                print(f"saved {path}", flush=True)
                prune_checkpoints(log_dir, args.keep_last_n_checkpoints, args.checkpoint_prefix)
        if args.step_sleep > 0:
            time.sleep(args.step_sleep)

    if ddp:
        dist.barrier()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
