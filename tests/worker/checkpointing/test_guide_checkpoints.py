"""The real worker accepts checkpoints written by the build-nanogpt guide's own code.

Each file comes from the guide's exact checkpoint dict (pickled ``__main__.GPTConfig``,
``np.random.get_state()``, ``random.getstate()``) written in a child process; the worker then runs
as a user would: ``--resume --checkpoint_path`` and ``--pretrained_checkpoint``. Where the saved
data position does not exist in this data directory, the worker says so in one line.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from shared.exit_codes import WorkerExit
from tests.checkpoint_factory import make_guide_checkpoint
from tests.worker.helpers import FAST_ARGS, read_heartbeat, read_metrics, run_ok

# The worker's "tiny" preset, as the guide's GPTConfig dataclass would hold it.
# Real training processes or probe children: the end-to-end layer, run by CI, not the inner loop.
pytestmark = pytest.mark.slow

TINY_SIZES = {"block_size": 128, "vocab_size": 50304, "n_layer": 2, "n_head": 2, "n_embd": 64}
GUIDE_STEP = 3


@pytest.fixture(scope="module")
def guide_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_guide_checkpoint(tmp_path_factory.mktemp("guide") / "model_00003.pt", GUIDE_STEP, sizes=TINY_SIZES)


def test_resume_from_a_guide_checkpoint_continues_at_its_step(launcher, tmp_path: Path, guide_file: Path) -> None:
    log_dir = tmp_path / "run"
    launch = run_ok(launcher, log_dir, [*FAST_ARGS, "--max_steps", "6", "--resume", "--checkpoint_path", str(guide_file)])
    assert f"resumed from {guide_file} (step {GUIDE_STEP})" in launch.stdout() + launch.stderr()
    assert [m["step"] for m in read_metrics(log_dir)] == [4, 5]


def test_pretrained_weights_from_a_guide_checkpoint_start_a_fresh_run(launcher, tmp_path: Path, guide_file: Path) -> None:
    log_dir = tmp_path / "run"
    launch = run_ok(launcher, log_dir, [*FAST_ARGS, "--max_steps", "2", "--pretrained_checkpoint", str(guide_file)])
    assert f"loaded pretrained weights from {guide_file}" in launch.stdout() + launch.stderr()
    assert [m["step"] for m in read_metrics(log_dir)] == [0, 1]


def test_a_guide_checkpoint_whose_data_position_does_not_fit_is_one_clear_line(launcher, tmp_path: Path) -> None:
    misfit = make_guide_checkpoint(tmp_path / "guide" / "model_00003.pt", GUIDE_STEP, sizes=TINY_SIZES,
                                   loader_position=(7, 0))  # shard 7 does not exist in the built-in corpus
    log_dir = tmp_path / "run"
    launch = launcher.run(log_dir, [*FAST_ARGS, "--max_steps", "6", "--resume", "--checkpoint_path", str(misfit)])
    assert launch.proc.returncode == int(WorkerExit.DATA_ERROR), launch.output_tail()
    beat = read_heartbeat(log_dir)
    assert beat["status"] == "failed" and "shard 7" in beat["message"]
    assert "Traceback" not in launch.stderr() and read_metrics(log_dir) == []
