"""``shared.heartbeat``: a heartbeat is validated once, where it is read, into a typed record.

The readers (the supervisor's watch, ``status``, orphan checks, the run history) use its fields
as declared; these tests are what lets them stop re-checking types.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from shared.heartbeat import (
    Heartbeat,
    MalformedHeartbeat,
    read_heartbeat,
    write_heartbeat,
)
from shared.vocabulary import Phase, RankStatus

GOOD = {"pid": 4242, "rank": 1, "world_size": 2, "step": 17, "phase": "eval", "time": 1796574912.5,
        "loss": 3.25, "status": "running", "compute_s": [0.1, 0.2], "startup": {"imports_done": 1.5,
        "compiler_imported": False}, "seq": 9, "mono": 123.4, "attempt_id": "a1", "hostname": "n0"}


def test_a_written_heartbeat_reads_back_as_the_same_typed_record(tmp_path: Path) -> None:
    beat = Heartbeat(pid=1, rank=0, world_size=1, step=3, phase=Phase.CHECKPOINT, time=5.0,
                     status=RankStatus.STOPPED, compute_s=[0.5], save_in_flight="model_00003.pt")
    write_heartbeat(tmp_path / "rank0.json", beat)
    read = read_heartbeat(tmp_path / "rank0.json")
    assert read == beat
    assert read is not None and read.phase is Phase.CHECKPOINT and read.status is RankStatus.STOPPED


def test_fields_come_back_as_their_declared_types() -> None:
    beat = Heartbeat.from_dict(GOOD)
    assert beat.phase is Phase.EVAL and beat.status is RankStatus.RUNNING
    assert isinstance(beat.time, float) and beat.step == 17 and beat.compute_s == [0.1, 0.2]
    assert beat.startup == {"imports_done": 1.5, "compiler_imported": False}


@pytest.mark.parametrize("change", [
    {"pid": "4242"}, {"rank": None}, {"step": 1.5}, {"world_size": True}, {"time": "now"},
    {"time": math.inf}, {"phase": 3}, {"phase": None},
])
def test_required_fields_of_the_wrong_type_make_it_no_heartbeat(change: dict, tmp_path: Path) -> None:
    data = {**GOOD, **change}
    with pytest.raises(MalformedHeartbeat):
        Heartbeat.from_dict(data)
    (tmp_path / "rank1.json").write_text(json.dumps(data))
    assert read_heartbeat(tmp_path / "rank1.json") is None  # a reader keeps its last good beat


def test_garbage_and_non_objects_are_no_heartbeat(tmp_path: Path) -> None:
    for text in ("[1, 2]", "{\"pid\": 1", "", "null"):
        (tmp_path / "rank0.json").write_text(text)
        assert read_heartbeat(tmp_path / "rank0.json") is None
    assert read_heartbeat(tmp_path / "missing.json") is None


def test_optional_fields_of_the_wrong_type_are_dropped_not_passed_on() -> None:
    beat = Heartbeat.from_dict({**GOOD, "loss": "low", "tokens_per_s": math.nan, "max_steps": 2.5,
                                "last_checkpoint": 7, "save_seconds": -1.0, "compute_s": [0.1, "x"],
                                "startup": ["x"], "seq": "9", "mono": None, "hostname": {"a": 1}})
    assert (beat.loss, beat.tokens_per_s, beat.max_steps, beat.last_checkpoint, beat.save_seconds) == (
        None, None, None, None, None)
    assert (beat.compute_s, beat.startup, beat.seq, beat.mono, beat.hostname) == (None, None, None, None, None)


def test_a_diverged_ranks_nan_loss_is_kept() -> None:
    assert math.isnan(Heartbeat.from_dict({**GOOD, "loss": math.nan}).loss)


def test_a_newer_workers_phase_or_status_counts_as_train_and_running_and_extra_keys_are_ignored() -> None:
    beat = Heartbeat.from_dict({**GOOD, "phase": "warp_drive", "status": "levitating", "new_field": 1})
    assert beat.phase is Phase.TRAIN and beat.status is RankStatus.RUNNING
    assert Heartbeat.from_dict({k: v for k, v in GOOD.items() if k != "status"}).status is RankStatus.RUNNING
