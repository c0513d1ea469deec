"""The worker never imports ``torch._dynamo`` (~2.5 s of every restart) unless it compiles.

``worker.runtime.compiler_import.skip_compiler_import_for_optimizers`` patches ``torch.optim.Optimizer``
process-wide, so every check that applies it runs in a child process of its own: nothing leaks
into this pytest process. The real runs read ``startup["compiler_imported"]`` from the worker's
last heartbeat (``worker.runtime.startup_clock``).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.worker.helpers import (
    FAST_ARGS,
    REPO_ROOT,
    WorkerLauncher,
    read_heartbeat,
    run_ok,
    step_records,
)

CHILD_TIMEOUT_S = 300

# Every test starts child processes that import torch, most run real workers: the end-to-end layer.
pytestmark = pytest.mark.slow

# Trains a tiny GPT with the worker's own AdamW for 3 steps, round-trips the optimizer through
# state_dict / a fresh optimizer's load_state_dict, trains 2 more steps, and prints a digest of every
# parameter and optimizer-state byte. argv[1] == "patch": skip the compiler import (methods and step).
ROUND_TRIP = r"""
import hashlib, json, sys
import torch
from worker.runtime.compiler_import import skip_compiler_import_for_optimizers, skip_compiler_import_for_step
from worker.model import GPT, build_config

patched = skip_compiler_import_for_optimizers(torch) if sys.argv[1] == "patch" else 0
torch.manual_seed(0)
model = GPT(build_config("tiny"))
def adamw():
    optimizer = model.configure_optimizers(0.1, 1e-3, "cpu")
    if sys.argv[1] == "patch":
        assert skip_compiler_import_for_step(torch, optimizer)
    return optimizer
def train(optimizer, steps):
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        x = torch.randint(0, model.config.vocab_size, (2, 16))
        _, loss = model(x, x)
        loss.backward()
        optimizer.step()
def digest(*tensors):
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
def state_tensors(optimizer):
    state = optimizer.state_dict()["state"]
    return [v for k in sorted(state) for _, v in sorted(state[k].items()) if torch.is_tensor(v)]
first = adamw()
train(first, 3)
saved = first.state_dict()
saved_digest = digest(*state_tensors(first))
second = adamw()
second.load_state_dict(saved)
hook_calls = []  # the async checkpoint's pre-hook must still run (worker.checkpointing.checkpoint)
second.register_step_pre_hook(lambda *_: hook_calls.append("pre"))
second.register_step_post_hook(lambda *_: hook_calls.append("post"))
after_load = digest(*state_tensors(second))
train(second, 2)
print(json.dumps({
    "patched": patched,
    "dynamo": "torch._dynamo" in sys.modules,
    "after_load": after_load,
    "saved": saved_digest,
    "final": digest(*model.parameters(), *state_tensors(second)),
    "steps": [int(s["step"]) for s in second.state_dict()["state"].values()][:1],
    "param_groups": second.state_dict()["param_groups"],
    "hook_calls": hook_calls,
}))
"""


def run_child(script: str, *args: str) -> dict:
    done = subprocess.run([sys.executable, "-c", script, *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=CHILD_TIMEOUT_S, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_an_optimizer_built_after_the_patch_trains_and_round_trips_bitwise_like_an_unpatched_one() -> None:
    patched = run_child(ROUND_TRIP, "patch")
    plain = run_child(ROUND_TRIP, "plain")
    assert patched["patched"] > 0, "no torch.optim.Optimizer method was patched: torch changed the mechanism"
    assert not patched["dynamo"], "the patched child imported torch._dynamo all the same"
    assert plain["dynamo"], "the unpatched child never imported torch._dynamo: this test proves nothing"
    assert patched["steps"] == [5]  # the optimizer really stepped, before and after the round trip
    assert patched["after_load"] == patched["saved"]  # load_state_dict restored exactly what was saved
    assert patched["hook_calls"] == ["pre", "post"] * 2
    for key in ("saved", "after_load", "final", "steps", "param_groups", "hook_calls"):
        assert patched[key] == plain[key], f"{key} differs with the patch"


# The worker's own build_model, with or without --compile: is the patch applied, is dynamo imported?
BUILD_MODEL = r"""
import json, sys
import torch
from worker.train_gpt2 import TrainConfig, build_arg_parser, build_model

args = build_arg_parser().parse_args(["--model", "tiny", "--device", "cpu", *sys.argv[1:]])
model, optimizer = build_model(TrainConfig.from_args(args, False), "cpu")
optimizer.zero_grad(set_to_none=True)
x = torch.zeros((1, 8), dtype=torch.long)
model(x, x)[1].backward()
optimizer.step()
optimizer.load_state_dict(optimizer.state_dict())
marker = torch._compile._disable_dynamo(lambda: None).__code__  # the code of torch's compile-disabled wrapper
plain = [v.__wrapped__ for v in vars(torch.optim.Optimizer).values() if getattr(v, "__code__", None) is marker]
print(json.dumps({
    "dynamo": "torch._dynamo" in sys.modules,
    "wrapped": len(plain),
    "skipped": sum(getattr(f, "__dynamo_disable", None) is f for f in plain),
    "own_step": "step" in vars(optimizer),
}))
"""


def test_build_model_skips_the_compiler_import_without_compile() -> None:
    out = run_child(BUILD_MODEL)
    assert out["wrapped"] > 0 and out["skipped"] == out["wrapped"] and out["own_step"], out
    assert not out["dynamo"], out  # after zero_grad, a step, state_dict and load_state_dict


def test_build_model_with_compile_keeps_the_real_disable_markers() -> None:
    out = run_child(BUILD_MODEL, "--compile")
    assert out["skipped"] == 0 and not out["own_step"], out  # torch's own wrappers, untouched
    assert out["dynamo"], out  # ...which imports the compiler, as --compile needs it anyway


ARGS = [*FAST_ARGS, "--eval_interval", "4"]  # saves and validates at step 8, and at the last step


def torchrun_one(launcher: WorkerLauncher, log_dir: Path, args: list[str]) -> None:
    """``torchrun --nproc_per_node=1``, as ``gpt2sup run --nproc-per-node 1`` starts the worker."""
    log_dir.parent.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "-m",
         "worker.train_gpt2", "--log_dir", str(log_dir), *args],
        cwd=REPO_ROOT, env=launcher.env(), capture_output=True, text=True, timeout=CHILD_TIMEOUT_S,
        start_new_session=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]


def compiler_imported(log_dir: Path, status: str = "finished") -> bool:
    beat = read_heartbeat(log_dir)
    assert beat is not None and beat["status"] == status, beat
    assert "first_step_done" in beat["startup"], beat["startup"]
    return beat["startup"]["compiler_imported"]


def test_a_one_process_run_and_its_resume_never_import_the_compiler(launcher: WorkerLauncher, tmp_path: Path) -> None:
    # A plain process that crashes after step 9, then its resume under torchrun with one rank (a
    # process group, no DDP): training, validation, checkpoint saves, load_state_dict on resume.
    log_dir = tmp_path / "run"
    crashed = launcher.run(log_dir, [*ARGS, "--max_steps", "12"], env={"GPT2SUP_INJECT_CRASH_AT_STEP": "9"})
    assert crashed.proc.returncode != 0 and read_heartbeat(log_dir)["step"] == 9, crashed.output_tail()
    assert compiler_imported(log_dir, "failed") is False  # trained, validated, saved model_00008.pt
    torchrun_one(launcher, log_dir, [*ARGS, "--max_steps", "12", "--auto_resume"])
    assert read_heartbeat(log_dir)["step"] == 11
    assert compiler_imported(log_dir) is False
    # ...and the resumed rank (plain AdamW step, no DDP) trains bit for bit like an uninterrupted run.
    reference = tmp_path / "reference"
    run_ok(launcher, reference, [*ARGS, "--max_steps", "12"])
    assert step_records(log_dir) == step_records(reference)
    assert [r[0] for r in step_records(log_dir)] == list(range(12))


def test_a_two_process_run_never_imports_the_compiler(launcher: WorkerLauncher, tmp_path: Path) -> None:
    # DDP's constructor and forward would import torch._dynamo; the worker builds it without.
    log_dir = tmp_path / "run"
    run_ok(launcher, log_dir, [*ARGS, "--max_steps", "2", "--eval_interval", "0"], nproc=2)
    assert compiler_imported(log_dir) is False


# Run by torchrun with 2 ranks: the worker's tiny GPT in DDP built without the compiler import,
# 3 SGD steps, then the same in torch's own DDP (its lazy wrapper restored, the real import made):
# prints each rank's digests of parameters and gradients, and whether dynamo was imported when.
DDP_BOTH_WAYS = r"""
import hashlib, json, os, sys
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from worker.model import GPT, build_config
from worker.runtime.compiler_import import wrap_in_ddp_without_compiler_import

dist.init_process_group("gloo")
rank = dist.get_rank()

def digest(tensors):
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()

def train(wrap):
    torch.manual_seed(0)
    raw = GPT(build_config("tiny", dropout=0.1))
    model = wrap(raw)
    gen = torch.Generator().manual_seed(100 + rank)
    for _ in range(3):  # plain SGD by hand: torch.optim would import dynamo itself (tested above)
        for p in raw.parameters():
            p.grad = None
        x = torch.randint(0, raw.config.vocab_size, (2, 16), generator=gen)
        _, loss = model(x, x)
        loss.backward()
        grads = digest(p.grad for p in raw.parameters())
        with torch.no_grad():
            for p in raw.parameters():
                p -= 1e-2 * p.grad
    return {"params": digest(raw.parameters()), "grads": grads}

out = {"ours": train(lambda m: wrap_in_ddp_without_compiler_import(torch, lambda: DDP(m)))}
out["dynamo_after_ours"] = "torch._dynamo" in sys.modules
lazy = DDP._inside_ddp_forward.__wrapped__
del lazy.__wrapped__.__dynamo_disable  # back to torch's own: the wrapper imports dynamo again
out["torchs"] = train(DDP)
out["dynamo_after_torchs"] = "torch._dynamo" in sys.modules
# A file per rank: two ranks printing to one pipe can land on one line (CI saw it once).
with open(os.path.join(os.environ["RESULT_DIR"], f"rank{rank}.json"), "w") as handle:
    json.dump(out, handle)
dist.destroy_process_group()
"""


def test_ddp_built_without_the_compiler_import_trains_bit_for_bit_like_torchs_own(tmp_path: Path) -> None:
    script = tmp_path / "ddp_both_ways.py"
    script.write_text(DDP_BOTH_WAYS)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT), "RESULT_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S,
        start_new_session=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    for out in ranks:
        assert not out["dynamo_after_ours"] and out["dynamo_after_torchs"], out  # each way ran as it says
        assert out["ours"] == out["torchs"], out  # same gradients (all-reduced) and same weights
    assert ranks[0]["ours"] == ranks[1]["ours"]  # the ranks agree: the gradients really were averaged
