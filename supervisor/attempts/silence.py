"""Hang detection for a script that writes no heartbeats: is anything it does still visible?

gpt2sup's worker (and a script using ``shared.client``) says what it is doing in heartbeats, so a
hang is found per phase. A script with no gpt2sup code says nothing; what it does leave behind is
its output (every rank's stdout and stderr go to the attempt's console log) and the files it
writes in the run directory (``log.txt``, checkpoints, a ``.tmp`` growing during a save). So the
activity key is the console log's size and mtime plus the newest regular file in the run
directory, leaving out what the supervisor itself writes there (its state, journal and locks,
rewritten all the time: counting them would hide every hang). Coarser than heartbeats: a script
that prints nothing and writes nothing for longer than ``--hang-timeout`` in a healthy phase (a
long evaluation) is judged hung, which is why the timeout must be given explicitly.

I/O only (``os.stat``/``os.scandir``); the verdict is ``policy.silent_too_long``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from shared.run_dir import GIVE_UP_NAME, STOP_REQUEST_NAME

# Files the supervisor writes at the top of the run directory (supervisor.json, .lock and the
# nodes' supervisor.nodeR.json share the prefix); quarantined files and their reasons; the
# write test of `gpt2sup run`.
_SUPERVISOR_FILES = frozenset({"events.jsonl", "remote_sync.json", GIVE_UP_NAME, STOP_REQUEST_NAME})


def written_by_the_supervisor(name: str) -> bool:
    """A top-level file of the run directory that the supervisor, not the script, writes."""
    return (name in _SUPERVISOR_FILES or name.startswith(("supervisor.", ".gpt2sup"))
            or ".corrupt" in name)


ActivityKey = tuple[int, int, int, int, int]


def activity_key(console_log: Path, run_dir: Path) -> ActivityKey:
    """(console log size, its mtime, the newest mtime, count and total size of the script's files):
    any change is activity (a file that appears with an old mtime, e.g. copied in, counts too)."""
    try:
        st = os.stat(console_log)
        size, console_mtime = st.st_size, st.st_mtime_ns
    except OSError:
        size, console_mtime = -1, -1
    newest = count = total = -1
    try:
        with os.scandir(run_dir) as entries:
            for entry in entries:
                if written_by_the_supervisor(entry.name):
                    continue
                try:
                    if entry.is_file(follow_symlinks=False):
                        st = entry.stat(follow_symlinks=False)
                        newest, count, total = max(newest, st.st_mtime_ns), count + 1, total + st.st_size
                except OSError:
                    continue  # renamed away between the listing and the stat: the next poll sees it
    except OSError:
        pass
    return size, console_mtime, newest, count, total


@dataclass
class SilenceWatch:
    """When (supervisor's monotonic clock) anything of the script's last changed.

    The baseline is taken right after the launch, before any rank can run (``at_launch``). Until something
    changes after it the script has shown no sign of life, and ``observe`` answers None: the
    start-up allowance governs that time (imports, a compile, data loading), not the hang
    timeout. Times come from this supervisor's clock when it sees a change, never from the files'
    mtimes (only compared with themselves), so a clock step decides nothing.
    """

    console_log: Path
    run_dir: Path
    key: ActivityKey
    last_change: float | None = None

    @classmethod
    def at_launch(cls, console_log: Path, run_dir: Path) -> SilenceWatch:
        return cls(console_log, run_dir, activity_key(console_log, run_dir))

    def observe(self, now: float) -> float | None:
        """Look once: the time of the last change seen since the launch, or None (none yet)."""
        key = activity_key(self.console_log, self.run_dir)
        if key != self.key:
            self.key, self.last_change = key, now
        return self.last_change
