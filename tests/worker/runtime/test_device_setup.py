"""``--deterministic`` and the batch transfer (worker.runtime.device_setup).

On this CPU-only machine the GPU side cannot run; what can be checked is that the switches are
set as documented, that a real worker run with the flag trains bit for bit like one without it
(every CPU kernel this model uses is deterministic already), and that the transfer is exact.
"""
from __future__ import annotations

import os

import pytest
import torch

from tests.worker.helpers import (
    FINAL_CHECKPOINT,
    RESUME_ARGS,
    assert_trees_equal,
    load_checkpoint,
    run_ok,
    step_losses,
)
from worker.runtime.device_setup import (
    CUBLAS_WORKSPACE_ENV,
    autocast_for,
    configure_determinism,
    to_device,
)


@pytest.fixture
def restore_torch_determinism(monkeypatch):
    monkeypatch.delenv(CUBLAS_WORKSPACE_ENV, raising=False)
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
              torch.backends.cudnn.benchmark)
    yield
    torch.use_deterministic_algorithms(before[0])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[1], before[2]


def test_off_changes_nothing(restore_torch_determinism):
    assert configure_determinism(False) is None
    assert CUBLAS_WORKSPACE_ENV not in os.environ
    assert not torch.are_deterministic_algorithms_enabled()


def test_on_sets_deterministic_kernels_and_the_cublas_workspace(restore_torch_determinism):
    line = configure_determinism(True)
    assert torch.are_deterministic_algorithms_enabled()
    assert not torch.is_deterministic_algorithms_warn_only_enabled()  # an op without one raises
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert os.environ[CUBLAS_WORKSPACE_ENV] == ":4096:8"
    assert line is not None and ":4096:8" in line


@pytest.mark.parametrize(("given", "kept"), [(":16:8", ":16:8"), (":4096:8", ":4096:8"), (":0:0", ":4096:8")])
def test_a_users_cublas_setting_is_kept_only_when_deterministic(restore_torch_determinism, monkeypatch, given, kept):
    monkeypatch.setenv(CUBLAS_WORKSPACE_ENV, given)
    configure_determinism(True)
    assert os.environ[CUBLAS_WORKSPACE_ENV] == kept


def test_cpu_batches_are_moved_exactly_and_cpu_has_no_autocast():
    batch = torch.randint(0, 50257, (4, 16))
    moved = to_device(batch, "cpu")
    assert torch.equal(moved, batch)
    with autocast_for("cpu")():
        assert not torch.is_autocast_enabled("cpu")


@pytest.mark.slow  # a real worker run and its reference: the end-to-end layer
def test_a_deterministic_run_trains_bit_for_bit_like_the_reference(launcher, tmp_path, ref_bare):
    log_dir = tmp_path / "run"
    launch = run_ok(launcher, log_dir, [*RESUME_ARGS, "--deterministic"])
    assert "deterministic algorithms on" in launch.stdout() + launch.stderr()
    assert step_losses(log_dir) == step_losses(ref_bare)
    assert_trees_equal(load_checkpoint(log_dir / FINAL_CHECKPOINT)["model"],
                       load_checkpoint(ref_bare / FINAL_CHECKPOINT)["model"], "model")
