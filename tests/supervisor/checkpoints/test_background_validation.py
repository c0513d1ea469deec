"""supervisor.checkpoints.background_validation: one warm probe child, verdicts made while training runs."""
from __future__ import annotations

import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from supervisor.checkpoints.background_validation import FileKey, WarmValidator
from supervisor.checkpoints.checkpoint_validation import ProbeSession
from tests.checkpoint_factory import make_checkpoint

# Each test runs the warm probe child (torch imported in it) against real files: seconds each.
pytestmark = pytest.mark.slow


def _wait(predicate, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out")


def _probe_children(validator: WarmValidator) -> int:
    return validator.session.children_started


def test_a_new_checkpoint_is_validated_in_the_background_and_the_restart_only_stats_it(tmp_path):
    validator = WarmValidator(tmp_path)
    try:
        validator.start()
        good = make_checkpoint(tmp_path / "model_00004.pt", 4)
        validator.offer("model_00004.pt")
        _wait(lambda: validator.known(good) is not None)
        assert validator.known(good).ok and validator.background_validations == 1
        started = _probe_children(validator)
        t0 = time.monotonic()
        selection = validator.select(tmp_path)
        assert time.monotonic() - t0 < 1.0
        assert selection.chosen is not None and selection.chosen.path == good and not selection.chosen.inconclusive
        assert _probe_children(validator) == started == 1  # no new interpreter for the restart
    finally:
        validator.close()


def test_a_file_rewritten_in_place_is_judged_again_and_a_bad_one_still_quarantined(tmp_path):
    validator = WarmValidator(tmp_path)
    try:
        validator.start()
        older = make_checkpoint(tmp_path / "model_00004.pt", 4)
        newest = make_checkpoint(tmp_path / "model_00008.pt", 8)
        validator.offer("model_00008.pt")
        _wait(lambda: validator.known(newest) is not None)
        with open(newest, "r+b") as handle:  # bit rot after the background verdict
            handle.seek(newest.stat().st_size // 2)
            byte = handle.read(1)
            handle.seek(-1, os.SEEK_CUR)
            handle.write(bytes([byte[0] ^ 0xFF]))
        os.utime(newest, ns=(time.time_ns(), time.time_ns() + 10**9))
        assert validator.known(newest) is None  # other bytes: no verdict
        selection = validator.select(tmp_path)
        assert selection.chosen is not None and selection.chosen.path == older
        assert [v.path.name for v, _ in selection.quarantined] == ["model_00008.pt"]
        assert _probe_children(validator) == 1
    finally:
        validator.close()


def test_tmp_files_files_in_flight_and_growing_files_are_not_read(tmp_path):
    validator = WarmValidator(tmp_path)
    try:
        validator.start()
        (tmp_path / "model_00004.pt.tmp").write_bytes(b"partial")
        validator.offer("model_00004.pt.tmp")
        make_checkpoint(tmp_path / "model_00008.pt", 8)
        validator.offer("model_00008.pt", {"model_00008.pt"})  # a heartbeat says it is being written
        time.sleep(1.5)
        assert validator.background_validations == 0 and not validator.cache
        validator.offer("model_00008.pt", set())
        validator._wanted = None  # offer again: the same name is a new request once it is no longer in flight
        validator.offer("model_00008.pt", set())
        _wait(lambda: validator.background_validations == 1)
    finally:
        validator.close()


def test_a_probe_child_that_dies_while_idle_is_replaced(tmp_path):
    validator = WarmValidator(tmp_path)
    try:
        validator.start()
        first = _wait(lambda: validator.session.child_pid)
        os.kill(first, signal.SIGKILL)
        _wait(lambda: validator.session.child_pid not in (None, first), timeout=30.0)
        good = make_checkpoint(tmp_path / "model_00004.pt", 4)
        selection = validator.select(tmp_path)
        assert selection.chosen is not None and selection.chosen.path == good and not selection.chosen.inconclusive
    finally:
        validator.close()
    assert not psutil.pid_exists(first) or psutil.Process(first).status() == psutil.STATUS_ZOMBIE


HUNGRY_PROBE = textwrap.dedent("""
    import json, sys, time
    print(json.dumps({"ready": True, "import_torch_seconds": 0.1}), flush=True)
    for line in sys.stdin:
        hog = bytearray(400 * 2**20)  # touched: resident
        for i in range(0, len(hog), 4096):
            hog[i] = 1
        time.sleep(60)
""")


def test_a_probe_above_its_memory_cap_is_killed_and_the_file_not_judged(tmp_path):
    good = make_checkpoint(tmp_path / "model_00004.pt", 4)
    with ProbeSession(120.0, command=[sys.executable, "-c", HUNGRY_PROBE], memory_cap_bytes=200 * 2**20) as session:
        started = time.monotonic()
        outcome = session.probe(good, size_bytes=good.stat().st_size)
        assert time.monotonic() - started < 30
        assert outcome.verdict is None and outcome.inconclusive and "above its cap" in outcome.error
        assert not session.warm


def test_file_keys_name_the_bytes(tmp_path):
    path = tmp_path / "model_00001.pt"
    path.write_bytes(b"abc")
    key = FileKey.of(path)
    assert key == FileKey.of(path) and key.size == 3
    path.write_bytes(b"abcd")
    assert FileKey.of(path) != key
    assert FileKey.of(tmp_path / "missing.pt") is None
    assert isinstance(Path(key.path), Path)


def test_background_validation_keeps_to_about_one_percent_of_a_core(tmp_path):
    validator = WarmValidator(tmp_path)
    try:
        validator.start()
        first = make_checkpoint(tmp_path / "model_00004.pt", 4)
        validator.offer("model_00004.pt")
        _wait(lambda: validator.known(first) is not None)
        second = make_checkpoint(tmp_path / "model_00008.pt", 8)
        validator.offer("model_00008.pt")
        time.sleep(2.0)
        assert validator.known(second) is None and validator.background_validations == 1  # waits 99x its cost
        selection = validator.select(tmp_path)  # the restart judges it with the warm child
        assert selection.chosen is not None and selection.chosen.path == second
        assert _probe_children(validator) == 1
    finally:
        validator.close()
