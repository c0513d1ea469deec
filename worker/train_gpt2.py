"""GPT-2 pre-training, build-nanogpt style, with exact checkpoint/resume.

    python -m worker.train_gpt2                                  # CPU demo on the built-in corpus
    torchrun --standalone --nproc_per_node=8 -m worker.train_gpt2 --data_dir edu_fineweb10B
    python -m worker.train_gpt2 --auto_resume                    # continue where it stopped

The step loop below is meant to be read top to bottom; the mechanics (checkpoint IO, heartbeats,
logs, RNG capture) live in small helpers it calls at fixed points.
"""
from __future__ import annotations

import argparse
import faulthandler
import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.exit_codes import WorkerExit

CUDA_DEFAULTS = dict(model="gpt2", micro_batch_size=64, seq_len=1024, total_batch_size=524288,
                     max_steps=19073, warmup_steps=715, max_lr=6e-4, checkpoint_interval=5000)
# A run that finishes a few hundred steps in minutes on a 2-core CPU.
CPU_DEFAULTS = dict(model="tiny", micro_batch_size=8, seq_len=64, total_batch_size=1024,
                    max_steps=300, warmup_steps=30, max_lr=1e-3, checkpoint_interval=100)


class WorkerError(Exception):
    """An expected failure: printed as one line, exits with ``code``."""

    def __init__(self, message: str, code: WorkerExit) -> None:
        super().__init__(message)
        self.code = code


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m worker.train_gpt2",
        description="Train GPT-2 (build-nanogpt recipe) with exact, atomic checkpoint/resume.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ck = p.add_argument_group("checkpoints (see docs/checkpoints.md)")
    ck.add_argument("--auto_resume", action="store_true", help="resume from latest_checkpoint.pt, else the highest-step model_*.pt; start fresh if none")
    ck.add_argument("--resume", action="store_true", help="resume from --checkpoint_path (all state)")
    ck.add_argument("--checkpoint_path", default=None, help="checkpoint file for --resume")
    ck.add_argument("--pretrained_checkpoint", default=None, help="load model weights only; optimizer, step and data start fresh")
    ck.add_argument("--checkpoint_interval", type=int, default=None, help="save every N steps (0 = only the last step); default 5000, 100 in the CPU demo profile")
    ck.add_argument("--keep_last_n_checkpoints", type=int, default=-1, help="keep only the newest N checkpoints (-1 = keep all)")
    ev = p.add_argument_group("evaluation (0 turns an activity off)")
    ev.add_argument("--eval_interval", type=int, default=250, help="validation loss every N steps")
    ev.add_argument("--hellaswag_interval", type=int, default=250, help="HellaSwag accuracy every N steps (not built yet)")
    ev.add_argument("--generate_interval", type=int, default=250, help="print text samples every N steps")
    ev.add_argument("--val_steps", type=int, default=20, help="micro-batches per validation pass")
    tr = p.add_argument_group("training (unset values follow the device profile, printed at start)")
    tr.add_argument("--log_dir", default="log", help="run directory: checkpoints, logs, heartbeats")
    tr.add_argument("--data_dir", default=None, help="directory of *_train_*/*_val_* uint16 .npy shards; default: the built-in pydoc corpus")
    tr.add_argument("--model", default=None, help="gpt2, gpt2-medium, gpt2-large, gpt2-xl, tiny, mini, small-cpu")
    tr.add_argument("--max_steps", type=int, default=None)
    tr.add_argument("--warmup_steps", type=int, default=None)
    tr.add_argument("--max_lr", type=float, default=None)
    tr.add_argument("--weight_decay", type=float, default=0.1)
    tr.add_argument("--total_batch_size", type=int, default=None, help="tokens per optimizer step (gradient accumulation fills it)")
    tr.add_argument("--micro_batch_size", type=int, default=None, help="sequences per forward pass per process")
    tr.add_argument("--seq_len", type=int, default=None)
    tr.add_argument("--seed", type=int, default=1337)
    tr.add_argument("--device", default="auto", help="auto, cpu or cuda")
    tr.add_argument("--dropout", type=float, default=0.0)
    tr.add_argument("--compile", action="store_true", help="torch.compile the model")
    return p


@dataclass
class Settings:
    """Parsed arguments with every default resolved (what the run actually uses)."""

    args: argparse.Namespace
    device: str
    device_type: str
    profile_note: str


def resolve_settings(args: argparse.Namespace, cuda_available: bool) -> Settings:
    if args.device not in ("auto", "cpu", "cuda") and not args.device.startswith("cuda:"):
        raise WorkerError(f"--device must be auto, cpu or cuda (got {args.device!r})", WorkerExit.USAGE)
    want_cuda = args.device.startswith("cuda") or (args.device == "auto" and cuda_available)
    if want_cuda and not cuda_available:
        raise WorkerError("--device cuda requested but no CUDA device is available", WorkerExit.USAGE)
    if want_cuda and args.data_dir:
        profile, why = CUDA_DEFAULTS, "a CUDA GPU and a --data_dir: the build-nanogpt GPT-2 124M run"
    elif want_cuda:
        profile, why = CPU_DEFAULTS, "no --data_dir: the small built-in corpus only fits a small run"
    else:
        profile, why = CPU_DEFAULTS, "no GPU: a CPU-sized run that finishes in minutes"
    chosen = []
    for key, value in profile.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
            chosen.append(f"{key}={value}")
    note = f"defaults for unset flags ({why}): {', '.join(chosen)}" if chosen else ""
    if args.resume and not args.checkpoint_path:
        raise WorkerError("--resume needs --checkpoint_path PATH (or use --auto_resume)", WorkerExit.USAGE)
    if args.pretrained_checkpoint and (args.resume or args.checkpoint_path):
        raise WorkerError("--pretrained_checkpoint starts a new run; do not combine it with --resume/--checkpoint_path", WorkerExit.USAGE)
    for name in ("max_steps", "micro_batch_size", "seq_len", "total_batch_size"):
        if getattr(args, name) <= 0:
            raise WorkerError(f"--{name} must be positive", WorkerExit.USAGE)
    for name in ("checkpoint_interval", "eval_interval", "hellaswag_interval", "generate_interval", "warmup_steps"):
        if getattr(args, name) < 0:
            raise WorkerError(f"--{name} must be >= 0", WorkerExit.USAGE)
    if args.keep_last_n_checkpoints == 0 or args.keep_last_n_checkpoints < -1:
        raise WorkerError("--keep_last_n_checkpoints must be -1 (keep all) or >= 1", WorkerExit.USAGE)
    if not 0.0 <= args.dropout < 1.0:
        raise WorkerError("--dropout must be in [0, 1)", WorkerExit.USAGE)
    device = args.device if args.device.startswith("cuda:") else ("cuda" if want_cuda else "cpu")
    return Settings(args=args, device=device, device_type="cuda" if want_cuda else "cpu", profile_note=note)


class StopRequest:
    """SIGTERM/SIGINT set a flag; the loop finishes its step, saves, and exits 0."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name: str | None = None

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True
        self.signal_name = signal.Signals(signum).name


def maybe_inject_crash(step: int, rank: int) -> None:
    """Fault injection for drills and tests (documented in README): die right after ``step``."""
    target = os.environ.get("GPT2SUP_INJECT_CRASH_AT_STEP")
    if target is None or rank != 0 or int(target) != step:
        return
    once_file = os.environ.get("GPT2SUP_INJECT_CRASH_ONCE_FILE")
    if once_file:
        if os.path.exists(once_file):
            return
        Path(once_file).touch()
    print(f"[fault injection] crashing after step {step}", file=sys.stderr, flush=True)
    _mark_heartbeat_failed(f"fault injection: crashed after step {step}")
    os._exit(int(WorkerExit.CRASHED))


# The heartbeat of this process once it exists, so that a failure on the way out can be marked in
# it (status "failed") for `gpt2sup status`, whatever raised it.
_heartbeat: Any = None


def _mark_heartbeat_failed(message: str) -> None:
    if _heartbeat is not None:
        try:
            _heartbeat.beat(status="failed", message=message[:300])
        except OSError:
            pass


def main(argv: list[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    try:
        return train(args)
    except WorkerError as exc:
        _mark_heartbeat_failed(str(exc))
        print(f"train_gpt2: error: {exc}", file=sys.stderr, flush=True)
        return int(exc.code)
    except BaseException as exc:  # crash: mark it, then let Python print the traceback
        if not isinstance(exc, SystemExit):
            _mark_heartbeat_failed(f"{type(exc).__name__}: {exc}")
        raise


def train(args: argparse.Namespace) -> int:
    import random

    import numpy as np
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from shared.run_dir import RunDir
    from worker.checkpoint import CheckpointError, CheckpointManager
    from worker.data import DataError, ShardedTokenLoader, resolve_data_dir
    from worker.model import GPT, GPTConfig, build_config, cosine_lr
    from worker.telemetry import HeartbeatWriter, RunLogger
    from worker.train_state import TrainProgress, compose_checkpoint, restore_full_state

    settings = resolve_settings(args, torch.cuda.is_available())
    faulthandler.enable()
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 PID` prints every stack
    stop = StopRequest()
    stop.install()

    # ---- distributed set-up (torchrun sets RANK/WORLD_SIZE/LOCAL_RANK) --------------------
    ddp = int(os.environ.get("RANK", -1)) != -1
    if ddp:
        rank, local_rank, world_size = (int(os.environ[k]) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
        device = f"cuda:{local_rank}" if settings.device_type == "cuda" else "cpu"
        if settings.device_type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if settings.device_type == "cuda" else "gloo")
    else:
        rank, local_rank, world_size, device = 0, 0, 1, settings.device
    master = rank == 0
    device_type = settings.device_type

    def say(message: str) -> None:
        if master:
            print(message, flush=True)

    run_dir = RunDir.at(args.log_dir)
    run_dir.root.mkdir(parents=True, exist_ok=True)
    global _heartbeat
    heartbeat = _heartbeat = HeartbeatWriter(run_dir, rank, world_size, args.max_steps)
    heartbeat.beat(phase="startup")
    if settings.profile_note:
        say(settings.profile_note)

    B, T = args.micro_batch_size, args.seq_len
    if args.total_batch_size % (B * T * world_size) != 0:
        raise WorkerError(
            f"--total_batch_size {args.total_batch_size} must be divisible by micro_batch_size*seq_len*processes = {B * T * world_size}",
            WorkerExit.USAGE)
    grad_accum_steps = args.total_batch_size // (B * T * world_size)
    say(f"total batch {args.total_batch_size} tokens = {B} x {T} x {world_size} processes x {grad_accum_steps} accumulation steps")

    # ---- data ---------------------------------------------------------------------------------
    try:
        data_dir = resolve_data_dir(args.data_dir)
        train_loader = ShardedTokenLoader(data_dir, "train", B, T, rank, world_size, grad_accum_steps)
        val_loader = ShardedTokenLoader(data_dir, "val", B, T, rank, world_size, 1) if args.eval_interval > 0 else None
    except DataError as exc:
        raise WorkerError(str(exc), WorkerExit.DATA_ERROR) from None
    say(f"data: {data_dir}")

    # ---- model and optimizer ------------------------------------------------------------------
    torch.manual_seed(args.seed)  # same seed on every rank: identical init and dropout streams
    np.random.seed(args.seed)
    random.seed(args.seed)
    if device_type == "cuda":
        torch.cuda.manual_seed(args.seed)
        torch.set_float32_matmul_precision("high")  # TF32
    try:
        config = build_config(args.model, dropout=args.dropout)
    except ValueError as exc:
        raise WorkerError(str(exc), WorkerExit.USAGE) from None
    if T > config.block_size:
        raise WorkerError(f"--seq_len {T} exceeds the model's block_size {config.block_size}", WorkerExit.USAGE)
    model = GPT(config).to(device)
    optimizer = model.configure_optimizers(args.weight_decay, args.max_lr, device_type)

    # ---- checkpoints: find, broadcast, load ------------------------------------------------
    checkpoints = CheckpointManager(run_dir, interval=args.checkpoint_interval,
                                    keep_last_n=args.keep_last_n_checkpoints, is_writer=master, log=say)
    if master:
        checkpoints.remove_stale_staging_files()
    progress = TrainProgress()
    resumed_from: Path | None = None
    chosen: Path | None = Path(args.pretrained_checkpoint) if args.pretrained_checkpoint else None
    try:
        if args.pretrained_checkpoint:
            ckpt = checkpoints.load(Path(args.pretrained_checkpoint))
            _check_architecture(ckpt, config, Path(args.pretrained_checkpoint))
            model.load_state_dict(ckpt["model"])
            say(f"loaded pretrained weights from {args.pretrained_checkpoint}; optimizer, step and data start fresh")
            del ckpt
        elif args.resume or args.auto_resume:
            if master:
                chosen = Path(args.checkpoint_path) if args.resume else checkpoints.find_latest()
            chosen = _broadcast_path(chosen, ddp)
            if chosen is None:
                say(f"--auto_resume: no checkpoint in {run_dir.root}/, starting fresh")
            else:
                ckpt = checkpoints.load(chosen)
                checkpoints.require_keys(ckpt, chosen)
                _check_architecture(ckpt, config, chosen)
                progress, report = restore_full_state(ckpt, model, optimizer, train_loader, device_type)
                for note in report.notes:
                    say(f"note: {note}")
                resumed_from = chosen
                say(f"resumed from {chosen} (step {progress.step}); continuing at step {progress.step + 1}")
                del ckpt
    except CheckpointError as exc:
        raise WorkerError(str(exc), WorkerExit.CHECKPOINT_ERROR) from None
    except DataError as exc:  # the saved data position does not exist in this --data_dir
        raise WorkerError(f"checkpoint {chosen} does not fit the data: {exc}",
                          WorkerExit.DATA_ERROR) from None
    except (KeyError, ValueError, RuntimeError, TypeError) as exc:
        raise WorkerError(f"checkpoint {chosen} does not fit this run: {str(exc).splitlines()[0][:300]}",
                          WorkerExit.CHECKPOINT_ERROR) from None

    run_log = RunLogger(run_dir, enabled=master)
    run_log.open(resumed_step=progress.step if resumed_from is not None else None)
    last_checkpoint_name = resumed_from.name if resumed_from is not None else None

    raw_model = model
    if args.compile:
        model = torch.compile(model)
    if ddp:
        model = DDP(model, device_ids=[local_rank] if device_type == "cuda" else None)
    train_config = {k: getattr(args, k) for k in ("max_steps", "warmup_steps", "max_lr", "weight_decay",
                                                 "total_batch_size", "micro_batch_size", "seq_len", "seed")}
    train_config["world_size"] = world_size
    autocast_dtype = torch.bfloat16 if device_type == "cuda" else None

    def forward_loss(x, y):
        if autocast_dtype is not None:
            with torch.autocast(device_type=device_type, dtype=autocast_dtype):
                return model(x, y)[1]
        return model(x, y)[1]

    def evaluate_val_loss() -> float:
        model.eval()
        val_loader.reset()
        with torch.no_grad():
            total = torch.zeros((), device=device)
            for _ in range(args.val_steps):
                x, y = val_loader.next_batch()
                total += forward_loss(x.to(device), y.to(device)).detach() / args.val_steps
        if ddp:  # SUM then divide: gloo has no AVG
            dist.all_reduce(total, op=dist.ReduceOp.SUM)
            total /= world_size
        model.train()
        return total.item()

    def due(interval: int, step: int, last: bool) -> bool:
        return interval > 0 and (step % interval == 0 or last)

    heartbeat.beat(phase="train", step=progress.step, last_checkpoint=last_checkpoint_name)
    if args.hellaswag_interval > 0:
        say("note: HellaSwag evaluation is not built yet; --hellaswag_interval is accepted and ignored")
    exit_status = "finished"

    # ---- the training loop ---------------------------------------------------------------------
    for step in range(progress.step + 1, args.max_steps):
        t0 = time.time()
        last_step = step == args.max_steps - 1
        model.train()
        optimizer.zero_grad(set_to_none=True)
        loss_accum = torch.zeros((), device=device)
        for micro_step in range(grad_accum_steps):
            x, y = train_loader.next_batch()
            x, y = x.to(device), y.to(device)
            if ddp:  # sync gradients only on the last micro-step
                model.require_backward_grad_sync = micro_step == grad_accum_steps - 1
            loss = forward_loss(x, y) / grad_accum_steps
            loss_accum += loss.detach()
            loss.backward()
        if ddp:
            dist.all_reduce(loss_accum, op=dist.ReduceOp.SUM)
            loss_accum /= world_size
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        lr = cosine_lr(step, args.max_lr, args.warmup_steps, args.max_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
        if device_type == "cuda":
            torch.cuda.synchronize()
        dt = time.time() - t0
        loss_value = loss_accum.item()
        tokens_per_s = args.total_batch_size / dt
        progress.step = step

        if not math.isfinite(loss_value):
            say(f"step {step:5d} | loss {loss_value} is not finite: training diverged, stopping without saving")
            heartbeat.beat(phase="train", step=step, loss=None, status="diverged", message="non-finite loss")
            _shutdown(ddp, run_log)
            return int(WorkerExit.DIVERGED)
        say(f"step {step:5d} | loss {loss_value:.6f} | lr {lr:.4e} | norm {norm:.4f} | dt {dt * 1000:.2f}ms | tok/sec {tokens_per_s:.2f}")
        run_log.log_line(f"{step} train {loss_value:.6f}")
        run_log.metrics({"step": step, "time": time.time(), "loss": loss_value, "lr": lr, "norm": float(norm), "dt": dt,
                         "tokens_per_s": tokens_per_s})
        heartbeat.beat(phase="train", step=step, loss=loss_value, tokens_per_s=tokens_per_s)
        maybe_inject_crash(step, rank)

        if val_loader is not None and due(args.eval_interval, step, last_step):
            heartbeat.beat(phase="eval")
            progress.val_loss = evaluate_val_loss()
            say(f"validation loss: {progress.val_loss:.4f}")
            run_log.log_line(f"{step} val {progress.val_loss:.4f}")
            heartbeat.beat(phase="train")
        if master and due(args.generate_interval, step, last_step) and step > 0:
            heartbeat.beat(phase="generate")
            _print_samples(raw_model, device, device_type, rank)
            heartbeat.beat(phase="train")

        stop_now = _agree_on_stop(stop.requested, ddp, device)
        if checkpoints.is_due(step, last_step) or (stop_now and checkpoints.last_saved_step != step):
            heartbeat.beat(phase="checkpoint")
            message = None
            if master:
                state = compose_checkpoint(raw_model, optimizer, progress, train_loader, device_type, train_config)
                outcome = checkpoints.save(step, state)
                del state
                if outcome.saved:
                    last_checkpoint_name = outcome.path.name
                    say(f"saved {outcome.path} ({outcome.size_bytes / 1e6:.1f} MB, {outcome.seconds:.2f}s)")
                else:
                    message = outcome.error
                    run_log.log_line(f"{step} checkpoint_failed {outcome.error}")
            if ddp:
                dist.barrier()
            heartbeat.beat(phase="train", last_checkpoint=last_checkpoint_name, message=message)
        if stop_now and not last_step:
            say(f"stop requested ({stop.signal_name or 'by another rank'}): saved at step {step}, exiting")
            exit_status = "stopped"
            break

    heartbeat.beat(status=exit_status)
    _shutdown(ddp, run_log)
    return int(WorkerExit.OK)


def _check_architecture(ckpt: dict, config: Any, path: Path) -> None:
    from worker.checkpoint import CheckpointError
    saved = ckpt.get("config")
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path} has no model config")
    wanted = config.architecture()
    diffs = [f"{k} {saved.get(k)} != {v}" for k, v in wanted.items() if saved.get(k) != v]
    if diffs:
        raise CheckpointError(f"{path} was trained with a different model ({'; '.join(diffs)}); pass the matching --model")


def _broadcast_path(path: Path | None, ddp: bool) -> Path | None:
    """Rank 0 chose the checkpoint; every rank must load the same file."""
    if not ddp:
        return path
    import torch.distributed as dist
    box = [str(path) if path is not None else None]
    dist.broadcast_object_list(box, src=0)
    return Path(box[0]) if box[0] is not None else None


def _agree_on_stop(local_request: bool, ddp: bool, device: str) -> bool:
    """All ranks must stop after the same step, or the next collective deadlocks."""
    if not ddp:
        return local_request
    import torch
    import torch.distributed as dist
    flag = torch.tensor([1 if local_request else 0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def _print_samples(model: Any, device: str, device_type: str, rank: int) -> None:
    """build-nanogpt's sampling, on a private generator so the training RNG is untouched."""
    import torch
    from torch.nn import functional as F
    from shared.tokenizer import get_gpt2_encoding

    enc = get_gpt2_encoding()
    model.eval()
    tokens = torch.tensor(enc.encode("Hello, I'm a language model,"), dtype=torch.long, device=device)
    xgen = tokens.unsqueeze(0).repeat(2, 1)
    sample_rng = torch.Generator(device=device).manual_seed(42 + rank)
    with torch.no_grad():
        while xgen.size(1) < min(32, model.config.block_size):
            logits, _ = model(xgen)
            probs = F.softmax(logits[:, -1, :], dim=-1)
            topk_probs, topk_indices = torch.topk(probs, 50, dim=-1)
            ix = torch.multinomial(topk_probs, 1, generator=sample_rng)
            xgen = torch.cat((xgen, torch.gather(topk_indices, -1, ix)), dim=1)
    for i in range(xgen.size(0)):
        ids = [t for t in xgen[i].tolist() if t < enc.n_vocab]
        print(f"rank {rank} sample {i}: {enc.decode(ids)!r}", flush=True)
    model.train()


def _shutdown(ddp: bool, run_log: Any) -> None:
    run_log.close()
    if ddp:
        import torch.distributed as dist
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
