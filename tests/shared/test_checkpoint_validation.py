"""shared.checkpoint_validation + shared.checkpoint_probe on real files and real child processes.

Each test writes a real torch.save checkpoint (tests/checkpoint_factory.py), breaks it one way,
and asserts the exact check that catches it. The load-probe's fine-grained structure checks are
exercised by calling ``checkpoint_probe.probe`` in this process (same code the child runs, no
2 s ``import torch`` per case); the child-process path is covered end to end separately.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch

from shared import checkpoint_probe
from shared.checkpoint_crc import check_zip_crc
from shared.checkpoint_validation import (
    Check,

    run_probe_command,
    validate_checkpoint,
    validate_many,
)
from tests.checkpoint_factory import (
    TINY,
    flip_byte_in_tensor_data,
    make_checkpoint,
    make_checkpoint_dict,
    tensor_data_span,
    truncate_to_fraction,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def base_dict() -> dict:
    """One checkpoint dict reused (copied shallowly) by the structure tests."""
    return make_checkpoint_dict(100)


@pytest.fixture()
def good(tmp_path: Path) -> Path:
    return make_checkpoint(tmp_path / "model_00100.pt", 100)


def names(result) -> list[str]:
    return [check.name for check in result.checks]


def probe_dict(tmp_path: Path, checkpoint, name: str = "model_00100.pt", deep: bool = False) -> dict:
    path = tmp_path / name
    torch.save(checkpoint, path)
    return checkpoint_probe.probe(path, deep=deep)


# --- end to end: real child process ---------------------------------------------------------------

def test_good_checkpoint_passes_every_check_in_order(good: Path) -> None:
    result = validate_checkpoint(good)
    assert result.ok, result.reason
    assert result.reason is None and result.step == 100
    assert result.size_bytes == good.stat().st_size
    assert names(result)[:4] == ["file", "size", "zip-crc", "load-probe"]
    assert {"keys", "step", "shapes", "size-floor"} <= set(names(result))
    assert all(isinstance(check, Check) and check.passed for check in result.checks)
    assert result.config["n_embd"] == TINY["n_embd"]
    assert result.to_dict()["checks"][2]["name"] == "zip-crc"


def test_deep_passes_on_a_good_checkpoint_and_reports_the_grouping(good: Path) -> None:
    result = validate_checkpoint(good, deep=True)
    assert result.ok, result.reason
    detail = dict((c.name, c.detail) for c in result.checks)
    assert "nanogpt grouping" in detail["optimizer-shapes"]
    assert "finite" in detail["model-finite"]


def test_malicious_pickle_is_rejected_without_running_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "model_00100.pt"
    torch.save({"model": Exploit(), "step": 100}, path)  # zip-valid: only the unpickler can refuse it
    result = validate_checkpoint(path)
    assert not result.ok
    assert "weights_only" in result.reason and "system" in result.reason
    assert not marker.exists(), "loading the checkpoint executed code from it"


def test_nan_in_model_passes_shallow_but_fails_deep(tmp_path: Path, base_dict: dict) -> None:
    checkpoint = dict(base_dict)
    model = {k: v.clone() for k, v in base_dict["model"].items()}
    model["lm_head.weight"] = model["transformer.wte.weight"]
    model["transformer.h.1.mlp.c_fc.weight"][3, 4] = float("nan")
    checkpoint["model"] = model
    path = tmp_path / "model_00100.pt"
    torch.save(checkpoint, path)
    assert validate_checkpoint(path).ok
    deep = validate_checkpoint(path, deep=True)
    assert not deep.ok
    assert "transformer.h.1.mlp.c_fc.weight" in deep.reason and "non-finite" in deep.reason


def test_symlink_is_followed_and_step_checked_against_its_target(good: Path) -> None:
    link = good.parent / "latest_checkpoint.pt"
    link.symlink_to(good.name)
    result = validate_checkpoint(link)
    assert result.ok, result.reason
    assert result.step == 100 and "symlink" in result.checks[0].detail


# --- cheap checks: no child process ---------------------------------------------------------------

def test_missing_dangling_directory_and_fifo_fail_at_the_file_check(tmp_path: Path) -> None:
    assert validate_checkpoint(tmp_path / "model_00001.pt").reason == "no such file"
    dangling = tmp_path / "latest_checkpoint.pt"
    dangling.symlink_to("model_00042.pt")
    assert "dangling symlink" in validate_checkpoint(dangling).reason
    assert "directory" in validate_checkpoint(tmp_path).reason
    fifo = tmp_path / "model_00002.pt"
    os.mkfifo(fifo)
    result = validate_checkpoint(fifo)  # must not block opening it
    assert "not a regular file" in result.reason
    assert names(result) == ["file"]


def test_empty_file_fails_size(tmp_path: Path) -> None:
    path = tmp_path / "model_00100.pt"
    path.touch()
    result = validate_checkpoint(path)
    assert not result.ok and names(result) == ["file", "size"]
    assert "empty" in result.reason


def test_truncated_file_fails_zip_structure_and_far_below_siblings(good: Path) -> None:
    make_checkpoint(good.parent / "model_00200.pt", 200)
    make_checkpoint(good.parent / "model_00300.pt", 300)
    truncate_to_fraction(good, 0.5)
    alone = validate_checkpoint(good)
    assert not alone.ok and alone.checks[-1].name == "zip-crc"
    assert "not a zip archive" in alone.reason
    with_siblings = validate_many([good])[0]
    assert not with_siblings.ok and with_siblings.checks[-1].name == "size"
    assert "50%" in with_siblings.reason and "median" in with_siblings.reason and "2 sibling" in with_siblings.reason


def test_random_bytes_fail_zip_structure(tmp_path: Path) -> None:
    path = tmp_path / "model_00100.pt"
    path.write_bytes(os.urandom(1 << 20))
    result = validate_checkpoint(path)
    assert not result.ok and result.checks[-1].name == "zip-crc"


def test_flipped_byte_in_tensor_data_is_caught_only_by_crc(good: Path) -> None:
    member = flip_byte_in_tensor_data(good)
    assert "/data/" in member
    # torch.load itself notices nothing: the damaged weight loads silently.
    loaded = torch.load(good, map_location="cpu", weights_only=True, mmap=True)
    assert loaded["step"] == 100
    result = validate_checkpoint(good)
    assert not result.ok and result.checks[-1].name == "zip-crc"
    assert "CRC-32 mismatch" in result.reason and member in result.reason
    assert "load-probe" not in names(result)


def test_crc_check_reads_every_member(good: Path) -> None:
    ok, detail = check_zip_crc(good)
    with zipfile.ZipFile(good) as archive:
        total = sum(info.file_size for info in archive.infolist())
        count = len(archive.infolist())
    assert ok and f"{count} members" in detail and f"{total:,} bytes" in detail


def test_zip_without_data_pkl_is_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "model_00100.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hello")
    assert "no data.pkl" in validate_checkpoint(path).reason


def test_validate_many_compares_with_siblings_in_the_directory(tmp_path: Path) -> None:
    paths = [make_checkpoint(tmp_path / f"model_{s:05d}.pt", s) for s in (100, 200)]
    results = validate_many(paths)
    assert [r.ok for r in results] == [True, True]
    assert "of 1 siblings' median" in results[0].checks[1].detail


# --- the probe's structure checks, in process -----------------------------------------------------

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


def test_deep_accepts_single_group_optimizer(tmp_path: Path) -> None:
    path = make_checkpoint(tmp_path / "model_00100.pt", 100, grouping="single")
    verdict = checkpoint_probe.probe(path, deep=True)
    assert verdict["ok"], verdict["reason"]
    assert "single grouping" in dict((c[0], c[2]) for c in verdict["checks"])["optimizer-shapes"]


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


# --- the child process boundary -------------------------------------------------------------------

def _python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def test_probe_child_killed_by_a_signal_fails_the_file() -> None:
    outcome = run_probe_command(_python("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"), timeout=30)
    assert outcome.verdict is None and not outcome.inconclusive
    assert "SIGSEGV" in outcome.error


def test_probe_child_that_hangs_is_killed_at_the_timeout() -> None:
    outcome = run_probe_command(_python("import time; time.sleep(60)"), timeout=1.0)
    assert outcome.verdict is None and "timed out after 1s" in outcome.error
    assert outcome.seconds < 10


def test_probe_child_printing_garbage_or_failing_is_reported() -> None:
    garbage = run_probe_command(_python("print('hello {not json')"), timeout=30)
    assert "no verdict" in garbage.error
    failing = run_probe_command(_python("import sys; sys.stderr.write('boom\\n'); sys.exit(7)"), timeout=30)
    assert failing.error == "load-probe exited with status 7: boom"
    no_torch = run_probe_command(_python("import sys; sys.exit(3)"), timeout=30)
    assert no_torch.inconclusive


def test_probe_stdout_carries_only_the_verdict(good: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "shared.checkpoint_probe", str(good)], cwd=PROJECT_ROOT,
        capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 0
    lines = completed.stdout.strip().splitlines()
    assert len(lines) == 1 and '"ok": true' in lines[0]


def test_validation_modules_do_not_import_torch() -> None:
    code = "import sys, shared.checkpoint_validation, shared.checkpoint_probe; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, check=True, timeout=60)


def test_tensor_data_span_points_at_stored_bytes(good: Path) -> None:
    member, start, length = tensor_data_span(good)
    with zipfile.ZipFile(good) as archive:
        expected = archive.read(member)
    with open(good, "rb") as handle:
        handle.seek(start)
        assert handle.read(length) == expected


def test_nonfinite_count_is_exact_even_when_the_fast_sum_overflows() -> None:
    huge_but_finite = torch.tensor([3e38, 3e38, 1.0])  # the float32 sum overflows to inf
    assert checkpoint_probe._nonfinite(huge_but_finite, torch) == 0
    assert checkpoint_probe._nonfinite(torch.tensor([1.0, float("nan"), float("inf"), -float("inf")]), torch) == 3
    assert checkpoint_probe._nonfinite(torch.arange(5), torch) == 0  # integer tensors are never non-finite
