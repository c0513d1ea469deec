"""``gpt2sup run -- SCRIPT.py ARGS`` end to end: a user's own torchrun script, unchanged.

The script is ``examples/guide_trainer.py``, a build-nanogpt style trainer that imports nothing
from gpt2sup: no heartbeats, no gpt2sup exit codes, no stop protocol. Real torchrun, real
signals, real files: each test breaks a live run the way production breaks it and checks what
the supervisor can know about a script it did not write (its exit, its output, its files).
"""
from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

import psutil
import pytest

from shared.exit_codes import SupervisorExit
from tests.supervisor.helpers import (
    REPO_ROOT,
    child_env,
    console_text,
    events_named,
    gpt2sup_argv,
    kill_process_tree,
    read_events,
    supervisor_json,
    wait_exit,
    wait_for,
)

pytestmark = pytest.mark.slow

SCRIPT = REPO_ROOT / "examples" / "guide_trainer.py"
# No --hang-timeout here: a script is judged by silence only when one is given (test 3 does).
FAST_ARGS = ["--monitor-interval", "0.5", "--backoff-initial", "0", "--kill-grace", "3"]
# --hang-timeout for the silence tests: short, as a user watching a fast-printing trainer would
# give. torchrun's start-up and the script's imports print nothing for longer than this on a loaded
# box (20-30 s here): a start-up is --startup-timeout's to judge, the silence of a script that
# has printed is --hang-timeout's.
SILENCE_TIMEOUT_S = 4


# --- running the script ------------------------------------------------------------------------
def start_script_run(tmp_path: Path, log_dir: Path, script_args: list[str], *supervisor_args: str,
                     nproc: int = 1, script: Path = SCRIPT) -> subprocess.Popen:
    """``gpt2sup run --log-dir LOG_DIR ... -- SCRIPT --log_dir LOG_DIR ARGS`` in ``tmp_path``;
    its console goes to ``<log_dir>.console`` (``console_text``)."""
    argv = gpt2sup_argv("run", "--log-dir", str(log_dir), "--nproc-per-node", str(nproc), *FAST_ARGS,
                        *supervisor_args, "--", str(script), *script_args)
    with open(f"{log_dir}.console", "ab") as console:
        return subprocess.Popen(argv, cwd=tmp_path, env=child_env(), stdout=console, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)


def guide_args(log_dir: Path, *extra: str) -> list[str]:
    return ["--log_dir", str(log_dir), *extra]


def run_gpt2sup(cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(gpt2sup_argv(*args), cwd=cwd, env=child_env(), check=False, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def processes_of(tmp_path: Path) -> list[psutil.Process]:
    """Every live process whose command line names ``tmp_path`` (supervisor, torchrun, ranks)."""
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if proc.status() != psutil.STATUS_ZOMBIE and any(str(tmp_path) in arg for arg in proc.cmdline()):
                found.append(proc)
    return found


def clean_up(tmp_path: Path, *procs: subprocess.Popen | None) -> None:
    """Nothing a test started outlives it, whatever it asserted: the supervisors' trees first,
    then any rank that was reparented away from them."""
    for proc in procs:
        if proc is not None and proc.poll() is None:
            kill_process_tree(proc.pid)
    for leftover in processes_of(tmp_path):
        with contextlib.suppress(psutil.Error):
            leftover.resume()  # a SIGSTOPped one
        kill_process_tree(leftover.pid)


def script_ranks(log_dir: Path, script: Path = SCRIPT) -> list[psutil.Process]:
    """The ranks of the current attempt: torchrun's children running ``script``."""
    launched = events_named(log_dir, "launched")
    if not launched:
        return []
    try:
        torchrun = psutil.Process(launched[-1]["pid"])
        children = torchrun.children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    ranks = []
    for child in children:
        with contextlib.suppress(psutil.Error):
            if any(arg.endswith(script.name) for arg in child.cmdline()):
                ranks.append(child)
    return ranks


def train_losses(log_dir: Path) -> dict[tuple[int, str], str]:
    """``log.txt``'s ``{step} train|val {loss}`` lines, the LAST of each step and kind: steps after
    a resumed checkpoint are done twice, and the second time is the one the weights come from."""
    losses: dict[tuple[int, str], str] = {}
    for line in (log_dir / "log.txt").read_text().splitlines():
        parts = line.split()
        if len(parts) == 3:
            losses[(int(parts[0]), parts[1])] = parts[2]
    return losses


def newest_logged_step(log_dir: Path) -> int:
    try:
        return max((step for step, kind in train_losses(log_dir) if kind == "train"), default=-1)
    except (OSError, ValueError):
        return -1


def checkpoints(log_dir: Path, pattern: str = "model_*.pt") -> list[Path]:
    return sorted(p for p in log_dir.glob(pattern) if not p.is_symlink())


def kill_the_ranks_and_truncate_the_newest(proc: subprocess.Popen, log_dir: Path,
                                           pattern: str = "model_*.pt") -> list[Path]:
    """SIGKILL the script's ranks and cut its newest checkpoint in half, with the supervisor frozen
    so that it validates only after the damage is done; the checkpoints as they were, oldest first.

    The oldest is touched: the script's own fallback (the newest mtime, used when
    ``latest_checkpoint.pt`` dangles) would pick it, so only a repointed link resumes from the
    one before the damaged file."""
    supervisor = psutil.Process(proc.pid)
    supervisor.suspend()
    try:
        for rank in script_ranks(log_dir):
            rank.send_signal(signal.SIGKILL)
        wait_for(lambda: not script_ranks(log_dir), 30, "the rank to die")
        saved = checkpoints(log_dir, pattern)
        with open(saved[-1], "r+b") as handle:
            handle.truncate(saved[-1].stat().st_size // 2)
        os.utime(saved[0])
    finally:
        supervisor.resume()
    return saved


def _guide_pickle() -> types.ModuleType:
    """``pickle`` that loads the guide's checkpoints here: they pickle its config as
    ``__main__.GPTConfig`` (``__main__`` is the script when it saves, pytest when we load)."""

    class GPTConfig:  # a stand-in: its fields are restored from the pickle as they are
        pass

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if (module, name) == ("__main__", "GPTConfig"):
                return GPTConfig
            return super().find_class(module, name)

    module = types.ModuleType("guide_pickle")
    module.Unpickler = Unpickler  # type: ignore[attr-defined]
    module.load = pickle.load  # type: ignore[attr-defined]
    return module


def assert_same_state(left_path: Path, right_path: Path) -> None:
    """Every tensor of the model and of the optimizer state, bit for bit."""
    import torch

    def tensors(value: Any, prefix: str) -> dict[str, Any]:
        if isinstance(value, torch.Tensor):
            return {prefix: value}
        if isinstance(value, dict):
            out: dict[str, Any] = {}
            for key, item in value.items():
                out.update(tensors(item, f"{prefix}.{key}"))
            return out
        if isinstance(value, (list, tuple)):
            out = {}
            for index, item in enumerate(value):
                out.update(tensors(item, f"{prefix}[{index}]"))
            return out
        return {}

    left = torch.load(left_path, map_location="cpu", weights_only=False, pickle_module=_guide_pickle())
    right = torch.load(right_path, map_location="cpu", weights_only=False, pickle_module=_guide_pickle())
    for part in ("model", "optimizer"):
        a, b = tensors(left[part], part), tensors(right[part], part)
        assert a.keys() == b.keys(), f"{part}: different keys"
        assert a, f"{part}: no tensors"
        different = [k for k in a if not torch.equal(a[k], b[k])]
        assert not different, f"{part} differs from the uninterrupted run in {different[:3]}"
    assert left["optimizer"]["param_groups"] == right["optimizer"]["param_groups"]


def attempt_log(log_dir: Path, number: int) -> str:
    try:
        return (log_dir / "attempts" / f"{number:03d}.log").read_text(errors="replace")
    except OSError:
        return ""


def event_lines(log_dir: Path) -> str:
    return "\n".join(f"{e.get('event')}: {e.get('message')}" for e in read_events(log_dir))


def failure_text(log_dir: Path) -> str:
    return f"events:\n{event_lines(log_dir)}\nconsole:\n{console_text(log_dir)[-3000:]}"


# --- the tests ---------------------------------------------------------------------------------
def test_a_sigkilled_rank_of_an_unchanged_script_is_restarted_with_its_resume_flag_and_finishes_bitwise(tmp_path):
    """A script's crash is restarted with ``--auto_resume`` appended (only then), and the resumed
    run is the uninterrupted one bit for bit: catches a relaunch without the flag (training
    silently starts over), a flag on the first launch, a relaunch in another cwd or with other
    arguments, and a resume from anything but the newest good checkpoint."""
    args = ["--max_steps", "24", "--checkpoint_interval", "8", "--step_sleep", "0.1", "--dropout", "0.1"]
    reference_dir, log_dir = tmp_path / "reference", tmp_path / "run"
    reference = proc = None
    try:
        reference = subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(SCRIPT),
             *guide_args(reference_dir, *args)],
            cwd=tmp_path, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL)
        proc = start_script_run(tmp_path, log_dir, guide_args(log_dir, *args), nproc=2)
        wait_for(lambda: (log_dir / "model_00008.pt").exists() and newest_logged_step(log_dir) > 10, 300,
                 "checkpoint 8 and step 11")
        ranks = wait_for(lambda: len(script_ranks(log_dir)) == 2 and script_ranks(log_dir), 30, "two ranks")
        ranks[-1].send_signal(signal.SIGKILL)

        code = wait_exit(proc, log_dir, timeout=300)
        assert code == SupervisorExit.FINISHED, failure_text(log_dir)
        assert reference.wait(300) == 0, "the reference run failed"
        crashed = events_named(log_dir, "crashed")
        assert len(crashed) == 1 and "SIGKILL" in crashed[0]["message"], failure_text(log_dir)
        launched = events_named(log_dir, "launched")
        assert len(launched) == 2, failure_text(log_dir)
        first, second = launched[0]["argv"], launched[1]["argv"]
        assert "--auto_resume" not in first and second[-1] == "--auto_resume", (first, second)
        assert second[:-1] == first  # the same script, the same arguments
        assert "resumed from" in attempt_log(log_dir, 2)

        assert_same_state(log_dir / "model_00023.pt", reference_dir / "model_00023.pt")
        ours, theirs = train_losses(log_dir), train_losses(reference_dir)
        assert sorted(step for step, kind in theirs if kind == "train") == list(range(24))
        assert ours == theirs, "per-step losses differ from the uninterrupted run"
    finally:
        clean_up(tmp_path, proc, reference)


def test_a_truncated_newest_checkpoint_of_a_script_is_quarantined_and_the_previous_one_used(tmp_path):
    """A checkpoint cut short (the node died mid-copy, a full disk) is set aside before the
    restart and the script resumes from the one before it, through a repointed
    ``latest_checkpoint.pt``: catches a validation that passes a torn file (the script would
    crash on it at every restart), a quarantine that leaves the link dangling, and a resume from
    whatever the script's own fallback (the newest mtime) happens to find."""
    log_dir = tmp_path / "run"
    args = guide_args(log_dir, "--max_steps", "40", "--checkpoint_interval", "4", "--step_sleep", "0.05")
    proc = None
    try:
        proc = start_script_run(tmp_path, log_dir, args)
        wait_for(lambda: (log_dir / "model_00016.pt").exists(), 300, "checkpoint 16")
        saved = kill_the_ranks_and_truncate_the_newest(proc, log_dir)
        newest, previous = saved[-1], saved[-2]

        code = wait_exit(proc, log_dir, timeout=300)
        assert code == SupervisorExit.FINISHED, failure_text(log_dir)
        quarantined = events_named(log_dir, "quarantined")
        assert [e["checkpoint"] for e in quarantined] == [newest.name], failure_text(log_dir)
        assert (log_dir / (newest.name + ".corrupt")).exists()
        valid = [e for e in events_named(log_dir, "checkpoint_valid") if e.get("checkpoint")]
        assert valid and valid[-1]["checkpoint"] == previous.name, failure_text(log_dir)
        resumed = [line for line in attempt_log(log_dir, 2).splitlines() if line.startswith("resumed from")]
        assert resumed == [f"resumed from {previous.resolve()} at step {int(previous.stem[6:]) + 1}"], \
            attempt_log(log_dir, 2)[:2000]
        link = log_dir / "latest_checkpoint.pt"
        assert link.is_symlink() and os.readlink(link) == "model_00039.pt"
        assert len(events_named(log_dir, "launched")) == 2
    finally:
        clean_up(tmp_path, proc)


def test_a_scripts_own_checkpoint_names_are_found_by_the_glob_quarantined_resumed_and_listed(tmp_path):
    """``gpt2sup run --checkpoint-glob run/step_*.pt -- SCRIPT`` (no --log-dir: the glob's
    directory is the run's): the script's ``step_NNNNN.pt`` files are its checkpoints. A truncated
    newest one is quarantined before the restart, the script resumes from the previous one
    through the repointed link, and ``status``, ``verify`` and a plain rerun see the same files.
    Catches a supervisor that still looks for ``model_*.pt`` (it would find nothing to judge, append
    no resume flag, and the script would start over), and readers that ignore the run's naming."""
    log_dir = tmp_path / "run"
    args = guide_args(log_dir, "--max_steps", "40", "--checkpoint_interval", "4", "--step_sleep", "0.05",
                      "--checkpoint_prefix", "step_")
    argv = gpt2sup_argv("run", "--checkpoint-glob", "run/step_*.pt", "--nproc-per-node", "1", *FAST_ARGS,
                        "--", str(SCRIPT), *args)
    proc = None
    try:
        with open(f"{log_dir}.console", "ab") as console:
            proc = subprocess.Popen(argv, cwd=tmp_path, env=child_env(), stdout=console, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        wait_for(lambda: (log_dir / "step_00016.pt").exists(), 300, "checkpoint 16")
        saved = kill_the_ranks_and_truncate_the_newest(proc, log_dir, "step_*.pt")
        newest, previous = saved[-1], saved[-2]

        code = wait_exit(proc, log_dir, timeout=300)
        assert code == SupervisorExit.FINISHED, failure_text(log_dir)
        assert [e["checkpoint"] for e in events_named(log_dir, "quarantined")] == [newest.name], failure_text(log_dir)
        assert (log_dir / (newest.name + ".corrupt")).exists()
        valid = [e for e in events_named(log_dir, "checkpoint_valid") if e.get("checkpoint")]
        assert valid and valid[-1]["checkpoint"] == previous.name, failure_text(log_dir)
        resumed = [line for line in attempt_log(log_dir, 2).splitlines() if line.startswith("resumed from")]
        assert resumed == [f"resumed from {previous.resolve()} at step {int(previous.stem[5:]) + 1}"], \
            attempt_log(log_dir, 2)[:2000]
        assert os.readlink(log_dir / "latest_checkpoint.pt") == "step_00039.pt"
        assert not list(log_dir.glob("model_*")), "the run wrote files of gpt2sup's naming"
    finally:
        clean_up(tmp_path, proc)

    status = run_gpt2sup(tmp_path, "status", "--log-dir", "run")
    assert status.returncode == 0 and "step_00039.pt" in status.stdout, status.stdout + status.stderr
    verified = run_gpt2sup(tmp_path, "verify", "run", timeout=300)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "step_00039.pt" in verified.stdout and "step_00004.pt" in verified.stdout, verified.stdout
    page = tmp_path / "report.html"
    reported = run_gpt2sup(tmp_path, "report", "--log-dir", "run", "--out", str(page))
    assert reported.returncode == 0, reported.stdout + reported.stderr
    html = page.read_text()
    assert "step_00039.pt" in html and f"{newest.name}.corrupt" in html, reported.stdout
    # A plain rerun: the recorded naming names the finished run's last checkpoint.
    again = run_gpt2sup(tmp_path, "run", "--log-dir", "run", *FAST_ARGS)
    assert again.returncode == SupervisorExit.FINISHED, again.stdout + again.stderr
    assert "step_00039.pt" in again.stdout + again.stderr, again.stdout + again.stderr
    assert len(events_named(log_dir, "launched")) == 2


def test_a_stopped_script_with_an_explicit_hang_timeout_is_found_by_its_silence_and_restarted(tmp_path):
    """With ``--hang-timeout`` a script without heartbeats is judged by its silence: a SIGSTOPped
    rank (a deadlocked collective, a stuck NFS read) is found, its evidence captured, the tree
    killed and the script resumed. Catches silence detection that never fires (the run hangs
    forever), fires on the supervisor's own files or on a healthy start-up that prints nothing
    yet, or relaunches without the resume flag."""
    log_dir = tmp_path / "run"
    args = guide_args(log_dir, "--max_steps", "60", "--checkpoint_interval", "8", "--step_sleep", "0.05")
    proc = None
    try:
        proc = start_script_run(tmp_path, log_dir, args, "--hang-timeout", str(SILENCE_TIMEOUT_S))
        wait_for(lambda: (log_dir / "model_00008.pt").exists() or proc.poll() is not None, 300, "checkpoint 8")
        assert not events_named(log_dir, "hung"), failure_text(log_dir)  # a healthy start is not a hang
        ranks = script_ranks(log_dir)
        assert len(ranks) == 1, failure_text(log_dir)
        stopped_at = time.time()
        ranks[0].suspend()
        hung = wait_for(lambda: events_named(log_dir, "hung"), SILENCE_TIMEOUT_S + 30, "the hung event")[0]
        # the silence counts from the last output seen, at most a step and a monitor poll before the stop
        assert SILENCE_TIMEOUT_S - 1 <= hung["time"] - stopped_at < SILENCE_TIMEOUT_S + 10, hung
        assert "silence" in hung["message"] and "no output and no file written" in hung["message"], hung
        wait_for(lambda: len(events_named(log_dir, "launched")) == 2 or proc.poll() is not None, 60, "the relaunch")
        assert not ranks[0].is_running() or ranks[0].status() == psutil.STATUS_ZOMBIE, "the stopped rank survived"

        code = wait_exit(proc, log_dir, timeout=300)
        assert code == SupervisorExit.FINISHED, failure_text(log_dir)
        assert len(events_named(log_dir, "hung")) == 1, failure_text(log_dir)
        (evidence,) = events_named(log_dir, "evidence_captured")
        incident = log_dir / evidence["incident"]
        assert "silence" in (incident / "summary.json").read_text()
        assert "do_signal_stop" in (incident / "proc-rank0.txt").read_text()
        launched = events_named(log_dir, "launched")
        assert "--auto_resume" not in launched[0]["argv"] and launched[1]["argv"][-1] == "--auto_resume"
        assert "resumed from" in attempt_log(log_dir, 2)
        assert (log_dir / "model_00059.pt").exists()
    finally:
        clean_up(tmp_path, proc)


def test_the_evidence_of_a_silent_script_does_not_kill_it_before_its_stacks_are_taken(tmp_path):
    """A script hung in a call (a deadlocked collective: alive, not stopped, silent) is the case
    hang evidence is for: py-spy must get its stacks. gpt2sup's worker dumps its stacks on
    SIGUSR1; an unchanged script has no such handler, and SIGUSR1's default action ends the
    process. Catches evidence capture that kills a script's rank with its own SIGUSR1 before
    py-spy reads it (the incident then holds no stack of the hang)."""
    if not shutil.which("py-spy", path=child_env().get("PATH")):
        pytest.skip("py-spy not installed")
    log_dir = tmp_path / "run"
    stuck = tmp_path / "stuck_in_a_call.py"
    stuck.write_text("import time\n\n\ndef wait_for_a_peer_that_never_comes():\n    time.sleep(600)\n\n\n"
                     "print('training', flush=True)\nwait_for_a_peer_that_never_comes()\n")
    proc = None
    try:
        # A timeout above torchrun's silent start-up on a loaded box, whatever judges that.
        proc = start_script_run(tmp_path, log_dir, [], "--hang-timeout", "45", "--max-restarts", "0", script=stuck)
        code = wait_exit(proc, log_dir, timeout=240)
        assert code == SupervisorExit.GAVE_UP, failure_text(log_dir)
        assert len(events_named(log_dir, "hung")) == 1, failure_text(log_dir)
        (evidence,) = events_named(log_dir, "evidence_captured")
        incident = log_dir / evidence["incident"]
        stacks = (incident / "py-spy-rank0.txt").read_text() if (incident / "py-spy-rank0.txt").exists() else ""
        assert "wait_for_a_peer_that_never_comes" in stacks, (
            f"no stack of the hung rank; errors {evidence.get('errors')}; py-spy:\n{stacks[:1500]}\n"
            f"attempt log:\n{attempt_log(log_dir, 1)[-1500:]}")
        assert "SIGUSR1" not in attempt_log(log_dir, 1), attempt_log(log_dir, 1)[-1500:]
    finally:
        clean_up(tmp_path, proc)


def test_without_a_hang_timeout_a_script_is_not_judged_by_silence_and_status_says_detection_is_off(tmp_path):
    """Without ``--hang-timeout`` a script that is quiet for a long while (a long evaluation, a
    dataset download) is left alone, and the operator is told that hangs go unseen: catches a
    default silence timeout that kills healthy quiet scripts, and a run that says nothing about
    its hang detection being off."""
    log_dir = tmp_path / "run"
    quiet = tmp_path / "quiet.py"
    quiet.write_text("import time\ntime.sleep(6)\n")
    proc = None
    try:
        proc = start_script_run(tmp_path, log_dir, [], script=quiet)
        code = wait_exit(proc, log_dir, timeout=180)
        assert code == SupervisorExit.FINISHED, failure_text(log_dir)
        assert not events_named(log_dir, "hung"), failure_text(log_dir)
        assert len(events_named(log_dir, "launched")) == 1
        warnings = [e["message"] for e in events_named(log_dir, "warning")]
        assert any("hang detection is OFF" in w for w in warnings), warnings
        status = run_gpt2sup(tmp_path, "status", "--log-dir", str(log_dir))
        assert "hang detection: OFF" in status.stdout, status.stdout + status.stderr
    finally:
        clean_up(tmp_path, proc)


def test_sigterm_to_the_supervisor_stops_the_script_and_the_run_ends_stopped(tmp_path):
    """SIGTERM to the supervisor (a SLURM time limit, Ctrl-C) reaches the script's ranks and the
    run ends ``stopped`` (exit 4) with nothing left running, and a later run continues from the
    newest checkpoint. Catches a stop that leaves a script training unwatched, a stop reported as
    a crash or a finish, and a rerun that starts over."""
    log_dir = tmp_path / "run"
    proc = again = None
    try:
        proc = start_script_run(tmp_path, log_dir, guide_args(
            log_dir, "--max_steps", "1000", "--checkpoint_interval", "8", "--step_sleep", "0.05"))
        wait_for(lambda: (log_dir / "model_00008.pt").exists(), 300, "checkpoint 8")
        ranks = script_ranks(log_dir)
        assert ranks
        proc.send_signal(signal.SIGTERM)
        code = wait_exit(proc, log_dir, timeout=120)
        assert code == SupervisorExit.STOPPED, failure_text(log_dir)
        endings = [e for e in read_events(log_dir)
                   if e.get("event") in ("stopped", "finished", "gave_up", "refused", "finished_without_checkpoint")]
        assert endings and endings[-1]["event"] == "stopped", failure_text(log_dir)
        assert "(exit 4)" in endings[-1]["message"], endings[-1]
        assert supervisor_json(log_dir)["state"] == "stopped"
        assert not events_named(log_dir, "crashed") and not events_named(log_dir, "restarted"), failure_text(log_dir)
        time.sleep(1)  # anything still alive now outlived its supervisor
        left = processes_of(tmp_path)
        assert not left, f"processes of the run left behind: {[p.cmdline() for p in left]}"

        newest = checkpoints(log_dir)[-1]
        last_step = int(newest.stem[6:]) + 3
        again = start_script_run(tmp_path, log_dir, guide_args(
            log_dir, "--max_steps", str(last_step + 1), "--checkpoint_interval", "8", "--step_sleep", "0.05"))
        code = wait_exit(again, log_dir, timeout=300)
        assert code == SupervisorExit.FINISHED, failure_text(log_dir)
        relaunch = events_named(log_dir, "launched")[-1]["argv"]
        assert relaunch[-1] == "--auto_resume", relaunch
        log = attempt_log(log_dir, len(events_named(log_dir, "launched")))
        assert f"resumed from {newest.resolve()}" in log, log[:2000]
        assert (log_dir / f"model_{last_step:05d}.pt").exists()
    finally:
        clean_up(tmp_path, proc, again)


def test_a_script_that_does_not_exist_is_one_line_and_nothing_starts(tmp_path):
    """A mistyped script path is one line and exit 2 before anything starts: catches a launch
    that torchrun reports as a crash and the restart budget then repeats ten times."""
    log_dir = tmp_path / "run"
    done = run_gpt2sup(tmp_path, "run", "--log-dir", str(log_dir), "--nproc-per-node", "1", *FAST_ARGS,
                       "--", "no_such_trainer.py", "--max_steps", "5")
    assert done.returncode == SupervisorExit.REFUSED, done.stdout + done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "no such script" in lines[0] and "no_such_trainer.py" in lines[0], done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert not (log_dir / "attempts").exists()
    assert not events_named(log_dir, "launched")


def test_a_script_that_rejects_its_arguments_gives_up_at_once_with_argparses_line(tmp_path):
    """Exit 2 from a script is argparse refusing its command line: no restart can fix that, so
    the run gives up at once and names argparse's own line. Catches ten pointless restarts and
    a give-up that hides why."""
    log_dir = tmp_path / "run"
    proc = None
    try:
        proc = start_script_run(tmp_path, log_dir, guide_args(log_dir, "--max_steps", "5", "--no_such_flag"))
        code = wait_exit(proc, log_dir, timeout=180)
        assert code == SupervisorExit.GAVE_UP, failure_text(log_dir)
        assert len(events_named(log_dir, "launched")) == 1, failure_text(log_dir)
        assert not events_named(log_dir, "restarted"), failure_text(log_dir)
        (gave_up,) = events_named(log_dir, "gave_up")
        assert "unrecognized arguments: --no_such_flag" in gave_up["message"], gave_up
        assert "unrecognized arguments: --no_such_flag" in console_text(log_dir)
        assert supervisor_json(log_dir)["state"] == "gave_up"
    finally:
        clean_up(tmp_path, proc)


def test_a_plain_rerun_on_a_scripts_directory_relaunches_the_same_script(tmp_path):
    """A plain ``gpt2sup run --log-dir D`` on a script's finished run, typed in another
    directory, acts on that script's run: it says the run is already finished and launches
    nothing, and never starts gpt2sup's own worker on the script's checkpoints (which would
    refuse them, or worse, train on from them with other code)."""
    log_dir = tmp_path / "run"
    proc = None
    try:
        proc = start_script_run(tmp_path, log_dir, guide_args(log_dir, "--max_steps", "10"))
        code = wait_exit(proc, log_dir, timeout=300)
        assert code == SupervisorExit.FINISHED, failure_text(log_dir)
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        again = run_gpt2sup(elsewhere, "run", "--log-dir", str(log_dir), timeout=300)
        output = again.stdout + again.stderr
        assert again.returncode == SupervisorExit.FINISHED, output + failure_text(log_dir)
        launched = events_named(log_dir, "launched")
        assert all("worker.train_gpt2" not in e["argv"] for e in launched), [e["argv"] for e in launched]
        assert all(str(SCRIPT) in e["argv"] for e in launched)
        assert len(launched) == 1, f"a finished run was relaunched: {output}"
        assert "already finished at step 9" in output, output
        assert "model_00009.pt" in output
        assert not (elsewhere / "log").exists()  # nothing trained in the directory it was typed in
    finally:
        clean_up(tmp_path, proc)


# ``--probe MODULE:FUNCTION``: the user's own restore without training, run on each checkpoint in
# the probe child. This one stands for a restore that fails on checkpoints from step 12 on (say,
# a model change the script's own resume cannot load): the generic checks pass them, the probe
# does not.
USER_PROBE = '''
import re


def restore(path):
    step = int(re.search(r"model_(\\d+)\\.pt", path).group(1))
    if step >= 12:
        raise RuntimeError(f"cannot load step {step}: size mismatch for transformer.h.0.attn")
'''


def test_a_scripts_own_probe_rejects_a_checkpoint_the_generic_checks_pass(tmp_path):
    """``gpt2sup run --probe userprobe:restore -- SCRIPT``: before the restart, a checkpoint the
    user's restore fails on is quarantined with the probe's reason and the script resumes from the
    newest one it restores. Catches a --probe that is parsed but never reaches the probe child
    (the generic checks alone pass every file here), and one imported from the wrong directory."""
    (tmp_path / "userprobe.py").write_text(USER_PROBE)
    log_dir = tmp_path / "run"
    args = guide_args(log_dir, "--max_steps", "40", "--checkpoint_interval", "4", "--step_sleep", "0.05")
    proc = None
    try:
        proc = start_script_run(tmp_path, log_dir, args, "--probe", "userprobe:restore")
        wait_for(lambda: (log_dir / "model_00016.pt").exists(), 300, "checkpoint 16")
        for rank in script_ranks(log_dir):
            rank.send_signal(signal.SIGKILL)
        code = wait_exit(proc, log_dir, timeout=300)
        assert code == SupervisorExit.FINISHED, failure_text(log_dir)
        quarantined = events_named(log_dir, "quarantined")
        assert quarantined and all(int(e["checkpoint"][6:11]) >= 12 for e in quarantined), failure_text(log_dir)
        assert any("--probe userprobe:restore could not restore it: RuntimeError: cannot load step" in e["message"]
                   for e in quarantined), failure_text(log_dir)
        valid = [e for e in events_named(log_dir, "checkpoint_valid") if e.get("checkpoint")]
        assert valid[0]["checkpoint"] == "model_00008.pt", failure_text(log_dir)
        assert "resumed from" in attempt_log(log_dir, 2) and "model_00008.pt" in attempt_log(log_dir, 2)
    finally:
        clean_up(tmp_path, proc)


def test_probe_is_refused_in_one_line_for_gpt2sups_own_worker_and_when_misspelled(tmp_path):
    for args, words in ((["--probe", "userprobe:restore", "--", "--max_steps", "3"], "--probe is for a script"),
                        (["--probe", "userprobe.restore", "--", str(SCRIPT)], "--probe must be MODULE:FUNCTION")):
        done = run_gpt2sup(tmp_path, "run", "--log-dir", str(tmp_path / "run"), *args)
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode == SupervisorExit.REFUSED and len(lines) == 1 and words in lines[0], done.stderr
        assert not (tmp_path / "run" / "attempts").exists()
