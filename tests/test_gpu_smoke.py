"""``bench/gpu_smoke.sh`` must work the first time a GPU is available, so its whole path runs here
on the CPU with a tiny model: both throughput runs, the reference, and a crash and restart under
``gpt2sup run`` whose losses and final weights it compares bit for bit."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_smoke_runs_end_to_end_on_cpu_and_finds_the_resume_bitwise(tmp_path):
    # gpu_smoke.sh runs `python` from PATH: this interpreter's, also when pytest was started as
    # `.venv/bin/python -m pytest` without the venv on PATH.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GPT2SUP_CACHE_DIR": str(tmp_path / "cache"),
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    done = subprocess.run(
        ["bash", str(REPO_ROOT / "bench" / "gpu_smoke.sh"), "--device", "cpu", "--model", "tiny",
         "--micro-batch", "2", "--seq-len", "32", "--steps", "10", "--crash-at", "4", "--peak-tflops", "0.1",
         "--workdir", str(tmp_path / "work")],
        check=False, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "BITWISE EQUAL: 10 losses and the final weights" in done.stdout
    assert "MFU" in done.stdout
    assert (tmp_path / "work" / "crashed_once").exists()  # the crash really happened
    # The supervised run's own journal: one crash, one restart from a validated checkpoint at or
    # before the crash step, and a clean finish.
    events = [json.loads(line) for line in (tmp_path / "work" / "supervised" / "events.jsonl").read_text().splitlines()]
    kinds = [event["event"] for event in events]
    assert kinds.count("crashed") == 1 and kinds.count("restarted") == 1, kinds
    assert kinds.index("crashed") < kinds.index("restarted") and kinds[-1] == "finished", kinds
    resumed = [e for e in events[kinds.index("crashed"):] if e["event"] == "checkpoint_valid"]
    assert resumed and resumed[0].get("step") is not None and resumed[0]["step"] <= 4, resumed
    assert events[-1]["exit_code"] == 0


def test_gpu_smoke_refuses_a_crash_step_outside_the_run(tmp_path):
    done = subprocess.run([sys.executable, str(REPO_ROOT / "bench" / "gpu_smoke.py"), "--steps", "10", "--crash-at", "9"],
                          check=False, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "--crash-at must be between 1 and --steps - 2" in done.stderr
