"""Every rank's heartbeat as one attempt's watch sees it: ``HeartbeatReader``.

An unreadable or vanished file is not a verdict: the last good beat per rank is kept (a
half-written or garbage file, or a deleted heartbeat/ directory, must never look like silence;
that killed healthy attempts), and only the age of the last good beat decides a hang.

No clock decides here either. A beat belongs to this attempt by the attempt id it carries (or,
from a worker that writes none, by having changed since the launch), and its age is the time
since THIS supervisor first saw its content, on its own monotonic clock: ranks whose clock is
hours off, or a step of the machine's clock, change neither.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from shared.heartbeat import Heartbeat, read_heartbeat
from shared.run_dir import RunDir
from supervisor import policy


def beat_key(hb: Heartbeat) -> tuple[object, ...]:
    """What tells one beat from the next: every rewrite changes it (``seq``; for a worker that
    writes none, its own time and progress). Only equality is used, never the clock's value."""
    return (hb.pid, hb.attempt_id, hb.seq, hb.time, hb.step, hb.phase, hb.status)


@dataclass
class Seen:
    """A beat's content and when THIS supervisor first saw it (its own ``time.monotonic()``)."""

    key: tuple[object, ...]
    at: float


class HeartbeatReader:
    def __init__(self, run_dir: RunDir, attempt_id: str,
                 at_launch: dict[str, tuple[object, ...]] | None = None) -> None:
        self.run_dir = run_dir
        self.attempt_id = attempt_id  # handed to the ranks (ATTEMPT_ID_ENV); their beats carry it back
        self.at_launch = dict(at_launch or {})  # file name -> beat_key before the launch: leftovers
        self.seen: dict[int, Seen] = {}  # per rank: its newest beat, and when it was first seen
        self.beats: dict[int, Heartbeat] = {}  # the last GOOD heartbeat per rank of this attempt
        self.peers: dict[int, Heartbeat] = {}  # multi-node, one shared directory: other nodes' ranks
        self._missing_warned: set[int] = set()

    @staticmethod
    def on_disk(run_dir: RunDir) -> dict[str, tuple[object, ...]]:
        """The heartbeat files' contents before a launch: a beat unchanged since then is a leftover."""
        found = {}
        for path in run_dir.list_heartbeats():
            hb = read_heartbeat(path)
            if hb is not None:
                found[path.name] = beat_key(hb)
        return found

    def read(self, another_nodes: Callable[[Heartbeat], bool] = lambda hb: False) -> list[int]:
        """Read every heartbeat file once. Returns the ranks whose beat has just become unreadable
        or gone (each once, until it is read again). ``another_nodes``: whether a changed beat is a
        rank of another node's torchrun (a shared multi-node directory)."""
        present: set[int] = set()
        for path in self.run_dir.list_heartbeats():
            hb = read_heartbeat(path)
            if hb is None:  # unreadable or malformed (validated once, in shared.heartbeat)
                continue
            key = beat_key(hb)
            changed = key != self.at_launch.get(path.name)
            if changed and another_nodes(hb):
                self.peers[hb.rank] = hb
                self.beats.pop(hb.rank, None)  # c10d moved this global rank to another node
                self.seen.pop(hb.rank, None)
                continue
            self.peers.pop(hb.rank, None)
            present.add(hb.rank)
            if not policy.beat_of_attempt(hb.attempt_id, self.attempt_id, changed):
                continue  # a leftover of an earlier attempt
            seen = self.seen.get(hb.rank)
            if seen is None or seen.key != key:
                self.seen[hb.rank] = Seen(key, time.monotonic())
            self.beats[hb.rank] = hb
            self._missing_warned.discard(hb.rank)
        missing = sorted(set(self.beats) - present - self._missing_warned)
        self._missing_warned.update(missing)
        return missing

    @property
    def last_step(self) -> int | None:
        steps = [b.step for b in self.beats.values() if b.step >= 0]
        return max(steps) if steps else None

    def silent_s(self, rank: int, now: float | None = None) -> float:
        """Seconds since this supervisor first saw rank's newest beat, by its own monotonic clock."""
        seen = self.seen.get(rank)
        return 0.0 if seen is None else max(0.0, (time.monotonic() if now is None else now) - seen.at)

    def beat_wall_time(self, rank: int) -> float:
        """When rank's newest beat arrived, on this supervisor's wall clock (for its records)."""
        return time.time() - self.silent_s(rank)
