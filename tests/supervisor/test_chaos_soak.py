"""The chaos soak's short mode as a test: mixed faults, then bitwise equality (issue 7.5).

The full soak (12+ faults) is ``python bench/chaos_soak.py``; this runs the same code with four
faults so CI exercises it. The seed comes from GPT2SUP_CHAOS_SEED when set (to replay a failure)
and is part of every assertion message.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))


def test_a_short_seeded_chaos_soak_ends_bitwise_equal_with_every_fault_seen_and_nothing_left(tmp_path):
    from chaos_soak import print_table, soak

    seed = int(os.environ.get("GPT2SUP_CHAOS_SEED", "7"))
    lines: list[str] = []
    result = soak(seed, faults=4, max_steps=48, workdir=tmp_path, log=lines.append)
    print_table(result, log=lines.append)
    report = "\n".join(lines)
    assert result["ok"], report
    assert len(result["fault_log"]) == 4 and all(f["seen_by"] for f in result["fault_log"]), report
    assert result["processes_left"] == [] and result["exit_code"] == 0, report
