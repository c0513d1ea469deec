"""The worker's side of the straggler check: its compute clock and the slow-rank fault injection."""
from __future__ import annotations

import time

import pytest

from shared.exit_codes import WorkerExit
from worker.errors import WorkerError
from worker.runtime.compute_clock import ComputeClock
from worker.train_gpt2 import injected_slowness


def test_the_clock_counts_only_the_time_before_the_sync_and_keeps_the_last_window():
    clock = ComputeClock("cpu", window=3)
    for work in (0.02, 0.0, 0.0, 0.03):
        clock.start()
        time.sleep(work)
        clock.before_sync()
        time.sleep(0.02)  # the all-reduce wait: not this rank's compute
        recent = clock.finish()
    assert len(recent) == 3  # the oldest step fell out of the window
    assert recent[0] < 0.015 and recent[1] < 0.015 and 0.03 <= recent[2] < 0.045, recent


def test_slow_rank_injection_names_one_rank_and_its_delay(monkeypatch):
    monkeypatch.delenv("GPT2SUP_INJECT_SLOW_RANK", raising=False)
    assert injected_slowness(0) == 0.0
    monkeypatch.setenv("GPT2SUP_INJECT_SLOW_RANK", "1:0.05")
    assert injected_slowness(1) == 0.05 and injected_slowness(0) == 0.0


@pytest.mark.parametrize("value", ["1", "x:0.1", "1:nan", "1:-1", ":0.1", "1:soon"])
def test_a_malformed_slow_rank_injection_is_a_usage_error(monkeypatch, value):
    monkeypatch.setenv("GPT2SUP_INJECT_SLOW_RANK", value)
    with pytest.raises(WorkerError) as caught:
        injected_slowness(0)
    assert caught.value.code == WorkerExit.USAGE and "GPT2SUP_INJECT_SLOW_RANK" in str(caught.value)
