"""GPT-2 pre-training, build-nanogpt style, with exact checkpoint/resume.

    python -m worker.train_gpt2                                  # CPU demo on the built-in corpus
    torchrun --standalone --nproc_per_node=8 -m worker.train_gpt2 --data_dir edu_fineweb10B
    python -m worker.train_gpt2 --auto_resume                    # continue where it stopped

``train()`` is meant to be read top to bottom like build-nanogpt's loop: set-up, then per step
forward, backward, clip, step. The mechanics live in components it calls at fixed points:
``CheckpointManager`` (restore at start-up, ``save_if_due`` after each step), ``HeartbeatWriter``
and ``RunLogger`` (what the outside world sees), ``StopRequest`` (signals, supervisor gone) and
``Distributed`` (ranks and collectives). Exit codes: ``shared.exit_codes.WorkerExit``.
"""
from __future__ import annotations

import argparse
import atexit
import faulthandler
import functools
import math
import os
import random
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from shared.compile_cache import use_run_dir_compile_cache
from shared.exit_codes import WorkerExit
from shared.run_dir import RunDir
from shared.vocabulary import Phase, RankStatus
from worker.checkpointing.checkpoint import CheckpointManager, RestoreRequest
from worker.checkpointing.replay import ReplayCheck, event_publisher
from worker.checkpointing.run_identity_check import RunIdentityCheck
from worker.checkpointing.train_state import TrainingState, TrainProgress
from worker.data.shards import DataError, ShardedTokenLoader, resolve_data_dir
from worker.errors import WorkerError, library_reason
from worker.evaluations import Evaluations, Schedule, load_hellaswag
from worker.model import GPT, build_config, cosine_lr
from worker.runtime.compiler_import import (
    skip_compiler_import_for_optimizers,
    skip_compiler_import_for_step,
    wrap_in_ddp_without_compiler_import,
)
from worker.runtime.compute_clock import ComputeClock
from worker.runtime.device_setup import (
    autocast_for,
    configure_determinism,
    configure_fast_math,
    to_device,
)
from worker.runtime.distributed import (
    Distributed,
    bound_the_teardown,
    setup_distributed,
)
from worker.runtime.lifetime import StopRequest, SupervisorWatch, end_process
from worker.runtime.telemetry import HeartbeatWriter, RunLogger, print_to_stderr
from worker.runtime.tensorboard_log import TensorBoardLog, require_tensorboard
from worker.runtime.worker_lock import hold_worker_lock

__all__ = ["TrainConfig", "WorkerError", "build_arg_parser", "main", "train"]

CUDA_DEFAULTS: dict[str, Any] = {
    "model": "gpt2", "micro_batch_size": 64, "seq_len": 1024, "total_batch_size": 524288,
    "max_steps": 19073, "warmup_steps": 715, "max_lr": 6e-4, "checkpoint_interval": 5000, "hellaswag_limit": 0}
# A run that finishes a few hundred steps in minutes on a 2-core CPU.
CPU_DEFAULTS: dict[str, Any] = {
    "model": "tiny", "micro_batch_size": 8, "seq_len": 64, "total_batch_size": 1024,
    "max_steps": 300, "warmup_steps": 30, "max_lr": 1e-3, "checkpoint_interval": 100, "hellaswag_limit": 100}
DEFAULT_FINAL_SAVE_RETRY_S = 60.0
DEFAULT_ASYNC_CHECKPOINT = True  # bitwise resume and the supervisor's end-to-end tests pass with it


def _profile_default(key: str) -> str:
    return f"default: {CUDA_DEFAULTS[key]} on a CUDA GPU with --data_dir, else {CPU_DEFAULTS[key]}"


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m worker.train_gpt2",
        description="Train GPT-2 (build-nanogpt recipe) with exact, atomic checkpoint/resume.",
        allow_abbrev=False,  # `--max_step 10` must be an error, not a silent `--max_steps 10`
    )
    ck = p.add_argument_group("checkpoints (docs/checkpoints.md)")
    ck.add_argument("--auto_resume", action="store_true", help="resume from latest_checkpoint.pt, else the highest-step model_*.pt; start fresh if none (default: off)")
    ck.add_argument("--resume", action="store_true", help="resume from --checkpoint_path, all state (default: off)")
    ck.add_argument("--checkpoint_path", default=None, help="checkpoint file for --resume (default: none)")
    ck.add_argument("--pretrained_checkpoint", default=None, help="load model weights only, from a checkpoint .pt, a Hugging Face GPT-2 directory or a model.safetensors (docs/interop.md); optimizer, step and data start fresh; with --auto_resume only while the run has no checkpoint of its own (default: none)")
    ck.add_argument("--allow_config_change", action="store_true", help="resume although settings that change the training math (model data, total batch, seq len, LR schedule, seed, dropout, weight decay) differ from the checkpoint's; each difference is printed. Without it such a resume exits 6 (default: off)")
    ck.add_argument("--checkpoint_interval", type=int, default=None, help=f"save every N steps, and always at the last step (0 = only the last step); {_profile_default('checkpoint_interval')}")
    ck.add_argument("--keep_last_n_checkpoints", type=int, default=-1, help="keep only the newest N checkpoints, -1 = keep all (default: %(default)s)")
    ck.add_argument("--final_save_retry_s", type=float, default=DEFAULT_FINAL_SAVE_RETRY_S,
                    help="if the last step's (or a stop request's) checkpoint cannot be written, e.g. on a full disk, "
                         "retry every few seconds for this long, then exit 7 (9 for a stop's) instead of 0: a run never ends as "
                         "finished without its final state on disk (default: %(default)s)")
    ck.add_argument("--async_checkpoint", dest="async_checkpoint", action="store_const", const=True,
                    default=DEFAULT_ASYNC_CHECKPOINT,
                    help="periodic saves capture the state at the save point and a background thread copies it to "
                         "host memory (during the next forward/backward; the optimizer step waits for the copy) and writes "
                         "it with the same atomic protocol; at most one write in flight; the last step's and a stop's save "
                         "wait for it and are written before exit. Costs one extra copy of model + optimizer state in host "
                         "RAM, ~1.5 GB for GPT-2 124M (docs/checkpoints.md; default: on)")
    ck.add_argument("--no_async_checkpoint", dest="async_checkpoint", action="store_const", const=False,
                    help="write every checkpoint synchronously: training waits for each save (default: off; "
                         "asynchronous saves are the default)")
    ev = p.add_argument_group("evaluation (0 turns an activity off)")
    ev.add_argument("--eval_interval", type=int, default=250, help="validation loss every N steps (default: %(default)s)")
    ev.add_argument("--hellaswag_interval", type=int, default=250, help="HellaSwag acc_norm every N steps and at the last step, logged as '{step} hella {acc}' (default: %(default)s)")
    ev.add_argument("--hellaswag_path", default=None, help="HellaSwag jsonl (ctx or ctx_a/ctx_b, endings, label); without it the cached copy, else the official validation set downloaded once; none: one warning, no evaluation (default: none)")
    ev.add_argument("--hellaswag_limit", type=int, default=None, help=f"score only the first N examples, 0 = all; {_profile_default('hellaswag_limit')}")
    ev.add_argument("--generate_interval", type=int, default=250, help="text samples every N steps and at the last step: printed and appended to samples.txt (default: %(default)s)")
    ev.add_argument("--generate_prompt", default="Hello, I'm a language model,", help="the samples' prompt (default: %(default)r)")
    ev.add_argument("--val_steps", type=int, default=20, help="micro-batches per validation pass (default: %(default)s)")
    ev.add_argument("--tensorboard", action="store_true", help="rank 0 also writes train/val loss, lr, grad norm, tokens/s, HellaSwag accuracy and the fault history to tb/ in the run directory (docs/tensorboard.md); needs the tensorboard package: pip install 'gpt2sup[tensorboard]' (default: off)")
    tr = p.add_argument_group("training (unset values follow the device profile, printed at start)")
    tr.add_argument("--log_dir", default="log", help="run directory: checkpoints, logs, heartbeats (default: %(default)s)")
    tr.add_argument("--data_dir", default=None, help="directory of *_train_*/*_val_* uint16 .npy shards (default: the built-in pydoc corpus)")
    tr.add_argument("--model", default=None, help=f"gpt2, gpt2-medium, gpt2-large, gpt2-xl, tiny, mini, small-cpu; {_profile_default('model')}")
    tr.add_argument("--max_steps", type=int, default=None, help=f"optimizer steps of the whole run; {_profile_default('max_steps')}")
    tr.add_argument("--warmup_steps", type=int, default=None, help="linear learning-rate warm-up steps; default: 715 on a CUDA GPU with --data_dir, else 30 but at most 10%% of --max_steps")
    tr.add_argument("--max_lr", type=float, default=None, help=f"peak learning rate of the cosine schedule; {_profile_default('max_lr')}")
    tr.add_argument("--weight_decay", type=float, default=0.1, help="AdamW weight decay of 2-D parameters (default: %(default)s)")
    tr.add_argument("--total_batch_size", type=int, default=None, help=f"tokens per optimizer step, gradient accumulation fills it; {_profile_default('total_batch_size')}")
    tr.add_argument("--micro_batch_size", type=int, default=None, help=f"sequences per forward pass per process; {_profile_default('micro_batch_size')}")
    tr.add_argument("--seq_len", type=int, default=None, help=f"tokens per sequence; {_profile_default('seq_len')}")
    tr.add_argument("--seed", type=int, default=1337, help="seed of torch, numpy and random on every rank (default: %(default)s)")
    tr.add_argument("--device", default="auto", help="auto, cpu or cuda (default: %(default)s)")
    tr.add_argument("--dropout", type=float, default=0.0, help="dropout probability in [0, 1) (default: %(default)s)")
    tr.add_argument("--compile", action="store_true", help="torch.compile the model (default: off)")
    tr.add_argument("--deterministic", action="store_true", help="deterministic algorithms and a fixed cuBLAS workspace: bitwise-repeatable steps (and so bitwise resume) on a GPU, at some speed; CPU runs are deterministic without it (default: off)")
    return p


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a run, with each default resolved: what the run actually uses."""

    auto_resume: bool
    resume: bool
    checkpoint_path: str | None
    pretrained_checkpoint: str | None
    allow_config_change: bool
    checkpoint_interval: int
    keep_last_n_checkpoints: int
    final_save_retry_s: float
    eval_interval: int
    hellaswag_interval: int
    hellaswag_path: str | None
    hellaswag_limit: int
    generate_interval: int
    generate_prompt: str
    val_steps: int
    log_dir: str
    data_dir: str | None
    model: str
    max_steps: int
    warmup_steps: int
    max_lr: float
    weight_decay: float
    total_batch_size: int
    micro_batch_size: int
    seq_len: int
    seed: int
    device: str  # resolved: "cpu", "cuda" or "cuda:N"
    dropout: float
    compile: bool
    device_type: str  # "cpu" or "cuda"
    profile_note: str  # which defaults were filled in, and why (printed at start)
    data_path: str | None = None  # worker.finetune_dolly: the instruction jsonl
    val_fraction: float | None = None  # worker.finetune_dolly: the share held out (None: 0.05, or what fits)
    tensorboard: bool = False  # TensorBoard event files in <log_dir>/tb (worker.runtime.tensorboard_log)
    async_checkpoint: bool = DEFAULT_ASYNC_CHECKPOINT  # periodic saves written by a thread (worker.checkpointing.async_save)
    deterministic: bool = False  # deterministic kernels (worker.runtime.device_setup): bitwise resume on a GPU

    @classmethod
    def from_args(cls, args: argparse.Namespace, cuda_available: bool) -> TrainConfig:
        values = dict(vars(args))
        device = values["device"]
        if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
            raise WorkerError(f"--device must be auto, cpu or cuda (got {device!r})", WorkerExit.USAGE)
        want_cuda = device.startswith("cuda") or (device == "auto" and cuda_available)
        if want_cuda and not cuda_available:
            raise WorkerError("--device cuda requested but no CUDA device is available", WorkerExit.USAGE)
        if want_cuda and values["data_dir"]:
            profile, why = CUDA_DEFAULTS, "a CUDA GPU and a --data_dir: the build-nanogpt GPT-2 124M run"
        elif want_cuda:
            profile, why = dict(CPU_DEFAULTS), "no --data_dir: the small built-in corpus only fits a small run"
        else:
            profile, why = dict(CPU_DEFAULTS), "no GPU: a CPU-sized run that finishes in minutes"
        if profile is not CUDA_DEFAULTS:  # a short CPU run must not spend itself warming up
            steps = values["max_steps"] if values["max_steps"] is not None else profile["max_steps"]
            profile["warmup_steps"] = min(profile["warmup_steps"], max(0, steps) // 10)
        chosen = []
        for key, value in profile.items():
            if values[key] is None:
                values[key] = value
                chosen.append(f"{key}={value}")
        values["device"] = device if device.startswith("cuda:") else ("cuda" if want_cuda else "cpu")
        values["device_type"] = "cuda" if want_cuda else "cpu"
        values["profile_note"] = f"defaults for unset flags ({why}): {', '.join(chosen)}" if chosen else ""
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        if self.resume and not self.checkpoint_path:
            raise WorkerError("--resume needs --checkpoint_path PATH (or use --auto_resume)", WorkerExit.USAGE)
        if self.pretrained_checkpoint and (self.resume or self.checkpoint_path):
            raise WorkerError("--pretrained_checkpoint starts a new run; do not combine it with --resume/--checkpoint_path", WorkerExit.USAGE)
        for name in ("max_steps", "micro_batch_size", "seq_len", "total_batch_size"):
            if getattr(self, name) <= 0:
                raise WorkerError(f"--{name} must be positive", WorkerExit.USAGE)
        for name in ("checkpoint_interval", "eval_interval", "hellaswag_interval", "hellaswag_limit", "generate_interval",
                     "warmup_steps"):
            if getattr(self, name) < 0:
                raise WorkerError(f"--{name} must be >= 0", WorkerExit.USAGE)
        if self.keep_last_n_checkpoints == 0 or self.keep_last_n_checkpoints < -1:
            raise WorkerError("--keep_last_n_checkpoints must be -1 (keep all) or >= 1", WorkerExit.USAGE)
        if not 0.0 <= self.dropout < 1.0:
            raise WorkerError("--dropout must be in [0, 1)", WorkerExit.USAGE)
        if not (math.isfinite(self.final_save_retry_s) and self.final_save_retry_s >= 0):
            raise WorkerError("--final_save_retry_s must be a finite number of seconds >= 0", WorkerExit.USAGE)
        if self.tensorboard:
            require_tensorboard()

    def schedule(self) -> Schedule:
        return Schedule(self.eval_interval, self.hellaswag_interval, self.generate_interval, self.val_steps,
                        self.generate_prompt)

    def restore_request(self) -> RestoreRequest:
        return RestoreRequest(
            checkpoint_path=Path(self.checkpoint_path) if self.resume else None,
            auto_resume=self.auto_resume and not self.resume,
            pretrained=Path(self.pretrained_checkpoint) if self.pretrained_checkpoint else None,
        )


# ----------------------------------------------------------------------------- entry point


def main(argv: list[str] | None = None, *, parser: argparse.ArgumentParser | None = None,
         build: DataBuilder | None = None, prog: str = "train_gpt2") -> int:
    """Pre-training; ``worker.finetune_dolly`` calls it with its own parser and data (one loop, one
    checkpoint manager, one heartbeat, stop handling and run identity for both)."""
    args = (parser or build_arg_parser()).parse_args(argv)
    build = build or build_data
    heartbeat: HeartbeatWriter | None = None
    try:
        config = TrainConfig.from_args(args, torch.cuda.is_available())
        if config.compile:  # before anything imports torch._dynamo, which fixes inductor's cache directory
            use_run_dir_compile_cache(Path(config.log_dir))  # a relaunch reads what this attempt compiled
        determinism = configure_determinism(config.deterministic)  # before any CUDA work
        faulthandler.enable()
        faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 PID` prints every stack
        stop = StopRequest(SupervisorWatch.from_env(os.environ))
        stop.install()
        distributed = setup_distributed(config.device_type, config.device)
        maybe_inject_exit_abort(distributed.rank)
        run_dir = RunDir.at(config.log_dir)
        with hold_worker_lock(run_dir, distributed):  # before any write: exit 8 touches nothing
            heartbeat = HeartbeatWriter(run_dir, distributed.rank, distributed.world_size, config.max_steps)
            stop.attach(run_dir.root, heartbeat, distributed.rank)  # torchrun's teardown is told apart from here on
            heartbeat.beat(phase=Phase.STARTUP)
            if determinism and distributed.master:
                heartbeat.warnings.say(determinism)
            return train(config, distributed, run_dir, heartbeat, stop, build)
    except WorkerError as exc:
        if heartbeat is not None:
            heartbeat.fail(str(exc), exc.status, exc.bad_checkpoint)
        print_to_stderr(f"{prog}: error: {exc}")
        return int(exc.code)
    except BaseException as exc:  # crash: mark it, then let Python print the traceback
        if heartbeat is not None and not isinstance(exc, SystemExit):
            heartbeat.fail(f"{type(exc).__name__}: {library_reason(exc)}")
        raise


def train(config: TrainConfig, dist: Distributed, run_dir: RunDir, heartbeat: HeartbeatWriter,
          stop: StopRequest, build: DataBuilder | None = None) -> int:
    say = _rank0_say(dist, heartbeat)
    if config.profile_note:
        say(config.profile_note)
    data = _load_training_data(config, dist, say, build)
    train_loader, val_loader, grad_accum_steps = data.train, data.val, data.grad_accum_steps
    raw_model, optimizer = build_model(config, dist.device)
    progress = TrainProgress()
    identity = RunIdentityCheck.for_launch(config, dist.world_size, data.source, raw_model.config.to_dict(), run_dir, say)
    state = TrainingState(raw_model, optimizer, train_loader, progress, config.device_type, train_config={})
    sinks = [TensorBoardLog(run_dir.tensorboard_dir, run_dir.events, heartbeat.warnings)] if config.tensorboard else []
    run_log = RunLogger(run_dir, enabled=dist.master, warnings=heartbeat.warnings, sinks=sinks)
    checkpoints = CheckpointManager(
        run_dir, interval=config.checkpoint_interval, keep_last_n=config.keep_last_n_checkpoints,
        is_writer=dist.master, log=say, final_save_retry_s=config.final_save_retry_s,
        state=state, heartbeat=heartbeat, distributed=dist, run_log=run_log, async_save=config.async_checkpoint)
    checkpoints.restore(config.restore_request(), raw_model.config.architecture(), identity)
    state.train_config = identity.identity.to_train_config()  # every checkpoint records what this run is
    if dist.master:
        identity.record_first_start(resumed=checkpoints.resumed_from is not None)
    replay = _replay_check(run_dir, dist, progress, checkpoints, identity, say)
    run_log.open(resumed_step=progress.step if checkpoints.resumed_from is not None else None)

    model, wrapped_in_ddp = _compiled_and_wrapped(raw_model, config, dist)
    autocast = autocast_for(config.device_type)
    evaluations = Evaluations(
        config.schedule(), dist, model, raw_model, val_loader, heartbeat, run_log, say, autocast, progress,
        load_hellaswag(config.hellaswag_interval, config.hellaswag_path, config.hellaswag_limit, dist, say))
    heartbeat.beat(phase=Phase.TRAIN, step=progress.step, last_checkpoint=checkpoints.last_checkpoint_name)

    compute = ComputeClock(config.device_type)  # this rank's own compute per step: the straggler check
    slow_down = injected_slowness(dist.rank)

    # ---- the training loop ---------------------------------------------------------------------
    for step in range(progress.step + 1, config.max_steps):
        t0 = time.perf_counter()  # a duration: a step of the wall clock must not change it
        compute.start()
        last_step = step == config.max_steps - 1
        model.train()
        optimizer.zero_grad(set_to_none=True)
        loss_accum = torch.zeros((), device=dist.device)
        for micro_step in range(grad_accum_steps):
            x, y = train_loader.next_batch()
            x, y = to_device(x, dist.device), to_device(y, dist.device)
            if wrapped_in_ddp:  # sync gradients only on the last micro-step
                model.require_backward_grad_sync = micro_step == grad_accum_steps - 1
            with autocast():
                _, loss = model(x, y)
            if slow_down:
                time.sleep(slow_down)  # fault injection: this rank computes slower than its peers
            loss = loss / grad_accum_steps
            loss_accum += loss.detach()
            if micro_step == grad_accum_steps - 1:
                compute.before_sync()  # the last backward all-reduces: waiting for peers is not compute
            loss.backward()
        dist.mean_(loss_accum)
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        lr = cosine_lr(step, config.max_lr, config.warmup_steps, config.max_steps)
        _set_lr(optimizer, lr)
        optimizer.step()
        _synchronize(config.device_type)
        dt = time.perf_counter() - t0
        loss_value = loss_accum.item()
        tokens_per_s = config.total_batch_size / dt
        progress.step = step
        replay.observe(step, loss_value)

        if not math.isfinite(loss_value):
            replay.finish()
            say(f"step {step:5d} | loss {loss_value} is not finite: training diverged, stopping without saving")
            heartbeat.beat(step=step, loss=None, status=RankStatus.DIVERGED, message="non-finite loss")
            run_log.close()
            bound_the_teardown()
            dist.shutdown()
            return int(WorkerExit.DIVERGED)
        say(f"step {step:5d} | loss {loss_value:.6f} | lr {lr:.4e} | norm {norm:.4f} | dt {dt * 1000:.2f}ms | tok/sec {tokens_per_s:.2f}")
        run_log.log_line(f"{step} train {loss_value:.6f}")
        heartbeat.beat(phase=Phase.TRAIN, step=step, loss=loss_value, tokens_per_s=tokens_per_s,
                       compute_s=compute.finish())
        measured = evaluations.after_step(step, last_step)  # validation, HellaSwag, samples: each when due
        run_log.metrics({"step": step, "time": time.time(), "loss": loss_value, "lr": lr, "norm": float(norm), "dt": dt,
                         "tokens_per_s": tokens_per_s, **measured})
        maybe_inject_crash(step, dist.rank, heartbeat)

        stop_now = dist.any_rank(stop.requested())
        if not checkpoints.save_if_due(step, last_step=last_step, force=stop_now):
            run_log.close()
            raise final_save_failed(step, stopping=stop_now and not last_step, reason=checkpoints.final_save_error)
        if stop_now and not last_step:
            reason = dist.first_given(stop.reason) or "stop requested"
            say(f"{reason}: saved at step {step}, exiting")
            heartbeat.beat(status=RankStatus.STOPPED, message=reason)
            break
    else:
        heartbeat.beat(status=RankStatus.FINISHED)
    bound_the_teardown()  # the run's work is on disk: whatever follows must end in bounded time
    replay.finish()
    run_log.close()
    dist.shutdown()
    maybe_inject_teardown_abort(dist.rank)
    return int(WorkerExit.OK)


def _rank0_say(dist: Distributed, heartbeat: HeartbeatWriter) -> Callable[[str], None]:
    """A progress line goes out once, from the master rank (its heartbeat's warnings carry it)."""
    def say(message: str) -> None:
        if dist.master:
            heartbeat.warnings.say(message)
    return say


def _load_training_data(config: TrainConfig, dist: Distributed, say: Callable[[str], None],
                        build: DataBuilder | None) -> TrainingData:
    """The loaders (``build``, else :func:`build_data`); bad data is the worker's exit DATA_ERROR."""
    try:
        return (build or build_data)(config, dist, say)
    except DataError as exc:
        raise WorkerError(str(exc), WorkerExit.DATA_ERROR) from None


def _replay_check(run_dir: RunDir, dist: Distributed, progress: TrainProgress, checkpoints: CheckpointManager,
                  identity: RunIdentityCheck, say: Callable[[str], None]) -> ReplayCheck:
    """The losses logged after the checkpoint, read before the logger drops them: re-done, each
    must come out bit for bit the same (a replay_check event says whether it did)."""
    if dist.master and checkpoints.resumed_from is not None:
        return ReplayCheck.for_resume(run_dir.metrics, progress.step, event_publisher(run_dir.events, say),
                                      identity.resume_math_changes, say)
    return ReplayCheck(progress.step, {})


def _compiled_and_wrapped(raw_model: GPT, config: TrainConfig, dist: Distributed) -> tuple[Any, bool]:
    """The model the step loop calls (compiled when asked, in DDP across ranks), and whether DDP wraps it.

    A group of one (torchrun --nproc_per_node=1, e.g. ``gpt2sup run --nproc-per-node 1``) has no
    gradients to average, so no DDP. Without ``--compile`` DDP is built without importing
    torch._dynamo (~1.2 s of CPU per rank at every start; ``worker.runtime.compiler_import``).
    """
    model = torch.compile(raw_model) if config.compile else raw_model
    wrapped_in_ddp = dist.ddp and dist.world_size > 1
    if wrapped_in_ddp:
        device_ids = [dist.local_rank] if config.device_type == "cuda" else None
        if config.compile:
            model = DDP(model, device_ids=device_ids)
        else:
            model = wrap_in_ddp_without_compiler_import(torch, functools.partial(DDP, model, device_ids=device_ids))
    return model, wrapped_in_ddp


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """This step's learning rate on every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def _synchronize(device_type: str) -> None:
    """Wait for the GPU to finish the step, so the step's duration is its real one."""
    if device_type == "cuda":
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------- set-up


@dataclass
class TrainingData:
    train: ShardedTokenLoader
    val: ShardedTokenLoader | None  # None when validation is off
    grad_accum_steps: int
    source: Path  # what the run identity fingerprints: a shard directory, or a data file


DataBuilder = Callable[["TrainConfig", Distributed, Callable[[str], None]], TrainingData]


def accumulation_steps(config: TrainConfig, dist: Distributed, say: Callable[[str], None]) -> int:
    B, T = config.micro_batch_size, config.seq_len
    if config.total_batch_size % (B * T * dist.world_size) != 0:
        raise WorkerError(
            f"--total_batch_size {config.total_batch_size} must be divisible by micro_batch_size*seq_len*processes = {B * T * dist.world_size}",
            WorkerExit.USAGE)
    grad_accum_steps = config.total_batch_size // (B * T * dist.world_size)
    say(f"total batch {config.total_batch_size} tokens = {B} x {T} x {dist.world_size} processes x {grad_accum_steps} accumulation steps")
    return grad_accum_steps


def build_data(config: TrainConfig, dist: Distributed, say: Callable[[str], None]) -> TrainingData:
    """Pre-training's shards: the train loader (and the val loader unless evals are off)."""
    grad_accum_steps = accumulation_steps(config, dist, say)
    B, T = config.micro_batch_size, config.seq_len
    data_dir = resolve_data_dir(config.data_dir)
    train_loader = ShardedTokenLoader(data_dir, "train", B, T, dist.rank, dist.world_size, grad_accum_steps)
    val_loader = ShardedTokenLoader(data_dir, "val", B, T, dist.rank, dist.world_size, 1) if config.eval_interval > 0 else None
    say(f"data: {data_dir}")
    return TrainingData(train_loader, val_loader, grad_accum_steps, Path(data_dir))


def build_model(config: TrainConfig, device: str) -> tuple[GPT, torch.optim.Optimizer]:
    """Seed every RNG (the same on every rank: identical init and dropout streams), build GPT + AdamW.

    Without ``--compile`` nothing compiles, so AdamW's methods and its ``step`` need not import
    ``torch._dynamo`` (~2.5 s of every restart on a 2-core CPU; ``worker.runtime.compiler_import``). With
    it they keep torch's own wrappers.
    """
    if not config.compile:
        skip_compiler_import_for_optimizers(torch)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    random.seed(config.seed)
    if config.device_type == "cuda":
        torch.cuda.manual_seed(config.seed)
    configure_fast_math(config.device_type)  # TF32 on CUDA
    try:
        model_config = build_config(config.model, dropout=config.dropout)
    except ValueError as exc:
        raise WorkerError(str(exc), WorkerExit.USAGE) from None
    if config.seq_len > model_config.block_size:
        raise WorkerError(f"--seq_len {config.seq_len} exceeds the model's block_size {model_config.block_size}", WorkerExit.USAGE)
    model = GPT(model_config).to(device)
    optimizer = model.configure_optimizers(config.weight_decay, config.max_lr, config.device_type)
    if not config.compile:
        skip_compiler_import_for_step(torch, optimizer)
    return model, optimizer


# ----------------------------------------------------------------------------- loop helpers


def final_save_failed(step: int, stopping: bool, reason: str) -> WorkerError:
    """The last step's (or a stop's) state is not on disk: never an exit 0."""
    what = "the stop request's checkpoint" if stopping else "the final checkpoint"
    return WorkerError(
        f"{what} (step {step}) could not be written: {reason}. Free space and resume: "
        "training continues from the newest checkpoint on disk, which is older",
        WorkerExit.STOP_SAVE_FAILED if stopping else WorkerExit.FINAL_SAVE_FAILED,
        status=RankStatus.FAILED if stopping else RankStatus.FINISHED_WITHOUT_CHECKPOINT)


def injected_slowness(rank: int) -> float:
    """Fault injection (docs/worker.md): ``GPT2SUP_INJECT_SLOW_RANK=R:S`` makes rank R sleep S seconds in
    every micro-step, a straggler for the supervisor to find. 0 for every other rank."""
    value = os.environ.get("GPT2SUP_INJECT_SLOW_RANK")
    if not value:
        return 0.0
    target, _, seconds = value.partition(":")
    try:
        delay = float(seconds)
        if not target.strip().isdigit() or not (math.isfinite(delay) and delay >= 0):
            raise ValueError
    except ValueError:
        raise WorkerError(f"GPT2SUP_INJECT_SLOW_RANK={value!r}: expected RANK:SECONDS, e.g. 1:0.05",
                          WorkerExit.USAGE) from None
    return delay if int(target) == rank else 0.0


def maybe_inject_crash(step: int, rank: int, heartbeat: HeartbeatWriter) -> None:
    """Fault injection for drills and tests (documented in docs/worker.md): die right after ``step``."""
    target = os.environ.get("GPT2SUP_INJECT_CRASH_AT_STEP")
    if target is None or rank != 0 or int(target) != step:
        return
    once_file = os.environ.get("GPT2SUP_INJECT_CRASH_ONCE_FILE")
    if once_file:
        if os.path.exists(once_file):
            return
        Path(once_file).touch()
    print(f"[fault injection] crashing after step {step}", file=sys.stderr, flush=True)
    heartbeat.fail(f"fault injection: crashed after step {step}")
    os._exit(int(WorkerExit.CRASHED))


def maybe_inject_exit_abort(rank: int) -> None:
    """Fault injection (docs/worker.md): ``GPT2SUP_INJECT_EXIT_ABORT=R`` makes rank R abort (SIGABRT)
    in the interpreter's teardown, whatever ended the process, as a C++ destructor of the process
    group's threads now and then does ("terminate called without an active exception")."""
    target = os.environ.get("GPT2SUP_INJECT_EXIT_ABORT")
    if target is not None and target.strip() == str(rank):
        atexit.register(os.abort)


def maybe_inject_teardown_abort(rank: int) -> None:
    """Fault injection (docs/worker.md): ``GPT2SUP_INJECT_TEARDOWN_ABORT=R`` makes rank R abort
    (SIGABRT) after its run ended and its last checkpoint was saved, as gloo's teardown sometimes
    does ("terminate called without an active exception"): the run is done all the same."""
    target = os.environ.get("GPT2SUP_INJECT_TEARDOWN_ABORT")
    if target is not None and target.strip() == str(rank):
        print(f"[fault injection] rank {rank} aborting in teardown", file=sys.stderr, flush=True)
        os.abort()


if __name__ == "__main__":
    end_process(main())
