"""supervisor.attempts.restart_timing: the restart_breakdown's phases (pure) and DeathWatch (real processes)."""
from __future__ import annotations

import subprocess
import sys
import threading
import time

import psutil

from supervisor import policy
from supervisor.attempts.process_tree import DeathWatch
from supervisor.attempts.restart_timing import (
    RestartTimeline,
    breakdown,
    describe,
    first_step_reached,
    latest_milestones,
)

LAUNCH = 1000.0


def _rank(offset: float, *, resumed: bool = True) -> dict[str, float]:
    marks = {"process_start": LAUNCH + 1 + offset, "imports_done": LAUNCH + 3 + offset,
             "rendezvous_done": LAUNCH + 3.5, "checkpoint_loaded": LAUNCH + 3.8, "loader_seek_start": LAUNCH + 4.0,
             "loader_positioned": LAUNCH + 4.01, "restored": LAUNCH + 4.02, "first_step_done": LAUNCH + 4.5 + offset}
    if not resumed:
        for name in ("checkpoint_loaded", "loader_seek_start", "loader_positioned", "restored"):
            del marks[name]
    return marks


def test_phases_are_consecutive_and_add_up_to_the_total():
    timeline = RestartTimeline(died_at=990.0, noticed_at=990.1, stopped_at=990.5, validation_s=0.3, backoff_s=5.0,
                               launched_at=LAUNCH)
    phases = breakdown(timeline, latest_milestones([_rank(0.0), _rank(0.2)], LAUNCH))
    assert phases["detection"] == 0.1 and phases["tree_stop"] == 0.4
    assert phases["validation"] == 0.3 and phases["backoff"] == 5.0 and phases["supervisor"] == 4.2
    assert phases["torchrun_start"] == 1.2  # the slower rank's start
    assert phases["imports"] == 2.0 and phases["rendezvous"] == 0.3 and phases["checkpoint_load"] == 0.5
    assert phases["loader_seek"] == 0.01 and phases["first_step"] == 0.69
    parts = sum(v for k, v in phases.items() if k != "total")
    assert abs(parts - phases["total"]) < 0.01 and phases["total"] == 14.7
    assert describe(phases).startswith("restart 14.70s = detection 0.10 + tree_stop 0.40")


def test_a_fresh_start_folds_the_missing_load_into_the_first_step():
    timeline = RestartTimeline(died_at=990.0, noticed_at=990.0, stopped_at=990.0, launched_at=LAUNCH)
    phases = breakdown(timeline, latest_milestones([_rank(0.0, resumed=False)], LAUNCH))
    assert "checkpoint_load" not in phases and "loader_seek" not in phases
    assert phases["first_step"] == 1.0 and phases["total"] == 14.5


def test_the_breakdown_waits_for_every_rank_and_ignores_an_earlier_attempts_beats():
    assert not first_step_reached([_rank(0.0), {"process_start": LAUNCH + 1}], LAUNCH)
    assert first_step_reached([_rank(0.0), _rank(0.1)], LAUNCH)
    stale = _rank(0.0)
    stale["process_start"] = LAUNCH - 100
    assert latest_milestones([stale, _rank(0.0)], LAUNCH) == {}
    assert not first_step_reached([None, _rank(0.0)], LAUNCH)
    assert latest_milestones([{"process_start": "junk", "first_step_done": True}], LAUNCH) == {}


def test_an_incomplete_timeline_gives_no_phases():
    assert breakdown(RestartTimeline(died_at=1.0), {"first_step_done": 5.0}) == {}


def test_validation_overlaps_the_backoff():
    assert policy.remaining_backoff(5.0, 1.5) == 3.5
    assert policy.remaining_backoff(5.0, 7.0) == 0.0
    assert policy.remaining_backoff(0.0, 1.0) == 0.0
    assert policy.remaining_backoff(2.0, -1.0) == 2.0


def test_death_watch_wakes_at_once_when_a_watched_process_exits():
    woken = threading.Event()
    watch = DeathWatch(woken.set)
    children = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) for _ in range(2)]
    try:
        watch.track(psutil.Process(c.pid) for c in children)
        watch.track([psutil.Process(children[0].pid)])  # twice: watched once
        assert not woken.wait(0.3) and watch.first_death is None
        killed_at = time.time()
        children[1].kill()
        assert woken.wait(5.0)
        pid, seen = watch.first_death
        assert pid == children[1].pid and 0 <= seen - killed_at < 1.0
    finally:
        for child in children:
            child.kill()
            child.wait()
        watch.close()
    watch.close()  # twice is harmless
