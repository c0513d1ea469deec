"""The checkpoint store's commit protocol against real stores: a SeaweedFS S3 server on loopback
(``s3``, marked slow: the first test pays the server's start) and a local directory (``file``).

Checkpoints here are random bytes named ``model_NNNNN.pt``: the store moves bytes and never opens
a checkpoint, so a real torch file would only make the tests slower.
"""
from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shared.remote import (
    CheckpointStore,
    IntegrityError,
    NotCommittedError,
    ObjectStoreError,
    StoreAccessError,
    open_store,
)
from shared.remote.checksums import file_digests
from shared.remote.local_store import LocalDirStore
from shared.remote.records import BAD, COMMITTED, UNCOMMITTED, commit_marker_name
from tests.s3_server import (
    ACCESS_KEY,
    BUCKET,
    SECRET_KEY,
    S3Server,
    free_ports,
    raw_client,
)

MiB = 1 << 20
SMALL_PART = 5 * MiB  # S3's minimum part size: the smallest threshold that still makes parts


@pytest.fixture(params=["file", pytest.param("s3", marks=pytest.mark.slow)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> CheckpointStore:
    """A fresh, empty store of each kind (an S3 prefix no other test uses)."""
    if request.param == "file":
        (tmp_path / "mount").mkdir()
        return open_store((tmp_path / "mount" / "run").as_uri())
    server: S3Server = request.getfixturevalue("aws_env")
    return open_store(server.fresh_uri(), multipart_threshold=SMALL_PART, multipart_chunksize=SMALL_PART)


def make_checkpoint(directory: Path, step: int, size: int = 64 * 1024, seed: int | None = None) -> Path:
    """A file named like a checkpoint, of random bytes."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"model_{step:05d}.pt"
    path.write_bytes(random.Random(step if seed is None else seed).randbytes(size))
    return path


def flip_byte(store: CheckpointStore, name: str, offset: int) -> None:
    """Damage a stored object behind the store's back: in place on disk, or by overwriting the S3
    object with the same bytes but one (same size, marker untouched: what bit rot looks like)."""
    if isinstance(store, LocalDirStore):
        with open(store.root / name, "r+b") as handle:
            handle.seek(offset)
            byte = handle.read(1)
            handle.seek(offset)
            handle.write(bytes([byte[0] ^ 0xFF]))
        return
    data = bytearray(store._get_bytes(name) or b"")
    data[offset] ^= 0xFF
    raw_client_for(store).put_object(Bucket=store.bucket, Key=store._key(name), Body=bytes(data))


def raw_client_for(store: CheckpointStore):  # type: ignore[no-untyped-def]
    """A plain boto3 client on the same server and credentials as ``store`` (from the environment)."""
    return raw_client(S3Server(os.environ["AWS_ENDPOINT_URL_S3"], ACCESS_KEY, SECRET_KEY, BUCKET, Path()))


def test_upload_list_download_round_trip_is_bitwise(store: CheckpointStore, tmp_path: Path) -> None:
    store.check_access()
    local = tmp_path / "local"
    first, second = make_checkpoint(local, 100), make_checkpoint(local, 200, size=100_000)
    for path in (first, second):
        record = store.upload_checkpoint(path)
        assert record.state == COMMITTED and record.name == path.name
    committed = store.list_committed()
    assert [(c.step, c.name, c.size) for c in committed] == [(200, second.name, 100_000), (100, first.name, 64 * 1024)]
    assert committed[0].key == f"{store.uri}/model_00200.pt"
    assert len(committed[0].sha256 or "") == 64
    dest = tmp_path / "new-machine"
    for step, original in ((200, second), (100, first)):
        got = store.download(step, dest)
        assert got == dest / original.name and got.read_bytes() == original.read_bytes()
    assert sorted(p.name for p in dest.iterdir()) == [first.name, second.name]  # no temporary left
    with pytest.raises(NotCommittedError):
        store.download(300, dest)


def test_multipart_upload_is_verified_and_round_trips(store: CheckpointStore, tmp_path: Path) -> None:
    path = make_checkpoint(tmp_path / "local", 500, size=12 * MiB)
    store.upload_checkpoint(path)
    marker = (store._get_bytes(commit_marker_name(path.name)) or b"").decode()
    if isinstance(store, LocalDirStore):
        assert '"verified_by": "reread"' in marker
    else:
        head = raw_client_for(store).head_object(Bucket=store.bucket, Key=store._key(path.name), ChecksumMode="ENABLED")
        assert head["ChecksumCRC32"].endswith("-3")  # 5 + 5 + 2 MiB: really multipart
        assert head["ChecksumCRC32"] in file_digests(path, 5 * MiB).s3_checksums()  # our composite, computed locally
        assert '"verified_by": "store-crc32"' in marker  # the store's own checksum matched ours
    got = store.download(500, tmp_path / "dest")
    assert got.read_bytes() == path.read_bytes()


def test_an_object_without_its_commit_marker_is_never_a_checkpoint(store: CheckpointStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    local = tmp_path / "local"
    store.upload_checkpoint(make_checkpoint(local, 100))
    # 1. The uploader dies between the object and its marker (the marker write fails here).
    real_put = store._put_bytes

    def put_without_commits(name: str, data: bytes) -> None:
        if name.endswith(".commit.json"):
            raise OSError("killed before the commit")
        real_put(name, data)

    with monkeypatch.context() as patch:
        patch.setattr(store, "_put_bytes", put_without_commits)
        with pytest.raises(OSError):
            store.upload_checkpoint(make_checkpoint(local, 200))
    # 2. A copy cut short: S3's multipart upload never completed; a directory's temporary file.
    if isinstance(store, LocalDirStore):
        (store.root / ".model_00300.pt.1234abcd.tmp").write_bytes(b"half")
    else:
        client = raw_client_for(store)
        upload = client.create_multipart_upload(Bucket=store.bucket, Key=store._key("model_00300.pt"))
        client.upload_part(Bucket=store.bucket, Key=store._key("model_00300.pt"), UploadId=upload["UploadId"],
                           PartNumber=1, Body=b"x" * SMALL_PART)
    states = {e.step: e.state for e in store.inventory()}
    assert states == {200: UNCOMMITTED, 100: COMMITTED}
    assert [c.step for c in store.list_committed()] == [100]
    with pytest.raises(NotCommittedError):
        store.download(200, tmp_path / "dest")
    # The next upload of the same step commits it for real.
    store.upload_checkpoint(local / "model_00200.pt")
    assert [c.step for c in store.list_committed()] == [200, 100]


def test_a_flipped_byte_is_caught_on_download_marked_bad_and_skipped(store: CheckpointStore, tmp_path: Path) -> None:
    local = tmp_path / "local"
    store.upload_checkpoint(make_checkpoint(local, 100))
    newest = make_checkpoint(local, 200)
    store.upload_checkpoint(newest)
    flip_byte(store, newest.name, 1234)
    dest = tmp_path / "dest"
    with pytest.raises(IntegrityError) as info:
        store.download(200, dest)
    assert "\n" not in str(info.value) and "do not match the commit" in str(info.value)
    assert not dest.exists() or list(dest.iterdir()) == []  # nothing installed, no temporary left
    store.mark_bad(200, "sha256 mismatch after download\n(second line folded)")
    assert [c.step for c in store.list_committed()] == [100]
    bad = next(e for e in store.inventory() if e.step == 200)
    assert bad.state == BAD and bad.bad_reason == "sha256 mismatch after download (second line folded)"
    assert newest.name in store._list()  # marked, never deleted
    assert store.download(100, dest).read_bytes() == (local / "model_00100.pt").read_bytes()
    # A fresh upload of the step is a new commit, which the old bad marker does not condemn.
    store.upload_checkpoint(newest)
    assert [c.step for c in store.list_committed()] == [200, 100]
    assert store.download(200, tmp_path / "dest2").read_bytes() == newest.read_bytes()


def test_prune_keeps_the_newest_committed_and_never_deletes_before_a_newer_commit(store: CheckpointStore, tmp_path: Path) -> None:
    local = tmp_path / "local"
    store.upload_checkpoint(make_checkpoint(local, 100))
    assert store.prune(2) == []  # one committed: nothing goes
    store.upload_checkpoint(make_checkpoint(local, 200))
    assert store.prune(2) == []
    for step in (300, 400):
        store.upload_checkpoint(make_checkpoint(local, step))
    store._put_bytes("model_00050.pt", b"an old uncommitted object")  # not ours to judge
    store.upload_checkpoint(make_checkpoint(local, 500))
    store.mark_bad(500, "failed its probe")
    deleted = store.prune(2)
    assert [d.step for d in deleted] == [100, 200]  # the bad newest one does not count as kept
    assert [c.step for c in store.list_committed()] == [400, 300]
    names = set(store._list())
    assert {"model_00100.pt", "model_00100.pt.commit.json", "model_00200.pt"}.isdisjoint(names)
    assert {"model_00050.pt", "model_00500.pt", "model_00500.pt.bad.json"} <= names
    with pytest.raises(ValueError):
        store.prune(0)


def test_side_files_round_trip(store: CheckpointStore) -> None:
    assert store.get_side_file("run_identity.json") is None
    store.put_side_file("run_identity.json", b'{"config": 1}\n')
    store.put_side_file("run_identity.json", b'{"config": 2}\n')
    assert store.get_side_file("run_identity.json") == b'{"config": 2}\n'
    assert store.list_committed() == []  # a side file is no checkpoint
    with pytest.raises(ValueError):
        store.put_side_file("model_00100.pt", b"")


def test_a_directory_store_that_cannot_be_created_fails_in_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(StoreAccessError) as info:
        open_store(str(blocker / "run")).check_access()
    assert "\n" not in str(info.value) and "is not a directory" in str(info.value)


def test_a_directory_store_on_a_missing_mount_is_refused_not_created(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path}/mnt/nfs/run1")
    with pytest.raises(StoreAccessError, match="is not a directory .is the mount there"):
        store.check_access()
    with pytest.raises(ObjectStoreError):
        store.put_side_file("run_identity.json", b"{}")
    assert not (tmp_path / "mnt").exists()


# --- S3 access errors: one line, no secret ------------------------------------------------------
def _access_error(monkeypatch: pytest.MonkeyPatch, uri: str, **env: str) -> str:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(StoreAccessError) as info:
        open_store(uri, max_attempts=1).check_access()
    message = str(info.value)
    assert "\n" not in message
    for secret in ("gpt2sup-test-secret", "not-the-secret"):
        assert secret not in message
    return message


@pytest.mark.slow
def test_s3_wrong_secret_key(aws_env: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    message = _access_error(monkeypatch, aws_env.fresh_uri(), AWS_SECRET_ACCESS_KEY="not-the-secret")
    assert "secret key does not match" in message and aws_env.endpoint in message


@pytest.mark.slow
def test_s3_unknown_access_key(aws_env: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    message = _access_error(monkeypatch, aws_env.fresh_uri(), AWS_ACCESS_KEY_ID="NOSUCHKEY")
    assert "access key is not known" in message


@pytest.mark.slow
def test_s3_missing_bucket(aws_env: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    message = _access_error(monkeypatch, "s3://no-such-bucket-here/run")
    assert message.startswith("s3://no-such-bucket-here/run: ") and "bucket does not exist" in message


@pytest.mark.slow
def test_s3_no_credentials(aws_env: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    assert "no usable AWS credentials" in _access_error(monkeypatch, aws_env.fresh_uri())


@pytest.mark.slow
def test_s3_unreachable_endpoint(aws_env: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    (port,) = free_ports(1)  # nothing listens there
    endpoint = f"http://someone:not-the-secret@127.0.0.1:{port}"
    message = _access_error(monkeypatch, aws_env.fresh_uri(), AWS_ENDPOINT_URL_S3=endpoint)
    assert f"cannot reach http://127.0.0.1:{port}" in message


def test_only_checkpoint_files_are_uploaded(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "store"))
    other = tmp_path / "notes.txt"
    other.write_text("x")
    with pytest.raises(ValueError, match="not a checkpoint file name"):
        store.upload_checkpoint(other)


@pytest.mark.slow
def test_s3_store_without_a_usable_checksum_is_verified_by_reading_back(aws_env: S3Server, tmp_path: Path) -> None:
    """A store that reports no CRC-32 (or cuts parts differently) makes the uploader read the
    object back; a read-back that differs is an IntegrityError, so nothing is committed."""
    store = open_store(aws_env.fresh_uri(), multipart_threshold=SMALL_PART, multipart_chunksize=SMALL_PART)
    path = make_checkpoint(tmp_path, 100, size=2 * MiB)
    store.upload_checkpoint(path)
    digests = file_digests(path)
    assert store._verify_checksum(path.name, None, digests) == "reread"
    assert store._verify_checksum(path.name, "AAAA-7", digests) == "reread"  # other part count
    flip_byte(store, path.name, 10)
    with pytest.raises(IntegrityError, match="read back differs"):
        store._verify_checksum(path.name, None, digests)


@pytest.mark.slow
@pytest.mark.parametrize("size", [2 * MiB, 12 * MiB], ids=["one-put", "multipart"])
def test_s3_a_part_whose_bytes_differ_from_its_crc32_is_refused_by_the_store_and_aborted(
        aws_env: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int) -> None:
    """The CRC-32 the uploader computes goes in each part's header and the store checks the bytes
    it receives against it: bytes that changed between the two (here: a wrong CRC-32 for one
    part) are refused, the multipart upload is aborted (no parts left behind), nothing is committed."""
    from shared.remote import s3_store

    store = open_store(aws_env.fresh_uri(), multipart_threshold=SMALL_PART, multipart_chunksize=SMALL_PART)
    path = make_checkpoint(tmp_path, 300, size=size)
    real_crc32 = s3_store.region_crc32

    def wrong_for_the_last_part(local: Path, offset: int, length: int) -> int:
        crc = real_crc32(local, offset, length)
        return crc ^ 1 if offset + length == size else crc

    monkeypatch.setattr(s3_store, "region_crc32", wrong_for_the_last_part)
    with pytest.raises(ObjectStoreError) as refused:
        store.upload_checkpoint(path)
    assert not isinstance(refused.value, IntegrityError)  # refused by the store on arrival, not found after
    assert "BadDigest" in str(refused.value), refused.value
    client = raw_client_for(store)
    key = store._key(path.name)
    assert not client.list_multipart_uploads(Bucket=store.bucket, Prefix=key).get("Uploads")
    assert store.list_committed() == []
    monkeypatch.undo()
    store.upload_checkpoint(path)  # the same file, its CRC-32s right: committed
    assert [e.step for e in store.list_committed()] == [300]


UPLOADER = """
import sys
from pathlib import Path
from shared.remote import open_store
store = open_store(sys.argv[1], multipart_threshold=5 << 20, multipart_chunksize=5 << 20, max_concurrency=1)
store.upload_checkpoint(Path(sys.argv[2]))
print("uploaded")
"""


@pytest.mark.slow
def test_s3_uploader_killed_mid_upload_leaves_no_checkpoint(aws_env: S3Server, tmp_path: Path) -> None:
    """A real uploading process SIGKILLed while its multipart upload is in flight."""
    uri = aws_env.fresh_uri()
    path = make_checkpoint(tmp_path, 700, size=100 * MiB)
    repo = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(repo))
    uploader = subprocess.Popen([sys.executable, "-c", UPLOADER, uri, str(path)], env=env, cwd=repo,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    store = open_store(uri)
    client = raw_client_for(store)
    key = store._key(path.name)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            uploads = client.list_multipart_uploads(Bucket=store.bucket, Prefix=key).get("Uploads", [])
            if uploads and client.list_parts(Bucket=store.bucket, Key=key, UploadId=uploads[0]["UploadId"]).get("Parts"):
                break
            assert uploader.poll() is None, uploader.communicate()[0]
            time.sleep(0.05)
        else:
            pytest.fail("the upload never got under way")
    finally:
        uploader.send_signal(signal.SIGKILL)
        output = uploader.communicate()[0]
    assert b"uploaded" not in output  # killed in flight, not after
    assert store.list_committed() == []
    assert all(e.step != 700 or e.state != COMMITTED for e in store.inventory())
    with pytest.raises(NotCommittedError):
        store.download(700, tmp_path / "dest")
    # The same upload run to its end commits it.
    store.upload_checkpoint(path)
    assert [c.step for c in store.list_committed()] == [700]


def test_s3_store_unreachable_mid_run_is_one_line_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No server needed: an endpoint where nothing listens, as when the store goes down mid-run."""
    pytest.importorskip("boto3")
    (port,) = free_ports(1)
    for name, value in {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "not-the-secret",
                        "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}", "AWS_REGION": "us-east-1",
                        "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(name, value)
    store = open_store("s3://some-bucket/run", max_attempts=1, connect_timeout=2)
    for call in (store.list_committed, lambda: store.upload_checkpoint(make_checkpoint(tmp_path, 100)),
                 lambda: store.get_side_file("run_identity.json")):
        with pytest.raises(ObjectStoreError) as info:
            call()
        message = str(info.value)
        assert f"cannot reach http://127.0.0.1:{port}" in message
        assert "\n" not in message and "not-the-secret" not in message


@pytest.mark.slow
def test_s3_secrets_stay_out_of_debug_logs(aws_env: S3Server, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    """A program logging at DEBUG (root logger) does not receive the SDK's header dumps."""
    for name in ("boto3", "botocore", "s3transfer", "urllib3"):
        monkeypatch.setattr(logging.getLogger(name), "level", logging.NOTSET)
    caplog.set_level(logging.DEBUG)
    store = open_store(aws_env.fresh_uri())
    store.check_access()
    store.upload_checkpoint(make_checkpoint(tmp_path, 100))
    assert [c.step for c in store.list_committed()] == [100]
    text = caplog.text
    assert aws_env.secret_key not in text and "Authorization" not in text and aws_env.access_key not in text


@pytest.mark.parametrize(("env", "words"), [
    ({"AWS_ENDPOINT_URL_S3": "not a url"}, "is not a valid URL"),
    ({"AWS_PROFILE": "no-such-profile"}, "AWS profile 'no-such-profile' is not in the AWS config files"),
])
def test_s3_misconfiguration_is_an_access_error_in_one_line(env: dict[str, str], words: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pytest.importorskip("boto3")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(StoreAccessError) as info:
        open_store("s3://some-bucket/run").check_access()
    assert words in str(info.value) and "\n" not in str(info.value) and "not-the-secret" not in str(info.value)
