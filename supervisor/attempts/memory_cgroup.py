"""The kernel's OOM-kill counters that can explain a rank's SIGKILL: its own memory cgroup's.

SLURM and Kubernetes confine a job in a memory cgroup of its own; the kernel's OOM killer then
counts the kill in *that* cgroup (cgroup v2 ``memory.events``, v1 ``memory.oom_control``, both
``oom_kill N``), not in the root one. So the counters watched are those of every cgroup a rank
(or the supervisor) lives in, found through ``/proc/PID/cgroup``, and of that cgroup's ancestors
(the limit may be the job's, above the step's cgroup). A dead rank's ``/proc`` entry is gone, so
the files are learnt while the ranks live and read again once the attempt has ended.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

V2_COUNTER = "memory.events"
V1_COUNTER = "memory.oom_control"


@dataclass(frozen=True)
class CgroupMounts:
    """Where the hierarchies are mounted: (mount point, the hierarchy path it shows as its root)."""

    v1_memory: tuple[Path, str] | None
    v2: tuple[Path, str] | None


def parse_mountinfo(text: str) -> CgroupMounts:
    """The v1 memory and the v2 mounts in ``/proc/self/mountinfo`` text (first of each)."""
    v1 = v2 = None
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields, after = left.split(), right.split()
        if not sep or len(fields) < 5 or len(after) < 3:
            continue
        root, mount_point, fstype, options = fields[3], Path(fields[4]), after[0], after[2].split(",")
        if fstype == "cgroup2" and v2 is None:
            v2 = (mount_point, root)
        elif fstype == "cgroup" and "memory" in options and v1 is None:
            v1 = (mount_point, root)
    return CgroupMounts(v1, v2)


def parse_proc_cgroup(text: str) -> tuple[str | None, str | None]:
    """(v1 memory cgroup path, v2 cgroup path) from ``/proc/PID/cgroup`` text."""
    v1 = v2 = None
    for line in text.splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            v2 = path
        elif "memory" in controllers.split(","):
            v1 = path
    return v1, v2


def _in_mount(mount: tuple[Path, str] | None, path: str | None, counter: str) -> list[Path]:
    """The counter file of ``path`` and of each ancestor visible under ``mount``, innermost first."""
    if mount is None or path is None:
        return []
    mount_point, root = mount
    relative = PurePosixPath(path)
    if root != "/":  # a bind-mounted sub-hierarchy (a container without a cgroup namespace)
        try:
            relative = PurePosixPath("/") / relative.relative_to(root)
        except ValueError:
            return []
    chain = [relative, *relative.parents]
    return [mount_point.joinpath(*p.parts[1:], counter) for p in chain]


def counter_files(proc_cgroup_text: str, mounts: CgroupMounts) -> list[Path]:
    """Every OOM counter file that a kill of this process would move (both versions)."""
    v1, v2 = parse_proc_cgroup(proc_cgroup_text)
    return [*_in_mount(mounts.v1_memory, v1, V1_COUNTER), *_in_mount(mounts.v2, v2, V2_COUNTER)]


def parse_oom_kill(text: str) -> int | None:
    """``oom_kill N`` from a ``memory.events`` or ``memory.oom_control`` file."""
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def read_oom_kill(path: Path) -> int | None:
    try:
        return parse_oom_kill(path.read_text())
    except OSError:
        return None


class OomWatch:
    """The OOM counters of one attempt: learnt per process while it lives, compared at the end.

    ``learn`` reads ``/proc/PID/cgroup`` (cheap: one small file) and takes the baseline of any
    counter file not seen before; ``kills_since_start`` says whether any counter moved since."""

    def __init__(self, proc: Path = Path("/proc"), mountinfo: Path = Path("/proc/self/mountinfo")) -> None:
        self.proc = proc
        try:
            self.mounts = parse_mountinfo(mountinfo.read_text())
        except OSError:
            self.mounts = CgroupMounts(None, None)
        self.baseline: dict[Path, int] = {}
        self._known: dict[int, str] = {}

    def learn(self, pids: list[int] | tuple[int, ...]) -> None:
        for pid in pids:
            try:
                text = (self.proc / str(pid) / "cgroup").read_text()
            except OSError:
                continue  # gone already: its cgroup was learnt before, or cannot be now
            if self._known.get(pid) == text:
                continue
            self._known[pid] = text
            for path in counter_files(text, self.mounts):
                if path not in self.baseline:
                    value = read_oom_kill(path)
                    if value is not None:
                        self.baseline[path] = value

    def kills_since_start(self) -> bool:
        return any((read_oom_kill(path) or 0) > before for path, before in self.baseline.items())
