"""A rank killed by the OOM killer inside a memory cgroup is "out of memory", not "killed by SIGKILL".

The parsing is tested on real-format ``/proc/PID/cgroup``, ``mountinfo``, ``memory.events`` (v2)
and ``memory.oom_control`` (v1) files written to tmp; where this machine lets root create a memory
cgroup with a limit, a real process is OOM-killed inside one (and a real ``gpt2sup run`` names it).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.attempts.memory_cgroup import (
    CgroupMounts,
    OomWatch,
    counter_files,
    parse_mountinfo,
    parse_oom_kill,
    parse_proc_cgroup,
)

REPO = Path(__file__).resolve().parents[3]
MiB = 1024 * 1024

V1_PROC_CGROUP = """12:pids:/slurm/uid_0/job_7/step_0
4:memory:/slurm/uid_0/job_7/step_0/task_0
3:cpu,cpuacct:/slurm/uid_0/job_7
0::/
"""
V2_PROC_CGROUP = "0::/kubepods.slice/pod1234.slice/cri-containerd-ab.scope\n"
V2_EVENTS = "low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n"
V1_OOM_CONTROL = "oom_kill_disable 0\nunder_oom 0\noom_kill 5\n"


def mountinfo(v1: Path | None, v2: Path | None, v1_root: str = "/") -> str:
    lines = ["31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755",
             "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu"]
    if v1 is not None:
        lines.append(f"35 31 0:32 {v1_root} {v1} rw,nosuid,nodev,noexec,relatime shared:9 - cgroup cgroup rw,memory")
    if v2 is not None:
        lines.append(f"41 31 0:38 / {v2} rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate")
    return "\n".join(lines) + "\n"


def test_parsing_of_real_format_files() -> None:
    assert parse_proc_cgroup(V1_PROC_CGROUP) == ("/slurm/uid_0/job_7/step_0/task_0", "/")
    assert parse_proc_cgroup(V2_PROC_CGROUP) == (None, "/kubepods.slice/pod1234.slice/cri-containerd-ab.scope")
    assert parse_oom_kill(V2_EVENTS) == 2 and parse_oom_kill(V1_OOM_CONTROL) == 5
    assert parse_oom_kill("oom 1\n") is None
    mounts = parse_mountinfo(mountinfo(Path("/sys/fs/cgroup/memory"), Path("/sys/fs/cgroup/unified")))
    assert mounts == CgroupMounts((Path("/sys/fs/cgroup/memory"), "/"), (Path("/sys/fs/cgroup/unified"), "/"))
    files = counter_files(V1_PROC_CGROUP, mounts)
    # the rank's own cgroup first, then every ancestor (the limit may be the job's), both versions
    assert files[0] == Path("/sys/fs/cgroup/memory/slurm/uid_0/job_7/step_0/task_0/memory.oom_control")
    assert Path("/sys/fs/cgroup/memory/slurm/uid_0/job_7/memory.oom_control") in files
    assert files[-1] == Path("/sys/fs/cgroup/unified/memory.events")
    # a container that sees only its own sub-hierarchy (mount root /docker/ID, no cgroup namespace)
    docker = CgroupMounts((Path("/sys/fs/cgroup/memory"), "/docker/ab"), None)
    assert counter_files("4:memory:/docker/ab/inner\n", docker)[:2] == [
        Path("/sys/fs/cgroup/memory/inner/memory.oom_control"), Path("/sys/fs/cgroup/memory/memory.oom_control")]


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_a_kill_counted_in_the_rank_s_own_cgroup_is_seen_not_the_root_s(tmp_path: Path, version: str) -> None:
    """The old reader looked only at the root cgroup's counter, which a job's OOM never moves."""
    sys_fs = tmp_path / "sys" / "fs" / "cgroup"
    own = ("job_7", "step_0") if version == "v1" else ("kubepods.slice", "pod1.slice")
    counter, text = ("memory.oom_control", V1_OOM_CONTROL) if version == "v1" else ("memory.events", V2_EVENTS)
    for depth in range(len(own) + 1):
        directory = sys_fs.joinpath(*own[:depth])
        directory.mkdir(parents=True, exist_ok=True)
        (directory / counter).write_text(text)
    (tmp_path / "mountinfo").write_text(mountinfo(sys_fs if version == "v1" else None,
                                                  sys_fs if version == "v2" else None))
    proc = tmp_path / "proc"
    (proc / "4242").mkdir(parents=True)
    (proc / "4242" / "cgroup").write_text(f"4:memory:/{'/'.join(own)}\n0::/\n" if version == "v1"
                                          else f"0::/{'/'.join(own)}\n")
    watch = OomWatch(proc=proc, mountinfo=tmp_path / "mountinfo")
    watch.learn([4242])
    assert not watch.kills_since_start()
    (proc / "4242" / "cgroup").unlink()  # the rank is dead: its /proc entry is gone
    own_counter = sys_fs.joinpath(*own, counter)
    own_counter.write_text(own_counter.read_text().replace("oom_kill 5", "oom_kill 6").replace("oom_kill 2", "oom_kill 3"))
    watch.learn([4242])
    assert watch.kills_since_start()  # the root's counter (sys_fs/counter) never moved


# --- a real memory cgroup, where root may create one ---------------------------------------------

def _own_memory_cgroup() -> tuple[str, Path]:
    """("v1" or "v2", our own memory cgroup's directory)."""
    mounts = parse_mountinfo(Path("/proc/self/mountinfo").read_text())
    v1, v2 = parse_proc_cgroup(Path("/proc/self/cgroup").read_text())
    if mounts.v1_memory is not None and v1 is not None and mounts.v1_memory[1] == "/":
        return "v1", mounts.v1_memory[0].joinpath(*Path(v1).parts[1:])
    if mounts.v2 is not None and v2 is not None and mounts.v2[1] == "/":
        return "v2", mounts.v2[0].joinpath(*Path(v2).parts[1:])
    pytest.skip("no memory cgroup hierarchy visible here")


@pytest.fixture
def limited_cgroup() -> Iterator[Path]:
    """A child of our own memory cgroup limited to 64 MiB (no swap), removed afterwards."""
    if os.geteuid() != 0:
        pytest.skip("creating a memory cgroup needs root")
    version, parent = _own_memory_cgroup()
    child = parent / f"gpt2sup-test-{uuid.uuid4().hex[:8]}"
    try:
        child.mkdir()
        if version == "v1":
            (child / "memory.limit_in_bytes").write_text(str(64 * MiB))
            if (child / "memory.memsw.limit_in_bytes").exists():
                (child / "memory.memsw.limit_in_bytes").write_text(str(64 * MiB))
        else:
            (child / "memory.max").write_text(str(64 * MiB))
            if (child / "memory.swap.max").exists():
                (child / "memory.swap.max").write_text("0")
    except OSError as exc:
        if child.exists():
            child.rmdir()
        pytest.skip(f"cannot create a memory cgroup with a limit here ({version}: {exc.strerror or exc})")
    try:
        yield child
    finally:
        for _ in range(50):
            try:
                child.rmdir()
                break
            except OSError:
                import time

                time.sleep(0.1)


def _default_signals() -> None:
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)


@pytest.mark.slow
def test_a_process_oom_killed_in_a_real_memory_cgroup_is_counted(limited_cgroup: Path) -> None:
    code = ("import os, sys, time; from pathlib import Path; "
            "Path(sys.argv[1], 'cgroup.procs').write_text(str(os.getpid())); sys.stdin.readline(); "
            "b = bytearray(1 << 30); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(limited_cgroup)], stdin=subprocess.PIPE,
                            preexec_fn=_default_signals)  # noqa: PLW1509 - before exec, no lock taken
    try:
        watch = OomWatch()
        watch.learn([os.getpid()])
        import time

        deadline = time.monotonic() + 30
        while str(proc.pid) not in (limited_cgroup / "cgroup.procs").read_text():
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        watch.learn([proc.pid])
        assert not watch.kills_since_start()
        proc.stdin.write(b"go\n")
        proc.stdin.close()
        assert proc.wait(timeout=60) == -signal.SIGKILL
        assert watch.kills_since_start()
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.slow
def test_gpt2sup_run_names_an_oom_kill_inside_the_rank_s_own_cgroup(tmp_path: Path, limited_cgroup: Path) -> None:
    """Issue 19 item 4: it used to say `killed by SIGKILL` (it read the root cgroup's counter)."""
    from shared.exit_codes import SupervisorExit
    from tests.supervisor.helpers import (
        console_text,
        one_process_worker_args,
        read_events,
        start_supervisor,
        supervisor_json,
        wait_exit,
    )

    log_dir = tmp_path / "run"
    args = one_process_worker_args()
    proc = start_supervisor(log_dir, "--worker", "tests.supervisor.oom_worker", "--max-restarts", "0", nproc=1,
                            worker_args=args, env={"GPT2SUP_TEST_OOM_CGROUP": str(limited_cgroup)})
    assert wait_exit(proc, log_dir, timeout=120) == SupervisorExit.GAVE_UP, console_text(log_dir)[-3000:]
    failure = supervisor_json(log_dir)["last_failure"]
    assert failure["kind"] == "oom", failure
    assert "rank 0 ran out of memory (kernel OOM kill)" in failure["reason"], failure
    assert any("ran out of memory" in e["message"] for e in read_events(log_dir)), console_text(log_dir)[-3000:]
