"""The chaos soak's short mode as a test: mixed faults, then bitwise equality (issue 7.5).

The full soak (12+ faults, every kind, 2 processes) is ``python bench/chaos_soak.py``; this runs
the same code with five faults on one process (its ``--short`` mode) so CI exercises it: always a byte flip between validation
and launch, a load-probe timeout (inconclusive validation: resume the newest checkpoint, flagged,
quarantine nothing), the supervisor SIGSTOPped and continued (proven nowhere else), one seeded
fault of the other kinds and, last, a full disk during the final save (that supervisor must exit 5,
``finished_without_checkpoint``; a new ``gpt2sup run`` on the freed disk then finishes). The seed comes from GPT2SUP_CHAOS_SEED when set (to replay a failure)
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
    from chaos_soak import (
        SHORT_ALWAYS,
        SHORT_FAULTS,
        SHORT_MAX_STEPS,
        SHORT_NPROC,
        print_table,
        soak,
    )

    seed = int(os.environ.get("GPT2SUP_CHAOS_SEED", "7"))
    lines: list[str] = []
    result = soak(seed, faults=SHORT_FAULTS, max_steps=SHORT_MAX_STEPS, workdir=tmp_path, log=lines.append,
                  always=SHORT_ALWAYS, nproc=SHORT_NPROC)
    print_table(result, log=lines.append)
    report = "\n".join(lines)
    assert result["ok"], report
    kinds = [f["kind"] for f in result["fault_log"]]
    assert len(kinds) >= SHORT_FAULTS and set(SHORT_ALWAYS) <= set(kinds), report
    assert kinds[-1] == "full_disk_last_save" and result["fault_log"][-1]["outcome"].startswith("supervisor exit 5"), \
        report
    assert all(f["seen_by"] and not f["problem"] for f in result["fault_log"]), report
    assert result["processes_left"] == [] and result["exit_code"] == 0, report
