"""``gpt2sup run --checkpoint-uri`` end to end: real runs against a real S3 server (SeaweedFS on
loopback, ``tests/s3_server.py``), real signals, real files (issue 22)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from shared.exit_codes import SupervisorExit
from shared.remote import open_store
from tests.s3_server import S3Server, raw_client
from tests.supervisor.helpers import (
    FINAL_CHECKPOINT,
    ONE_PROCESS,
    REPO_ROOT,
    assert_same_weights,
    child_env,
    console_text,
    events_named,
    gpt2sup_argv,
    heartbeat,
    one_process_worker_args,
    read_events,
    start_supervisor,
    supervisor_json,
    wait_exit,
    wait_for,
    wait_for_step,
)

pytestmark = pytest.mark.slow


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _committed(uri: str) -> dict[int, object]:
    return {entry.step: entry for entry in open_store(uri).list_committed()}


def _losses(run_dir: Path) -> dict[int, float]:
    """step -> loss of each training step in metrics.jsonl (a resumed run has the later steps)."""
    out: dict[int, float] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if isinstance(record.get("step"), int) and "loss" in record:
            out[record["step"]] = record["loss"]
    return out


def _kill_tree(pid: int) -> None:
    """SIGKILL the supervisor and every process under it at once: the machine going away."""
    root = psutil.Process(pid)
    victims = [root, *root.children(recursive=True)]
    for proc in victims:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(victims, timeout=30)


def test_a_run_uploads_its_checkpoints_and_the_last_one_before_finished(tmp_path, aws_env: S3Server):
    log_dir, uri = tmp_path / "run", aws_env.fresh_uri()
    proc = start_supervisor(log_dir, "--checkpoint-uri", uri, nproc=1, worker_args=one_process_worker_args())
    assert wait_exit(proc, log_dir) == SupervisorExit.FINISHED, console_text(log_dir)[-3000:]
    committed = _committed(uri)
    final_step = int(FINAL_CHECKPOINT[6:11])
    assert final_step in committed, committed
    assert committed[final_step].sha256 == _sha256(log_dir / FINAL_CHECKPOINT)
    skipped = {s for e in events_named(log_dir, "upload_skipped") for s in e["steps"]}
    for local in log_dir.glob("model_*.pt"):
        step = int(local.name[6:11])
        assert step in committed or step in skipped, (local.name, committed, skipped)
        if step in committed:
            assert committed[step].sha256 == _sha256(local)
    # Committed before the ending, and the ending says so.
    finished = events_named(log_dir, "finished")[-1]
    uploaded_final = [e for e in events_named(log_dir, "uploaded") if e["step"] == final_step]
    assert uploaded_final and uploaded_final[0]["time"] <= finished["time"]
    assert f"committed to {uri}" in finished["message"]
    # The run identity is beside the checkpoints; the URI (never a credential) is recorded.
    store = open_store(uri)
    assert store.get_side_file("run_identity.json") == (log_dir / "run_identity.json").read_bytes()
    assert supervisor_json(log_dir)["run_config"]["checkpoint_uri"] == uri
    for path in [Path(f"{log_dir}.console"), *log_dir.rglob("*")]:
        if path.is_file() and path.suffix != ".pt":
            assert aws_env.secret_key not in path.read_text(errors="replace"), path
    # status shows the remote state from the run directory's record.
    status = subprocess.run(gpt2sup_argv("status", "--log-dir", str(log_dir), "--json"), check=False, cwd=REPO_ROOT,
                            env=child_env(), capture_output=True, text=True, timeout=60)
    remote = json.loads(status.stdout)["remote"]
    assert remote["uri"] == uri and remote["newest_committed_step"] == final_step
    assert remote["upload_lag_steps"] == 0 and remote["last_error"] is None
    text = subprocess.run(gpt2sup_argv("status", "--log-dir", str(log_dir)), check=False, cwd=REPO_ROOT,
                          env=child_env(),
                          capture_output=True, text=True, timeout=60).stdout
    assert uri in text and f"step {final_step}" in text
    # verify s3://...: every committed checkpoint downloaded and verified like a local file.
    verify = subprocess.run(gpt2sup_argv("verify", uri), check=False, cwd=REPO_ROOT, env=child_env(),
                            capture_output=True,
                            text=True, timeout=300)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert f"{uri}/{FINAL_CHECKPOINT}" in verify.stdout and "OK" in verify.stdout


def test_machine_lost_mid_run_resumes_from_the_bucket_on_an_empty_dir_bitwise(
        tmp_path, aws_env: S3Server, reference_checkpoint_one_process):
    reference_checkpoint = reference_checkpoint_one_process
    log_dir, uri = tmp_path / "run", aws_env.fresh_uri()
    # Time to lose the machine mid-run (no effect on the math): the first commit must come well
    # before the last step however slow the uploader is on a loaded machine (it runs at nice +10).
    slow = {"GPT2SUP_INJECT_SLOW_RANK": "0:0.6"}
    proc = start_supervisor(log_dir, "--checkpoint-uri", uri, env=slow, **ONE_PROCESS)
    wait_for(lambda: _committed(uri), 240, "a first committed checkpoint")
    _kill_tree(proc.pid)
    proc.wait(timeout=30)
    newest_remote = max(_committed(uri))
    assert newest_remote < int(FINAL_CHECKPOINT[6:11])
    shutil.rmtree(log_dir)
    Path(f"{log_dir}.console").unlink()
    # A new machine: the same command, an empty --log-dir.
    proc = start_supervisor(log_dir, "--checkpoint-uri", uri, **ONE_PROCESS)
    assert wait_exit(proc, log_dir) == SupervisorExit.FINISHED, console_text(log_dir)[-3000:]
    downloaded = events_named(log_dir, "downloaded")
    assert any("run_identity.json" in e["message"] for e in downloaded), downloaded
    assert any(e.get("step") == newest_remote for e in downloaded), downloaded
    valid = events_named(log_dir, "checkpoint_valid")[0]
    assert valid["step"] == newest_remote, valid
    assert_same_weights(log_dir / FINAL_CHECKPOINT, reference_checkpoint)
    resumed, reference = _losses(log_dir), _losses(reference_checkpoint.parent)
    assert resumed and min(resumed) == newest_remote + 1
    assert all(resumed[s] == reference[s] for s in resumed), "per-step losses differ from the uninterrupted run"
    assert max(_committed(uri)) == int(FINAL_CHECKPOINT[6:11])


def test_store_down_mid_run_training_goes_on_backlog_uploaded_and_run_finishes(tmp_path, private_aws_env: S3Server):
    log_dir, uri = tmp_path / "run", private_aws_env.fresh_uri()
    max_steps = 60
    args = ["--model", "tiny", "--max_steps", str(max_steps), "--checkpoint_interval", "4", "--eval_interval", "0",
            "--hellaswag_interval", "0", "--generate_interval", "0", "--micro_batch_size", "2", "--seq_len", "32",
            "--total_batch_size", "64"]
    proc = start_supervisor(log_dir, "--checkpoint-uri", uri, nproc=1, worker_args=args,
                            env={"GPT2SUP_INJECT_SLOW_RANK": "0:0.4"})
    wait_for(lambda: _committed(uri), 240, "a first committed checkpoint")
    before = wait_for_step(log_dir, 0)["step"]
    os.kill(private_aws_env.pid, signal.SIGSTOP)  # the store hangs: a request is noticed as failed in 10-20 s
    try:
        time.sleep(25)
        during = heartbeat(log_dir, 0)["step"]
        record = json.loads((log_dir / "remote_sync.json").read_text())
    finally:
        os.kill(private_aws_env.pid, signal.SIGCONT)
    assert during >= before + 10, (before, during)  # training never waited for the store
    assert record["upload_lag_steps"] and record["upload_lag_steps"] > 0, record  # status shows the lag
    assert record["last_error"], record  # and why
    assert proc.poll() is None or proc.returncode == 0
    assert wait_exit(proc, log_dir) == SupervisorExit.FINISHED, console_text(log_dir)[-3000:]
    final = max_steps - 1
    assert final in _committed(uri)
    warnings = [e for e in events_named(log_dir, "warning") if "upload_error" in e]
    assert [e["upload_error"] for e in warnings][:2] == [True, False], warnings
    assert events_named(log_dir, "finished")[-1]["exit_code"] == 0
    assert json.loads((log_dir / "remote_sync.json").read_text())["upload_lag_steps"] == 0  # backlog caught up


def test_a_store_still_down_at_the_end_is_an_honest_ending_not_finished(tmp_path, private_aws_env: S3Server):
    log_dir, uri = tmp_path / "run", private_aws_env.fresh_uri()
    proc = start_supervisor(log_dir, "--checkpoint-uri", uri, "--upload-timeout", "3", nproc=1,
                            worker_args=one_process_worker_args(), env={"GPT2SUP_INJECT_SLOW_RANK": "0:0.6"})
    wait_for(lambda: _committed(uri), 240, "a first committed checkpoint")  # long before the last step
    os.kill(private_aws_env.pid, signal.SIGSTOP)
    try:
        code = wait_exit(proc, log_dir)
    finally:
        os.kill(private_aws_env.pid, signal.SIGCONT)
    assert code == SupervisorExit.FINISHED_NOT_UPLOADED, console_text(log_dir)[-3000:]
    assert int(FINAL_CHECKPOINT[6:11]) not in _committed(uri)
    finished = events_named(log_dir, "finished")[-1]
    assert "NOT uploaded" in finished["message"] and "committed to" not in finished["message"], finished
    assert "(exit 7)" in finished["message"] and "(exit 0)" not in finished["message"], finished  # what it exits
    assert finished["exit_code"] == SupervisorExit.FINISHED_NOT_UPLOADED
    # Once the store is back, a plain `gpt2sup run` uploads it (nothing is trained) and finishes with 0.
    again = subprocess.run(gpt2sup_argv("run", "--log-dir", str(log_dir)), check=False, cwd=REPO_ROOT,
                           env=child_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == SupervisorExit.FINISHED, again.stdout[-2000:] + again.stderr[-2000:]
    assert int(FINAL_CHECKPOINT[6:11]) in _committed(uri)
    assert "already finished" in events_named(log_dir, "finished")[-1]["message"]


def test_a_stop_uploads_the_stops_checkpoint_before_stopped(tmp_path, aws_env: S3Server):
    log_dir, uri = tmp_path / "run", aws_env.fresh_uri()
    # Long enough that the stop lands mid-run however late the first commit is: a stop that
    # arrives in the last step ends the run `finished`, which is not what this test is about.
    long_run = [*one_process_worker_args(), "--max_steps", "400"]
    proc = start_supervisor(log_dir, "--checkpoint-uri", uri, nproc=1, worker_args=long_run,
                            env={"GPT2SUP_INJECT_SLOW_RANK": "0:0.3"})
    wait_for(lambda: _committed(uri), 240, "a first committed checkpoint")
    proc.send_signal(signal.SIGTERM)
    assert wait_exit(proc, log_dir) == SupervisorExit.STOPPED, console_text(log_dir)[-3000:]
    newest = max(log_dir.glob("model_*.pt"))
    committed = _committed(uri)
    assert int(newest.name[6:11]) in committed, (newest.name, committed)
    assert committed[int(newest.name[6:11])].sha256 == _sha256(newest)
    assert f"committed to {uri}" in events_named(log_dir, "stopped")[-1]["message"]


def test_a_flipped_byte_in_the_newest_remote_checkpoint_is_marked_bad_and_the_previous_used(
        tmp_path, aws_env: S3Server, reference_checkpoint_one_process):
    log_dir, uri = tmp_path / "run", aws_env.fresh_uri()
    proc = start_supervisor(log_dir, "--checkpoint-uri", uri, **ONE_PROCESS)
    assert wait_exit(proc, log_dir) == SupervisorExit.FINISHED, console_text(log_dir)[-3000:]
    committed = sorted(_committed(uri))
    newest, previous = committed[-1], committed[-2]
    # Flip one byte of the newest object in the bucket (same size: only its SHA-256 can tell).
    client, key = raw_client(aws_env), f"{uri.split('/', 3)[3]}/{FINAL_CHECKPOINT}"
    data = bytearray(client.get_object(Bucket=aws_env.bucket, Key=key)["Body"].read())
    data[len(data) // 2] ^= 0x01
    client.put_object(Bucket=aws_env.bucket, Key=key, Body=bytes(data))
    shutil.rmtree(log_dir)  # the local copy is gone
    Path(f"{log_dir}.console").unlink()
    proc = start_supervisor(log_dir, "--checkpoint-uri", uri, **ONE_PROCESS)
    assert wait_exit(proc, log_dir) == SupervisorExit.FINISHED, console_text(log_dir)[-3000:]
    bad = [e for e in events_named(log_dir, "warning") if e.get("remote_bad")]
    assert bad and bad[0]["step"] == newest, read_events(log_dir)
    assert client.head_object(Bucket=aws_env.bucket, Key=key + ".bad.json")  # marked, never deleted
    assert events_named(log_dir, "checkpoint_valid")[0]["step"] == previous
    assert_same_weights(log_dir / FINAL_CHECKPOINT, reference_checkpoint_one_process)


def test_wrong_credentials_refuse_in_one_line_before_training_and_leak_no_secret(tmp_path, aws_env: S3Server):
    log_dir, uri = tmp_path / "run", aws_env.fresh_uri()
    wrong = "wrong-secret-0123456789-must-not-leak"
    proc = start_supervisor(log_dir, "--checkpoint-uri", uri, nproc=1, worker_args=one_process_worker_args(),
                            env={"AWS_SECRET_ACCESS_KEY": wrong})
    assert wait_exit(proc, log_dir, timeout=120) == SupervisorExit.REFUSED
    output = console_text(log_dir)
    refusal = [line for line in output.splitlines() if "refusing to start" in line]
    assert len(refusal) == 1 and "secret key does not match" in refusal[0], output
    assert "Traceback" not in output
    assert not (log_dir / "heartbeat").exists() or not list((log_dir / "heartbeat").iterdir())
    for text in [output, *(p.read_text(errors="replace") for p in log_dir.rglob("*") if p.is_file())]:
        assert wrong not in text and aws_env.secret_key not in text
