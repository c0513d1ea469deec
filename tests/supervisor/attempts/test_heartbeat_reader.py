"""``HeartbeatReader``: the ranks' beats as one attempt sees them (the watch's reading, on its own)."""
from __future__ import annotations

import time

from shared.heartbeat import Heartbeat, write_heartbeat
from shared.run_dir import RunDir
from supervisor.attempts.heartbeat_reader import HeartbeatReader


def _write(run: RunDir, rank: int, step: int, **extra: object) -> None:
    write_heartbeat(run.heartbeat(rank), Heartbeat(pid=100 + rank, rank=rank, world_size=2, step=step,
                                                   phase="train", time=time.time(), **extra))


def test_a_rank_gone_or_garbled_is_reported_once_and_its_last_good_beat_kept(tmp_path) -> None:
    run = RunDir.at(tmp_path)
    reader = HeartbeatReader(run, "a1")
    _write(run, 0, 5, attempt_id="a1", seq=1)
    _write(run, 1, 5, attempt_id="a1", seq=1)
    assert reader.read() == [] and set(reader.beats) == {0, 1}
    run.heartbeat(0).write_text("{garbage")
    run.heartbeat(1).unlink()
    assert reader.read() == [0, 1]
    assert reader.read() == []  # said once, not every poll
    assert reader.beats[0].step == 5 and reader.last_step == 5
    _write(run, 0, 6, attempt_id="a1", seq=2)
    assert reader.read() == [] and reader.beats[0].step == 6


def test_leftovers_and_other_attempts_are_not_this_attempts_beats(tmp_path) -> None:
    run = RunDir.at(tmp_path)
    _write(run, 0, 40)  # a bare worker's beat (no attempt id) from before the launch
    reader = HeartbeatReader(run, "a2", HeartbeatReader.on_disk(run))
    _write(run, 1, 41, attempt_id="a1")  # another attempt's straggler, written after the launch
    reader.read()
    assert reader.beats == {}
    _write(run, 0, 1, attempt_id="a2")
    reader.read()
    assert set(reader.beats) == {0}


def test_a_beat_ages_on_the_readers_clock_and_only_a_new_beat_resets_it(tmp_path) -> None:
    run = RunDir.at(tmp_path)
    reader = HeartbeatReader(run, "a1")
    write_heartbeat(run.heartbeat(0), Heartbeat(pid=1, rank=0, world_size=1, step=3, phase="train",
                                                time=time.time() + 3600, attempt_id="a1", seq=1))
    reader.read()
    assert reader.silent_s(0) < 1.0  # an hour-ahead clock is not an hour of silence
    reader.seen[0].at -= 30.0
    reader.read()  # the same content again
    assert reader.silent_s(0) >= 30.0
    _write(run, 0, 4, attempt_id="a1", seq=2)
    reader.read()
    assert reader.silent_s(0) < 1.0


def test_a_changed_beat_of_another_nodes_rank_is_a_peer_not_ours(tmp_path) -> None:
    run = RunDir.at(tmp_path)
    reader = HeartbeatReader(run, "a1")
    _write(run, 0, 5, attempt_id="a1")
    _write(run, 1, 5, attempt_id="a1")
    reader.read(another_nodes=lambda hb: hb.rank == 1)
    assert set(reader.beats) == {0} and set(reader.peers) == {1}
