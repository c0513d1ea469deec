"""worker.checkpoint_probe on real torch.save files: every check, the worker's restore, --serve.

The structure checks run in this process (same code the child runs, no ``import torch`` per
case); the child process itself (single file and ``--serve``) is exercised at the end.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from shared.exit_codes import ProbeExit
from tests.checkpoint_factory import (
    TINY,
    make_checkpoint,
    make_checkpoint_dict,
    make_guide_checkpoint,
)
from worker import checkpoint_probe

# Real training processes or probe children: the end-to-end layer, run by CI, not the inner loop.
pytestmark = pytest.mark.slow

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def base_dict() -> dict:
    """One checkpoint dict reused (copied shallowly) by the structure tests."""
    return make_checkpoint_dict(100)


def probe_dict(tmp_path: Path, checkpoint, name: str = "model_00100.pt", deep: bool = False) -> dict:
    path = tmp_path / name
    torch.save(checkpoint, path)
    return checkpoint_probe.probe(path, deep=deep)


def check_names(verdict: dict) -> list[str]:
    return [check[0] for check in verdict["checks"]]


# --- the worker's restore: "OK" means "this file resumes" -----------------------------------------

def test_a_good_checkpoint_passes_the_workers_restore(tmp_path: Path, base_dict: dict) -> None:
    verdict = probe_dict(tmp_path, base_dict)
    assert verdict["ok"], verdict["reason"]
    assert check_names(verdict)[-1] == "restore"
    assert "every RNG state" in verdict["checks"][-1][2]


@pytest.mark.parametrize("deep", [False, True])
def test_junk_numpy_rng_state_fails_the_restore(tmp_path: Path, base_dict: dict, deep: bool) -> None:
    # Passed `verify --deep` before the probe ran the worker's restore; the worker then exited 4.
    junk = ["MT19937", torch.zeros(3, dtype=torch.int64), 0, 0, 0.0]
    verdict = probe_dict(tmp_path, {**base_dict, "numpy_rng_state": junk}, deep=deep)
    assert not verdict["ok"]
    assert check_names(verdict)[-1] == "restore"
    assert verdict["reason"].startswith("the worker's restore fails on this file: ")


@pytest.mark.parametrize("junk", [
    {"position": 123456, "shard": 0},  # our loader's keys misspelled
    {"shard_index": 0, "position": -5},
    [0, 123456],
])
def test_malformed_loader_state_fails_the_restore(tmp_path: Path, base_dict: dict, junk) -> None:
    verdict = probe_dict(tmp_path, {**base_dict, "train_loader_state": junk})
    assert not verdict["ok"]
    assert "data-loader state" in verdict["reason"] or "train_loader_state" in verdict["reason"]


def test_junk_torch_and_python_rng_states_fail_the_restore(tmp_path: Path, base_dict: dict) -> None:
    torch_rng = probe_dict(tmp_path, {**base_dict, "rng_state": torch.zeros(7, dtype=torch.uint8)})
    assert not torch_rng["ok"] and "restore fails" in torch_rng["reason"]
    python_rng = probe_dict(tmp_path, {**base_dict, "python_rng_state": [3, [1, 2, 3], None]})
    assert not python_rng["ok"] and "restore fails" in python_rng["reason"]


def test_the_restore_builds_no_real_weights(tmp_path: Path, base_dict: dict) -> None:
    # A gpt2-xl-sized config must not allocate 6 GB of weights in the probe: the model is built on
    # the meta device, without its random initialisation.
    model = checkpoint_probe._model_without_weights(
        {"block_size": 1024, "vocab_size": 50304, "n_layer": 48, "n_head": 25, "n_embd": 1600}, torch)
    assert model.lm_head.weight.is_meta and model.transformer.wte.weight is model.lm_head.weight


def test_a_build_nanogpt_guide_checkpoint_passes_every_check(tmp_path: Path) -> None:
    path = make_guide_checkpoint(tmp_path / "model_00010.pt", 10)
    verdict = checkpoint_probe.probe(path, deep=True)
    assert verdict["ok"], verdict["reason"]
    assert verdict["source_format"] == "build-nanogpt" and verdict["step"] == 10
    assert "build-nanogpt format read through stand-ins" in verdict["checks"][0][2]


# --- the structure checks ----------------------------------------------------------------------



def test_probe_rejects_a_list(tmp_path: Path) -> None:
    verdict = probe_dict(tmp_path, [1, 2, 3])
    assert not verdict["ok"] and "holds a list" in verdict["reason"]


def test_probe_names_missing_keys(tmp_path: Path, base_dict: dict) -> None:
    checkpoint = {k: v for k, v in base_dict.items() if k not in ("optimizer", "rng_state")}
    verdict = probe_dict(tmp_path, checkpoint)
    assert not verdict["ok"]
    assert "missing required keys" in verdict["reason"]
    assert "optimizer" in verdict["reason"] and "rng_state" in verdict["reason"]


def test_probe_rejects_step_that_disagrees_with_file_name(tmp_path: Path, base_dict: dict) -> None:
    verdict = probe_dict(tmp_path, base_dict, name="model_00500.pt")
    assert not verdict["ok"]
    assert verdict["reason"] == "step 100 inside the file disagrees with its name model_00500.pt (step 500)"


def test_probe_rejects_unknown_format_version(tmp_path: Path, base_dict: dict) -> None:
    verdict = probe_dict(tmp_path, {**base_dict, "format_version": 99})
    assert not verdict["ok"] and "format_version 99" in verdict["reason"]


def test_probe_rejects_shapes_that_disagree_with_config(tmp_path: Path, base_dict: dict) -> None:
    verdict = probe_dict(tmp_path, {**base_dict, "config": {**TINY, "n_embd": 64}})
    assert not verdict["ok"]
    assert "transformer.wte.weight has shape (50304, 32) but the config implies (50304, 64)" == verdict["reason"]
    config_missing = probe_dict(tmp_path, {**base_dict, "config": {"n_layer": 2}})
    assert "config lacks" in config_missing["reason"]


def test_probe_rejects_extra_or_missing_parameters(tmp_path: Path, base_dict: dict) -> None:
    verdict = probe_dict(tmp_path, {**base_dict, "config": {**TINY, "n_layer": 3}})
    assert not verdict["ok"] and "missing transformer.h.2." in verdict["reason"]


def test_probe_size_floor_catches_a_file_too_small_for_its_config(tmp_path: Path, base_dict: dict) -> None:
    # Optimizer moments that are broadcast views of one number: every shape is right, but the
    # file cannot hold the bytes AdamW state of this model needs.
    optimizer = {
        "state": {i: {"step": s["step"], "exp_avg": torch.zeros(1).expand(s["exp_avg"].shape),
                      "exp_avg_sq": torch.zeros(1).expand(s["exp_avg_sq"].shape)}
                  for i, s in base_dict["optimizer"]["state"].items()},
        "param_groups": base_dict["optimizer"]["param_groups"],
    }
    verdict = probe_dict(tmp_path, {**base_dict, "optimizer": optimizer})
    assert not verdict["ok"]
    assert verdict["checks"][-1][0] == "size-floor"
    assert "needs at least 19,646,976" in verdict["reason"]


def test_unstepped_optimizer_uses_the_weights_only_floor(tmp_path: Path) -> None:
    path = make_checkpoint(tmp_path / "model_00001.pt", 1, with_optimizer=False)
    verdict = checkpoint_probe.probe(path, deep=True)
    assert verdict["ok"], verdict["reason"]
    assert verdict["has_optimizer_state"] is False


def test_single_group_optimizer_fails_the_restore_the_worker_would_do(tmp_path: Path) -> None:
    # The worker builds AdamW with two groups (decay / no decay); a one-group state cannot resume.
    path = make_checkpoint(tmp_path / "model_00100.pt", 100, grouping="single")
    verdict = checkpoint_probe.probe(path, deep=True)
    assert not verdict["ok"] and verdict["checks"][-1][0] == "restore"
    assert "the worker's restore fails on this file" in verdict["reason"] and "parameter groups" in verdict["reason"]


def test_deep_grouping_check_accepts_a_single_group_layout() -> None:
    named = [("a", (2, 2)), ("b", (2,)), ("c", (3, 2))]
    orders = dict(checkpoint_probe.optimizer_index_orders(named, [3]))
    assert orders == {"single": ["a", "b", "c"]}
    assert dict(checkpoint_probe.optimizer_index_orders(named, [2, 1]))["nanogpt"] == ["a", "c", "b"]


def test_deep_catches_optimizer_moment_with_wrong_shape(tmp_path: Path, base_dict: dict) -> None:
    state = {i: dict(s) for i, s in base_dict["optimizer"]["state"].items()}
    state[10]["exp_avg"] = torch.zeros(33)  # index 10 = h.0.ln_1.weight under nanogpt grouping
    optimizer = {"state": state, "param_groups": base_dict["optimizer"]["param_groups"]}
    assert probe_dict(tmp_path, {**base_dict, "optimizer": optimizer})["ok"]  # shallow never looks
    verdict = probe_dict(tmp_path, {**base_dict, "optimizer": optimizer}, deep=True)
    assert not verdict["ok"]
    assert "exp_avg of transformer.h.0.ln_1.weight (index 10) has shape (33), the parameter (32)" in verdict["reason"]


def test_deep_catches_inf_in_optimizer_state(tmp_path: Path, base_dict: dict) -> None:
    state = {i: dict(s) for i, s in base_dict["optimizer"]["state"].items()}
    state[3]["exp_avg_sq"] = state[3]["exp_avg_sq"].clone()
    state[3]["exp_avg_sq"].view(-1)[0] = float("inf")
    verdict = probe_dict(tmp_path, {**base_dict, "optimizer": {**base_dict["optimizer"], "state": state}}, deep=True)
    assert not verdict["ok"] and "exp_avg_sq of parameter index 3" in verdict["reason"]


# --- the child process ----------------------------------------------------------------------------

def test_probe_stdout_carries_only_the_verdict(tmp_path: Path) -> None:
    good = make_checkpoint(tmp_path / "model_00100.pt", 100)
    completed = subprocess.run(
        [sys.executable, "-m", "worker.checkpoint_probe", str(good)], cwd=PROJECT_ROOT,
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.strip().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["ok"] is True


def test_serve_answers_many_files_with_one_import(tmp_path: Path) -> None:
    good = make_checkpoint(tmp_path / "model_00100.pt", 100)
    empty = tmp_path / "model_00200.pt"
    empty.touch()
    requests = "".join(json.dumps({"path": str(p), "deep": deep, "size_bytes": p.stat().st_size}) + "\n"
                       for p, deep in ((good, False), (empty, False), (good, True)))
    completed = subprocess.run(
        [sys.executable, "-m", "worker.checkpoint_probe", "--serve"], cwd=PROJECT_ROOT, input=requests,
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert completed.returncode == 0, completed.stderr
    hello, *verdicts = [json.loads(line) for line in completed.stdout.splitlines()]
    assert hello["ready"] is True and hello["import_torch_seconds"] > 0
    assert [v["ok"] for v in verdicts] == [True, False, True]
    assert verdicts[2]["deep"] is True and "optimizer-finite" in check_names(verdicts[2])
    assert "cannot load" in verdicts[1]["reason"] or "not a readable" in verdicts[1]["reason"]


def test_the_probe_child_never_imports_the_compiler_stack(tmp_path: Path) -> None:
    """torch.optim imports torch._dynamo on an optimizer's first use: as long as ``import torch``
    again. The probe child skips it (issue: verify at the speed of one torch import)."""
    path = tmp_path / "model_00007.pt"
    make_checkpoint(path, 7)
    script = (
        "import sys, json\n"
        "from pathlib import Path\n"
        "from worker import checkpoint_probe as p\n"
        "p._import_for_probing()\n"
        f"verdict = p.probe(Path({str(path)!r}), deep=True)\n"
        "print(json.dumps([verdict['ok'], 'torch._dynamo' in sys.modules]))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=300, check=True)
    ok, compiler_imported = json.loads(done.stdout.strip().splitlines()[-1])
    assert ok and not compiler_imported, done.stderr[-2000:]


def test_probe_without_torch_exits_3(tmp_path: Path) -> None:
    # A broken environment is not the file's fault: exit 3, nothing on stdout.
    blocker = tmp_path / "torch"
    blocker.mkdir()
    (blocker / "__init__.py").write_text("raise ImportError('torch is broken here')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(PROJECT_ROOT)])}
    completed = subprocess.run([sys.executable, "-m", "worker.checkpoint_probe", "--serve"], cwd=PROJECT_ROOT,
                               env=env, capture_output=True, text=True, timeout=120, input="", check=False)
    assert completed.returncode == ProbeExit.CANNOT_JUDGE
    assert completed.stdout == "" and "torch is broken here" in completed.stderr


def test_nonfinite_count_is_exact_even_when_the_fast_sum_overflows() -> None:
    huge_but_finite = torch.tensor([3e38, 3e38, 1.0])  # the float32 sum overflows to inf
    assert checkpoint_probe._nonfinite(huge_but_finite, torch) == 0
    assert checkpoint_probe._nonfinite(torch.tensor([1.0, float("nan"), float("inf"), -float("inf")]), torch) == 3
    assert checkpoint_probe._nonfinite(torch.arange(5), torch) == 0  # integer tensors are never non-finite
