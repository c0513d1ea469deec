"""Seeded chaos soak: many mixed faults against one supervised 2-rank run, then a bitwise check.

    python bench/chaos_soak.py [--seed N] [--faults 12] [--max-steps 200]     # full soak
    python bench/chaos_soak.py --short                                         # 5 faults, 144 steps, 1 process

One run of the tiny model (2 processes, dropout > 0; ``--short``, the suite's form, 1 process) on its own tmpfs is broken again and again
while it trains: a worker SIGKILLed, a rank SIGSTOPped (hang), the supervisor SIGKILLed (then a
new ``gpt2sup run``), the supervisor SIGSTOPped (then SIGCONT), SIGHUP to the supervisor (then a
new ``gpt2sup run``), the disk filled to 100%, a rank stopped while it saves, a byte flipped in
the checkpoint chosen for the restart (between validation and the workers' load), and a load-probe
timeout (a supervisor relaunched with a tiny ``--probe-timeout``: validation is inconclusive, so it
must resume from the newest checkpoint UNVERIFIED, with a warning, never quarantine, never restart
from scratch). The last fault is always a full disk during the run's last save: that supervisor
must end ``finished_without_checkpoint`` (exit 5), never "finished"; the disk is then freed and a
new ``gpt2sup run`` finishes the run. The fault sequence and the steps it strikes at come from
``--seed``; the seed is printed first so a failure replays.

Pass criteria, checked at the end:
- the final checkpoint's tensors and every step's loss equal an uninterrupted run's, bit for bit;
- every fault had the outcome it must have (e.g. exit 5 after the last save failed);
- no process of the run is left (none started with this ``--log_dir``, none recorded);
- every fault shows up in ``events.jsonl`` after it was injected.
Prints one row per fault (what, at which step, which event saw it, after how long) and a summary.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.disk_fill import fill_disk, mounted_tmpfs
from shared.process_identity import same_process_alive
from shared.run_dir import RunDir
from supervisor.attempts.process_tree import processes_with_log_dir

NPROC = 2
CHECKPOINT_INTERVAL = 4
# Every kind once, then seeded extras drawn from the kinds that are cheap to repeat.
FAULT_KINDS = (
    "worker_sigkill", "rank_sigstop", "supervisor_sigkill", "supervisor_sigstop", "sighup",
    "full_disk", "stop_during_save", "byte_flip", "probe_timeout",
)
ALWAYS = ("byte_flip", "probe_timeout")  # in every plan, however short
# --short (the suite's form) also always stops the supervisor: no other test proves that fault.
SHORT_ALWAYS = (*ALWAYS, "supervisor_sigstop")
LAST_SAVE_FAULT = "full_disk_last_save"  # always the last fault: it ends the run (exit 5)
REPEATABLE = ("worker_sigkill", "rank_sigstop", "supervisor_sigkill", "sighup", "stop_during_save", "full_disk")
# Events that prove a fault was seen, per kind: (event kinds, test on the record).
EVIDENCE: dict[str, tuple[tuple[str, ...], Callable[[dict], bool]]] = {
    "worker_sigkill": (("crashed",), lambda e: True),
    "rank_sigstop": (("hung",), lambda e: True),
    "supervisor_sigkill": (("orphans_killed", "warning"),
                           lambda e: e["event"] == "orphans_killed" or "previous_supervisor" in e),
    "supervisor_sigstop": (("warning",), lambda e: "not scheduled" in str(e.get("message"))),
    "sighup": (("stop_requested",), lambda e: e.get("signal") == "SIGHUP"),
    "full_disk": (("disk_warning", "journal_error", "crashed"), lambda e: e.get("level") != "ok"),
    "stop_during_save": (("hung",), lambda e: True),
    "byte_flip": (("quarantined", "crashed"), lambda e: e["event"] == "quarantined" or e.get("kind") == "bad_checkpoint"),
    "probe_timeout": (("checkpoint_valid", "quarantined"),
                      lambda e: e["event"] == "quarantined" or bool(e.get("inconclusive"))),
    LAST_SAVE_FAULT: (("finished_without_checkpoint",), lambda e: True),
}
SUPERVISOR_ARGS = [
    "--hang-timeout", "8", "--monitor-interval", "0.5", "--startup-timeout", "240",
    "--checkpoint-timeout", "20", "--eval-timeout", "60", "--backoff-initial", "0", "--kill-grace", "3",
    "--max-restarts", "100", "--max-no-progress-restarts", "0",
]
TMPFS_SIZE = "320m"
# --short, and the slow test. Training goes on while the supervisor is stopped (7 s: up to ~50
# tiny steps on a quiet machine) or the disk is full (at most FULL_DISK_MAX_STEPS): the steps must
# outlast every fault, or the run ends before the last one (CI once reached the final step during
# the full disk, with 96 steps).
SHORT_FAULTS, SHORT_MAX_STEPS = 5, 144
# --short runs one process: none of its faults is about a second rank (those are proven by their
# own end-to-end tests; the full soak keeps 2), and a rank less per attempt is ~40 CPU-s of the
# suite's. One rank steps about twice as fast, so a sleep in every step (no change to the math)
# keeps the steps that go by while the supervisor is stopped or the disk is full within the run.
SHORT_NPROC = 1
ONE_PROCESS_STEP_SLEEP_S = 0.05
# The last save's disk: full but for this much, too little for a checkpoint (40 MB), enough for the
# heartbeats and the journal, so the worker can say why it ends (a 100% full disk is ``full_disk``).
LAST_SAVE_SPARE_BYTES = 4 << 20
HOLD_FULL_DISK_S = 8.0  # the full_disk fault: this long (over the 8 s hang timeout), or
FULL_DISK_MAX_STEPS = 30  # until the run trained this many steps on the full disk
STOPPED_SUPERVISOR_S = 7.0  # over the supervisor's 5 s scheduling-gap threshold
TINY_PROBE_TIMEOUT = "0.001"  # no load-probe answers this fast: validation is inconclusive
FINAL_SAVE_RETRY_S = 2  # the worker's retry window for a failed final save, well under the hang timeout


def worker_args(max_steps: int, nproc: int = NPROC) -> list[str]:
    return [
        "--model", "tiny", "--max_steps", str(max_steps), "--checkpoint_interval", str(CHECKPOINT_INTERVAL),
        "--keep_last_n_checkpoints", "3", "--dropout", "0.1",
        "--eval_interval", "0", "--hellaswag_interval", "0", "--generate_interval", "0",
        "--micro_batch_size", "2", "--seq_len", "32", "--total_batch_size", str(2 * 32 * nproc),
        "--final_save_retry_s", str(FINAL_SAVE_RETRY_S),
    ]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"  # same float sums in the reference and the soak
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


@dataclass
class Fault:
    kind: str
    at_step: int
    injected_at: float = 0.0
    landed: str = ""  # what actually happened (e.g. the phase a stop landed in)
    seen_by: str | None = None
    seconds_to_event: float | None = None
    outcome: str = ""  # what the run did about it
    problem: str | None = None  # the outcome was not the one this fault must have
    expected_checkpoint: str | None = None  # probe timeout: the one to resume; byte flip: the one to quarantine


@dataclass
class Soak:
    seed: int
    faults: list[Fault]
    max_steps: int
    run_dir: Path
    tmpfs: Path
    log: Callable[[str], None] = print
    supervisor: subprocess.Popen | None = None
    supervisors_started: int = 0
    recorded: set[tuple[int, float]] = field(default_factory=set)
    extra_args: list[str] = field(default_factory=list)
    nproc: int = NPROC

    # -- files -------------------------------------------------------------------------------
    def events(self) -> list[dict[str, Any]]:
        try:
            text = (self.run_dir / "events.jsonl").read_text(errors="replace")
        except OSError:
            return []
        out = []
        for line in text.splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def heartbeat(self, rank: int) -> dict[str, Any] | None:
        try:
            return json.loads((self.run_dir / "heartbeat" / f"rank{rank}.json").read_text())
        except (OSError, ValueError):
            return None

    def remember_processes(self) -> None:
        try:
            state = json.loads((self.run_dir / "supervisor.json").read_text())
        except (OSError, ValueError):
            return
        for p in state.get("processes") or []:
            self.recorded.add((int(p["pid"]), float(p["create_time"])))
        if state.get("pid"):
            self.recorded.add((int(state["pid"]), float(state["pid_create_time"])))

    def current_rank(self, pid: int) -> bool:
        try:
            state = json.loads((self.run_dir / "supervisor.json").read_text())
            proc = psutil.Process(pid)
            return pid in {int(p["pid"]) for p in state.get("processes") or []} and proc.status() not in (
                psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP, psutil.STATUS_ZOMBIE)
        except (OSError, ValueError, KeyError, psutil.Error):
            return False

    # -- supervisor --------------------------------------------------------------------------
    def start_supervisor(self, *extra: str) -> None:
        argv = [sys.executable, "-m", "supervisor.cli", "run", "--log-dir", str(self.run_dir),
                "--nproc-per-node", str(self.nproc), *SUPERVISOR_ARGS, *extra, "--",
                *worker_args(self.max_steps, self.nproc)]
        env = child_env()
        if self.nproc == 1:
            env["GPT2SUP_INJECT_SLOW_RANK"] = f"0:{ONE_PROCESS_STEP_SLEEP_S}"
        with open(self.console(self.supervisors_started), "wb") as console:
            self.supervisor = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=console,
                                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.supervisors_started += 1

    def console(self, number: int) -> Path:
        """Console of the ``number``-th supervisor, kept off the tmpfs that the soak fills."""
        return self.tmpfs.parent / f"console-{number:02d}.txt"

    def supervisor_exited(self) -> int | None:
        return None if self.supervisor is None else self.supervisor.poll()

    # -- waiting -----------------------------------------------------------------------------
    def wait_for(self, predicate: Callable[[], Any], timeout: float, what: str, poll: float = 0.05) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            code = self.supervisor_exited()
            if code is not None:
                raise SoakError(f"supervisor exited {code} while waiting for {what}")
            self.remember_processes()
            time.sleep(poll)
        raise SoakError(f"timed out after {timeout:.0f}s waiting for {what}")

    def wait_training(self, step: int, rank: int, after: float) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            hb = self.heartbeat(rank)
            ok = hb and hb.get("time", 0) >= after and hb.get("step", -1) >= step and hb.get("status") == "running"
            # A beat of the attempt now running, by a rank that runs: not the last words of one
            # the supervisor is about to kill.
            return hb if ok and self.current_rank(int(hb["pid"])) else None

        return self.wait_for(ready, 600, f"rank {rank} to train past step {step}")

    def event_after(self, since: float, kinds: tuple[str, ...], check: Callable[[dict], bool] = lambda e: True
                    ) -> dict[str, Any] | None:
        for e in self.events():
            if e.get("time", 0) >= since and e.get("event") in kinds and check(e):
                return e
        return None

    # -- faults ------------------------------------------------------------------------------
    def inject(self, fault: Fault, rng: random.Random, since: float) -> None:
        """Strike ``fault.at_step`` steps after the run is training again (after ``since``)."""
        rank = rng.randrange(self.nproc)
        start = self.wait_training(0, rank, since)
        target = int(start["step"]) + fault.at_step
        if fault.kind == "byte_flip":
            target = max(target, CHECKPOINT_INTERVAL + 1)  # there must be a checkpoint to choose and damage
        hb = self.wait_training(target, rank, since)
        fault.injected_at = time.time()
        fault.landed = f"rank {rank} step {hb['step']}"
        getattr(self, f"_fault_{fault.kind}")(fault, rank, hb)
        kinds, check = EVIDENCE[fault.kind]
        seen = self.wait_for(lambda: self.event_after(fault.injected_at, kinds, check), 600,
                             f"an event for {fault.kind}", poll=0.2)
        fault.seen_by = seen["event"]
        fault.seconds_to_event = seen["time"] - fault.injected_at
        if fault.kind == "probe_timeout":
            self._judge_probe_timeout(fault, seen)
        if fault.kind == "byte_flip":
            self._judge_byte_flip(fault)
        if fault.kind == "full_disk":
            self._judge_full_disk(fault)

    def _judge_full_disk(self, fault: Fault) -> None:
        """A full disk is a warning: the attempt must not have been ended (a false hang, a stop)."""
        ended = [e for e in self.events() if e.get("time", 0) >= fault.injected_at
                 and e.get("event") in ("hung", "crashed", "stopped", "finished_without_checkpoint")]
        if ended:
            fault.problem = f"the full disk ended the attempt: {ended[0].get('message')}"

    def _judge_byte_flip(self, fault: Fault) -> None:
        """The worker's CRC check must refuse the flipped file: quarantined, then a relaunch."""
        gone = self.wait_for(lambda: self.event_after(fault.injected_at, ("quarantined",),
                                                      lambda e: e.get("checkpoint") == fault.expected_checkpoint),
                             600, f"{fault.expected_checkpoint} to be quarantined")
        relaunch = self.wait_for(lambda: self.event_after(gone["time"], ("launched",)), 600, "the fallback's launch")
        chose = [e for e in self.events() if gone["time"] <= e.get("time", 0) <= relaunch["time"]
                 and e.get("event") == "checkpoint_valid"]
        fault.outcome = (f"{fault.expected_checkpoint} quarantined ({gone.get('source', 'validation')}), "
                         f"relaunched from {chose[-1].get('checkpoint') if chose else '?'}")

    def newest_checkpoint_name(self) -> str | None:
        newest = RunDir.at(self.run_dir).newest_checkpoint()
        return newest.path.name if newest else None

    def _judge_probe_timeout(self, fault: Fault, seen: dict[str, Any]) -> None:
        """Inconclusive validation must resume the newest checkpoint, flagged, and quarantine nothing."""
        quarantined = [e for e in self.events() if e.get("time", 0) >= fault.injected_at
                       and e.get("event") == "quarantined"]
        warned = self.event_after(fault.injected_at, ("warning",), lambda e: "UNVERIFIED" in str(e.get("message")))
        if seen["event"] != "checkpoint_valid" or not seen.get("inconclusive"):
            fault.problem = f"validation was not inconclusive: {seen.get('message')}"
        elif seen.get("checkpoint") != fault.expected_checkpoint:
            fault.problem = f"resumed from {seen.get('checkpoint')}, not the newest {fault.expected_checkpoint}"
        elif quarantined:
            fault.problem = f"quarantined {[e.get('checkpoint') for e in quarantined]} on a probe timeout"
        elif warned is None:
            fault.problem = "no warning that the resume is unverified"
        fault.outcome = (f"resumed from {seen.get('checkpoint')} UNVERIFIED, warned, nothing quarantined"
                         if fault.problem is None else "WRONG")

    def _fault_worker_sigkill(self, fault: Fault, rank: int, hb: dict) -> None:
        os.kill(hb["pid"], signal.SIGKILL)

    def _fault_rank_sigstop(self, fault: Fault, rank: int, hb: dict) -> None:
        os.kill(hb["pid"], signal.SIGSTOP)

    def _fault_supervisor_sigkill(self, fault: Fault, rank: int, hb: dict) -> None:
        self.remember_processes()
        self.supervisor.kill()
        self.supervisor.wait()
        time.sleep(1.0)
        self.start_supervisor()

    def _fault_supervisor_sigstop(self, fault: Fault, rank: int, hb: dict) -> None:
        os.kill(self.supervisor.pid, signal.SIGSTOP)
        time.sleep(STOPPED_SUPERVISOR_S)
        os.kill(self.supervisor.pid, signal.SIGCONT)

    def _fault_sighup(self, fault: Fault, rank: int, hb: dict) -> None:
        self.supervisor.send_signal(signal.SIGHUP)
        code = self.supervisor.wait(300)
        fault.landed += f", supervisor exit {code}"
        self.start_supervisor()

    def _fault_full_disk(self, fault: Fault, rank: int, hb: dict) -> None:
        """Not a byte free. The ranks train on and their heartbeats go on (rewritten in place),
        so the supervisor must neither judge them hung nor stop the run."""
        filler = fill_disk(self.tmpfs)
        deadline = time.monotonic() + HOLD_FULL_DISK_S
        try:
            while time.monotonic() < deadline:
                beat = self.heartbeat(rank) or {}
                if int(beat.get("step", -1)) >= int(hb["step"]) + FULL_DISK_MAX_STEPS:
                    break
                time.sleep(0.05)
        finally:
            filler.unlink()

    def _fault_stop_during_save(self, fault: Fault, rank: int, hb: dict) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            beat = self.heartbeat(rank)
            if (beat and beat.get("phase") == "checkpoint" and beat.get("status") == "running"
                    and beat.get("step", -1) >= hb["step"] and self.current_rank(int(beat["pid"]))):
                os.kill(beat["pid"], signal.SIGSTOP)
                fault.landed = f"rank {rank} phase checkpoint step {beat['step']}"
                return
            time.sleep(0.002)
        beat = self.wait_training(0, rank, fault.injected_at - 1.0)
        os.kill(beat["pid"], signal.SIGSTOP)
        fault.landed = f"rank {rank} phase {beat.get('phase')} (the save was missed) step {beat.get('step')}"

    def _fault_byte_flip(self, fault: Fault, rank: int, hb: dict) -> None:
        os.kill(hb["pid"], signal.SIGKILL)  # the vehicle: a restart, so a checkpoint is chosen
        chosen = self.wait_for(
            lambda: self.event_after(fault.injected_at, ("checkpoint_valid",), lambda e: bool(e.get("checkpoint"))),
            300, "the restart's checkpoint choice", poll=0.01)
        path = self.run_dir / chosen["checkpoint"]
        fault.expected_checkpoint = path.name
        size = path.stat().st_size
        with open(path, "r+b") as handle:
            handle.seek(size // 2)
            byte = handle.read(1)
            handle.seek(size // 2)
            handle.write(bytes([byte[0] ^ 0xFF]))
        fault.landed = f"flipped byte {size // 2} of {path.name} {time.time() - chosen['time']:.2f}s after validation"

    def _fault_probe_timeout(self, fault: Fault, rank: int, hb: dict) -> None:
        self.supervisor.send_signal(signal.SIGTERM)  # the stop's checkpoint is the newest one
        code = self.supervisor.wait(300)
        fault.expected_checkpoint = self.newest_checkpoint_name()
        fault.landed += f", supervisor exit {code}; relaunched with --probe-timeout {TINY_PROBE_TIMEOUT}"
        self.start_supervisor("--probe-timeout", TINY_PROBE_TIMEOUT)

    def last_save_fault(self, fault: Fault, since: float) -> int | None:
        """Fill the disk (all but a few MB) once the last interval checkpoint is written, before the final save.

        The supervisor must end ``finished_without_checkpoint`` (exit 5). The disk is freed as soon
        as its workers are gone (so its closing events reach the disk), then a new ``gpt2sup run``
        finishes the run. Returns the exit code of that last supervisor.
        """
        last_interval = (self.max_steps - 2) // CHECKPOINT_INTERVAL * CHECKPOINT_INTERVAL
        hb = self.wait_training(last_interval + 1, 0, since)
        filler = fill_disk(self.tmpfs)
        os.truncate(filler, max(0, filler.stat().st_size - LAST_SAVE_SPARE_BYTES))
        fault.injected_at = time.time()
        fault.landed = f"rank 0 step {hb['step']} (final save: step {self.max_steps - 1})"
        assert self.supervisor is not None
        deadline = time.monotonic() + 300
        try:
            while self.supervisor.poll() is None and time.monotonic() < deadline:
                self.remember_processes()
                try:
                    workers = psutil.Process(self.supervisor.pid).children(recursive=True)
                except psutil.Error:
                    workers = []
                if not workers and filler.exists():
                    filler.unlink()
                time.sleep(0.05)
        finally:
            if filler.exists():
                filler.unlink()
        code = self.supervisor.wait(60)
        kinds, check = EVIDENCE[fault.kind]
        seen = self.event_after(fault.injected_at, kinds, check)
        if seen is not None:
            fault.seen_by = seen["event"]
            fault.seconds_to_event = seen["time"] - fault.injected_at
        final = RunDir.at(self.run_dir).checkpoint(self.max_steps - 1)
        fault.outcome = f"supervisor exit {code}"
        if code != 5:
            fault.problem = f"the last save's full disk ended exit {code}, not 5 (finished_without_checkpoint)"
        elif final.exists():
            fault.problem = f"exit 5 but {final.name} exists"
        self.start_supervisor()
        code = self.supervisor.wait(1800)
        fault.outcome += f"; freed, new gpt2sup run: exit {code}"
        return code

    # -- the soak ----------------------------------------------------------------------------
    def run(self, rng: random.Random) -> int:
        self.start_supervisor()
        since = time.time()
        *mixed, last = self.faults
        for number, fault in enumerate(mixed, 1):
            self.inject(fault, rng, since)
            since = time.time()
            if fault.kind not in ("supervisor_sigstop", "full_disk"):
                # The attempt struck is replaced: strike the next fault only in the new one.
                launched = self.wait_for(lambda f=fault: self.event_after(f.injected_at, ("launched",)), 600,
                                         "the relaunch after the fault")
                since = max(since if fault.kind == "byte_flip" else 0.0, float(launched["time"]))
                chose = self.event_after(fault.injected_at, ("checkpoint_valid",))
                fault.outcome = fault.outcome or (
                    f"relaunched from {chose.get('checkpoint') or 'scratch'}" if chose else "relaunched")
            else:
                fault.outcome = fault.outcome or ("relaunched" if self.event_after(fault.injected_at, ("launched",))
                                                  else "training went on")
            self.log(f"  fault {number:2d}/{len(self.faults)} {fault.kind:<19} {fault.landed}: "
                     f"seen as '{fault.seen_by}' after {fault.seconds_to_event:.1f}s; {fault.outcome}")
            if fault.kind == "probe_timeout":
                # Back to a normal probe timeout for the rest of the soak.
                self.wait_training(0, 0, fault.injected_at)
                self.supervisor.send_signal(signal.SIGTERM)
                self.supervisor.wait(300)
                self.start_supervisor()
        code = self.last_save_fault(last, since)
        self.log(f"  fault {len(self.faults):2d}/{len(self.faults)} {last.kind:<19} {last.landed}: "
                 f"seen as '{last.seen_by}'; {last.outcome}")
        self.remember_processes()
        return code


class SoakError(RuntimeError):
    pass


def plan(seed: int, count: int, always: tuple[str, ...] = ALWAYS) -> list[Fault]:
    """``count`` faults: ``always``, then every other kind once (as many as fit), then seeded
    repeats, in seeded order; each strikes 1-3 steps after the run trains again following the
    previous one. The last is always a full disk during the final save (it ends the run)."""
    rng = random.Random(seed)
    others = [k for k in FAULT_KINDS if k not in always]
    rng.shuffle(others)
    kinds = [*always, *others]
    mixed = count - 1
    kinds = kinds[:mixed] + [rng.choice(REPEATABLE) for _ in range(max(0, mixed - len(FAULT_KINDS)))]
    rng.shuffle(kinds)
    return [Fault(kind, rng.randint(1, 3)) for kind in kinds] + [Fault(LAST_SAVE_FAULT, 0)]


def reference_run(out: Path, max_steps: int, nproc: int = NPROC) -> None:
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
            "-m", "worker.train_gpt2", "--log_dir", str(out), *worker_args(max_steps, nproc)]
    done = subprocess.run(argv, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=1800, check=False)
    if done.returncode != 0:
        raise SoakError("the uninterrupted reference run failed:\n" + done.stderr[-3000:])


def per_step_losses(run_dir: Path) -> dict[int, float]:
    losses: dict[int, float] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        losses[int(record["step"])] = record["loss"]
    return losses


def tensor_differences(left: Any, right: Any, path: str = "") -> list[str]:
    """Paths where two nested state dicts differ (tensors compared bit for bit)."""
    import torch

    if isinstance(left, torch.Tensor) or isinstance(right, torch.Tensor):
        same = isinstance(left, torch.Tensor) and isinstance(right, torch.Tensor) and left.dtype == right.dtype \
            and left.shape == right.shape and torch.equal(left, right)
        return [] if same else [path]
    if isinstance(left, dict) and isinstance(right, dict):
        if left.keys() != right.keys():
            return [f"{path} keys"]
        return [d for k in left for d in tensor_differences(left[k], right[k], f"{path}.{k}")]
    if isinstance(left, (list, tuple)) and isinstance(right, (list, tuple)):
        if len(left) != len(right):
            return [f"{path} length"]
        return [d for i, (a, b) in enumerate(zip(left, right)) for d in tensor_differences(a, b, f"{path}[{i}]")]
    return [] if left == right else [path]


def compare(run_dir: Path, reference: Path, max_steps: int) -> list[str]:
    """The final checkpoint's model and optimizer tensors, and every step's loss, vs the reference."""
    import torch

    problems: list[str] = []
    final = f"model_{max_steps - 1:05d}.pt"
    left = torch.load(run_dir / final, map_location="cpu", weights_only=True)
    right = torch.load(reference / final, map_location="cpu", weights_only=True)
    for part in ("model", "optimizer"):
        differ = tensor_differences(left.get(part), right.get(part), part)
        if differ:
            problems.append(f"final checkpoint differs from the uninterrupted run in {differ[:3]}")
    mine, theirs = per_step_losses(run_dir), per_step_losses(reference)
    if sorted(mine) != sorted(theirs):
        problems.append(f"steps logged differ: missing {sorted(set(theirs) - set(mine))[:5]}")
    wrong = [s for s in theirs if s in mine and mine[s] != theirs[s]]
    if wrong:
        problems.append(f"losses differ at steps {wrong[:5]} (first: {mine[wrong[0]]} vs {theirs[wrong[0]]})")
    return problems


def leftovers(soak: Soak) -> list[int]:
    time.sleep(1.0)
    alive = {p.pid for p in processes_with_log_dir(soak.run_dir)}
    alive |= {pid for pid, ct in soak.recorded if same_process_alive(pid, ct) is not None}
    return sorted(alive)


def run_and_check(soak_run: Soak, reference: Path, result: dict[str, Any]) -> list[str]:
    """Drive the soak, then check the end state; the figures go into ``result``."""
    problems: list[str] = []
    soak_started = time.monotonic()
    code: int | None = None
    try:
        code = soak_run.run(random.Random(soak_run.seed + 1))
    except (SoakError, subprocess.TimeoutExpired) as exc:
        problems.append(f"soak aborted: {exc}")
        tail = soak_run.console(soak_run.supervisors_started - 1).read_text(errors="replace")[-2500:]
        problems.append("last supervisor console:\n" + tail)
    finally:
        if soak_run.supervisor is not None and soak_run.supervisor.poll() is None and code is None:
            soak_run.supervisor.kill()
            soak_run.supervisor.wait()
    result["soak_seconds"] = round(time.monotonic() - soak_started, 1)
    result["exit_code"] = code
    if code != 0:
        problems.append(f"last supervisor exited {code}, not 0")
    left = leftovers(soak_run)
    result["processes_left"] = left
    if left:
        problems.append(f"processes left: {left}")
        for pid in left:
            try:
                psutil.Process(pid).kill()
            except psutil.Error:
                pass
    unseen = [f.kind for f in soak_run.faults if f.seen_by is None]
    if unseen:
        problems.append(f"faults never seen as an event: {unseen}")
    problems += [f"{f.kind}: {f.problem}" for f in soak_run.faults if f.problem]
    if code == 0:
        problems += compare(soak_run.run_dir, reference, soak_run.max_steps)
    events = soak_run.events()
    result["events"] = {k: sum(1 for e in events if e.get("event") == k)
                        for k in sorted({str(e.get("event")) for e in events})}
    result["supervisors_started"] = soak_run.supervisors_started
    result["fault_log"] = [f.__dict__ for f in soak_run.faults]
    return problems


def soak(seed: int, faults: int, max_steps: int, workdir: Path, log: Callable[[str], None] = print,
         always: tuple[str, ...] = ALWAYS, nproc: int = NPROC) -> dict[str, Any]:
    """Run the whole soak; returns the figures (``ok`` False with ``problems`` on failure)."""
    log(f"chaos soak seed={seed} faults={faults} max_steps={max_steps} nproc={nproc} (replay: --seed {seed} "
        f"--faults {faults} --max-steps {max_steps} --nproc {nproc})")
    started = time.monotonic()
    reference = workdir / "reference"
    reference_run(reference, max_steps, nproc)
    log(f"  reference run: {time.monotonic() - started:.0f}s")
    result: dict[str, Any] = {"seed": seed, "faults": faults, "max_steps": max_steps, "nproc": nproc}
    problems: list[str] = []
    with mounted_tmpfs(workdir / "disk", TMPFS_SIZE) as tmpfs:
        soak_run = Soak(seed, plan(seed, faults, always), max_steps, tmpfs / "run", tmpfs, log, nproc=nproc)
        problems += run_and_check(soak_run, reference, result)
    result["problems"] = problems
    result["ok"] = not problems
    result["total_seconds"] = round(time.monotonic() - started, 1)
    return result


def print_table(result: dict[str, Any], log: Callable[[str], None] = print) -> None:
    log("")
    log(f"{'#':>2}  {'fault':<19} {'at':>4}  {'detected as (event)':<27} {'after':>7}  outcome  [landed]")
    for number, f in enumerate(result.get("fault_log", []), 1):
        after = "-" if f["seconds_to_event"] is None else f"{f['seconds_to_event']:.1f}s"
        log(f"{number:>2}  {f['kind']:<19} {'+' + str(f['at_step']):>4}  {f['seen_by']!s:<27} {after:>7}  "
            f"{f['outcome']}{' PROBLEM: ' + f['problem'] if f['problem'] else ''}  [{f['landed']}]")
    log("")
    log(f"seed {result['seed']}: {'PASS' if result['ok'] else 'FAIL'} in {result['total_seconds']:.0f}s "
        f"(soak {result.get('soak_seconds', 0):.0f}s), {result.get('supervisors_started', 0)} supervisor(s), "
        f"exit {result.get('exit_code')}, processes left {result.get('processes_left')}")
    log(f"events: {result.get('events')}")
    for problem in result["problems"]:
        log(f"PROBLEM: {problem}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=None, help="fault plan seed (default: random, printed)")
    parser.add_argument("--faults", type=int, default=12)
    parser.add_argument("--max-steps", type=int, default=200, help="long enough to leave room for every fault")
    parser.add_argument("--nproc", type=int, default=None, help=f"processes of the run (default {NPROC}; "
                        f"--short: {SHORT_NPROC})")
    parser.add_argument("--short", action="store_true",
                        help=f"{SHORT_FAULTS} faults over {SHORT_MAX_STEPS} steps on {SHORT_NPROC} process "
                             "(what the slow test runs)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args()
    always, nproc = ALWAYS, NPROC
    if args.short:
        args.faults, args.max_steps, always, nproc = SHORT_FAULTS, SHORT_MAX_STEPS, SHORT_ALWAYS, SHORT_NPROC
    nproc = args.nproc or nproc
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 10**6)
    with tempfile.TemporaryDirectory(prefix="gpt2sup-chaos-") as tmp:
        result = soak(seed, args.faults, args.max_steps, Path(tmp), always=always, nproc=nproc)
    print_table(result)
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
