"""The checkpoint store's pure parts, without a server: URIs, markers, states, what to prune,
checksums, and the one-line error texts."""
from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from shared.remote import CheckpointUriError, IntegrityError, parse_checkpoint_uri
from shared.remote.checksums import composite_crc32, crc32_combine, file_digests
from shared.remote.records import (
    BAD,
    COMMITTED,
    MISSING_OBJECT,
    UNCOMMITTED,
    BadMarker,
    CommitMarker,
    RemoteCheckpoint,
    check_side_file_name,
    checkpoint_names,
    classify,
    newest_committed,
    parse_bad_marker,
    parse_commit_marker,
    prune_plan,
    resume_candidates,
)
from shared.remote.s3_store import (
    S3CheckpointStore,
    describe_client_error,
    public_endpoint,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
SHA = "ab" * 32


# --- URIs ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("uri", "bucket", "prefix"), [
    ("s3://my-bucket/runs/gpt2", "my-bucket", "runs/gpt2"),
    ("s3://my-bucket/runs/gpt2/", "my-bucket", "runs/gpt2"),
    ("s3://my.bucket", "my.bucket", ""),
    ("S3://abc/x", "abc", "x"),
])
def test_s3_uris_parse(uri: str, bucket: str, prefix: str) -> None:
    location = parse_checkpoint_uri(uri)
    assert (location.scheme, location.bucket, location.prefix) == ("s3", bucket, prefix)


def test_file_uris_and_plain_paths_parse(tmp_path: Path) -> None:
    assert parse_checkpoint_uri(f"file://{tmp_path}/ckpt").path == tmp_path / "ckpt"
    assert parse_checkpoint_uri(f"file://localhost{tmp_path}").path == tmp_path
    assert parse_checkpoint_uri(str(tmp_path / "a b")).path == tmp_path / "a b"
    assert parse_checkpoint_uri("relative/dir").path == Path.cwd() / "relative/dir"


@pytest.mark.parametrize(("uri", "words"), [
    ("", "empty"),
    ("s3://", "no bucket"),
    ("s3:///prefix", "no bucket"),
    ("s3://Bad_Bucket/x", "not a valid bucket"),
    ("s3://ab/x", "not a valid bucket"),
    ("s3://key:secret@bucket/x", "not in the URI"),
    ("s3://bucket/a/../b", "'..'"),
    ("s3://bucket/a?versionId=1", "no ?query"),
    ("gs://bucket/x", "unsupported scheme gs://"),
    ("file://otherhost/x", "not a host"),
    ("file://relative", "not a host"),
])
def test_bad_uris_are_one_line_value_errors(uri: str, words: str) -> None:
    with pytest.raises(CheckpointUriError) as info:
        parse_checkpoint_uri(uri)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert words in message and "\n" not in message
    assert "secret" not in message


def test_a_uri_with_credentials_does_not_echo_them() -> None:
    with pytest.raises(CheckpointUriError) as info:
        parse_checkpoint_uri("s3://AKIAXX:topsecretvalue@bucket/x")
    assert "AWS_ACCESS_KEY_ID" in str(info.value) and "topsecretvalue" not in str(info.value)
    with pytest.raises(CheckpointUriError) as info:
        parse_checkpoint_uri("file://me:topsecretvalue@host/x")
    assert "topsecretvalue" not in str(info.value)
    with pytest.raises(CheckpointUriError) as info:
        parse_checkpoint_uri("https://me:topsecretvalue@host/x")
    assert "topsecretvalue" not in str(info.value)


# --- markers and states --------------------------------------------------------------------
def _commit(name: str = "model_00500.pt", size: int = 10, commit_id: str = "c1") -> CommitMarker:
    step = int(name[6:11])
    return CommitMarker(name, step, size, SHA, commit_id, 1.0, "store-crc32")


def test_commit_marker_round_trips_and_rejects_garbage() -> None:
    marker = _commit()
    assert parse_commit_marker(marker.to_json().encode(), "model_00500.pt") == marker
    assert json.loads(marker.to_json())["format"] == "gpt2sup.checkpoint-commit"
    assert parse_commit_marker(marker.to_json().encode(), "model_00600.pt") is None  # another name
    assert parse_commit_marker(b"{not json", "model_00500.pt") is None
    assert parse_commit_marker(b'{"format": "gpt2sup.checkpoint-commit", "version": 1}', "model_00500.pt") is None
    assert parse_commit_marker(None, "model_00500.pt") is None
    bad_sha = json.loads(marker.to_json()) | {"sha256": "xyz"}
    assert parse_commit_marker(json.dumps(bad_sha).encode(), "model_00500.pt") is None


def test_bad_marker_unreadable_still_condemns() -> None:
    marker = BadMarker("model_00500.pt", 500, "c1", "sha mismatch", 2.0)
    assert parse_bad_marker(marker.to_json().encode(), "model_00500.pt") == marker
    assert parse_bad_marker(b"garbage", "model_00500.pt").commit_id == "*"
    assert parse_bad_marker(None, "model_00500.pt") is None


def test_classify_states() -> None:
    name, key = "model_00500.pt", "s3://b/p/model_00500.pt"
    assert classify(name, key, 10, None, None).state == UNCOMMITTED
    assert classify(name, key, None, _commit(), None).state == MISSING_OBJECT
    assert classify(name, key, 10, _commit(), None).state == COMMITTED
    assert classify(name, key, 11, _commit(), None).state == UNCOMMITTED  # replaced after its commit
    condemned = classify(name, key, 10, _commit(), BadMarker(name, 500, "c1", "why", 0.0))
    assert (condemned.state, condemned.bad_reason) == (BAD, "why")
    stale = BadMarker(name, 500, "older-commit", "why", 0.0)
    assert classify(name, key, 10, _commit(), stale).state == COMMITTED  # re-uploaded since
    assert classify(name, key, 10, _commit(), BadMarker(name, 500, "*", "?", 0.0)).state == BAD


def test_checkpoint_names_from_a_listing() -> None:
    listing = {
        "model_00100.pt": 1, "model_00100.pt.commit.json": 1, "model_00200.pt.commit.json": 1,
        "model_00300.pt.bad.json": 1, "run_identity.json": 1, "notes.txt": 1, "model_x.pt": 1,
    }
    assert checkpoint_names(listing) == {"model_00100.pt", "model_00200.pt", "model_00300.pt"}


def _entry(step: int, state: str = COMMITTED) -> RemoteCheckpoint:
    return RemoteCheckpoint(step, f"model_{step:05d}.pt", f"k/{step}", state, 10, SHA)


def test_prune_plan_keeps_the_newest_committed_and_counts_only_committed() -> None:
    entries = [_entry(s) for s in (100, 200, 300, 400)] + [_entry(500, BAD), _entry(600, UNCOMMITTED)]
    assert [e.step for e in prune_plan(entries, 2)] == [100, 200]
    assert prune_plan(entries, 4) == []
    assert prune_plan(entries, 10) == []  # fewer committed than keep_last: nothing goes
    with pytest.raises(ValueError):
        prune_plan(entries, 0)


def test_newest_committed_and_resume_candidates() -> None:
    entries = [_entry(100), _entry(300), _entry(400, BAD), _entry(200)]
    assert newest_committed(entries).step == 300
    assert [e.step for e in resume_candidates(entries, None)] == [300, 200, 100]
    assert [e.step for e in resume_candidates(entries, 200)] == [300]
    assert resume_candidates(entries, 300) == []
    assert newest_committed([_entry(1, UNCOMMITTED)]) is None


@pytest.mark.parametrize("name", ["run_identity.json", "notes-1.txt"])
def test_side_file_names_accepted(name: str) -> None:
    assert check_side_file_name(name) == name


@pytest.mark.parametrize("name", ["model_00500.pt", "model_00500.pt.commit.json", "model_00500.pt.bad.json",
                                  "../x", "a/b", ".hidden", ""])
def test_side_file_names_that_collide_or_escape_are_refused(name: str) -> None:
    with pytest.raises(ValueError):
        check_side_file_name(name)


# --- checksums -------------------------------------------------------------------------------
def test_file_digests_whole_and_parts(tmp_path: Path) -> None:
    data = bytes(range(256)) * 5000  # 1.28 MB, not a multiple of the part size
    path = tmp_path / "f"
    path.write_bytes(data)
    part = 300_000
    digests = file_digests(path, part)
    assert digests.size == len(data) and digests.sha256_hex == hashlib.sha256(data).hexdigest()
    assert digests.crc32 == zlib.crc32(data)
    expected_parts = [zlib.crc32(data[i:i + part]) for i in range(0, len(data), part)]
    assert list(digests.part_crc32s) == expected_parts
    whole = base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
    assert digests.s3_checksums() == {whole, composite_crc32(expected_parts)}
    assert composite_crc32(expected_parts).endswith(f"-{len(expected_parts)}")
    single = file_digests(path)
    assert single.s3_checksums() == {whole} and single.part_crc32s == (zlib.crc32(data),)


@pytest.mark.parametrize("split", [0, 1, 299_999, 300_000, 1_279_999])
def test_crc32_combine_equals_the_crc_of_the_concatenation(split: int) -> None:
    data = bytes(range(256)) * 5000
    head, tail = data[:split], data[split:]
    assert crc32_combine(zlib.crc32(head), zlib.crc32(tail), len(tail)) == zlib.crc32(data)


def test_composite_crc32_formula() -> None:
    """S3's composite: the CRC-32 of the big-endian part CRC-32s, then -N (a real SeaweedFS
    reports it for a multipart upload: test_remote_store checks it against ours)."""
    parts = [zlib.crc32(b"a"), zlib.crc32(b"b")]
    combined = base64.b64encode(zlib.crc32(parts[0].to_bytes(4, "big") + parts[1].to_bytes(4, "big"))
                                .to_bytes(4, "big")).decode()
    assert composite_crc32(parts) == f"{combined}-2"


def test_s3_checksum_mismatch_is_an_integrity_error_without_network(tmp_path: Path) -> None:
    path = tmp_path / "model_00001.pt"
    path.write_bytes(b"x" * 100)
    store = S3CheckpointStore("bucket", "p")
    with pytest.raises(IntegrityError, match="not committed"):
        store._verify_checksum("model_00001.pt", base64.b64encode(b"0" * 4).decode(), file_digests(path))
    reported = base64.b64encode(zlib.crc32(b"x" * 100).to_bytes(4, "big")).decode()
    assert store._verify_checksum("model_00001.pt", reported, file_digests(path)) == "store-crc32"


# --- error texts ---------------------------------------------------------------------------
def test_public_endpoint_strips_userinfo() -> None:
    assert public_endpoint("http://user:pa55@host:9000/x?token=1") == "http://host:9000/x"
    assert public_endpoint(None) == "the default AWS endpoint"


def test_client_error_texts() -> None:
    assert "does not exist" in describe_client_error("NoSuchBucket", 404)
    assert "secret key" in describe_client_error("SignatureDoesNotMatch", 403)
    assert "access denied" in describe_client_error("Weird", 403)
    assert describe_client_error("Weird<x>", 500) == "the store answered Weirdx (HTTP 500)"


def test_importing_the_layer_imports_neither_torch_nor_boto3() -> None:
    code = "import sys, shared.remote; print(sorted(m for m in ('torch', 'boto3', 'botocore') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_sdk_errors_are_traced_to_their_cause() -> None:
    """boto3 wraps an upload's ClientError in S3UploadFailedError, a download's last error in
    RetriesExceededError: the message must come from the inner error's code."""
    botocore_exceptions = pytest.importorskip("botocore.exceptions")
    boto3_exceptions = pytest.importorskip("boto3.exceptions")
    from shared.remote.s3_store import _from_sdk, _root_cause

    inner = botocore_exceptions.ClientError({"Error": {"Code": "BadDigest"}}, "UploadPart")
    try:
        try:
            raise inner
        except botocore_exceptions.ClientError:
            raise boto3_exceptions.S3UploadFailedError("Failed to upload") from None
    except boto3_exceptions.S3UploadFailedError as wrapped:
        assert _from_sdk(wrapped) and _root_cause(wrapped) is inner
    timeout = botocore_exceptions.ReadTimeoutError(endpoint_url="http://x")
    assert _root_cause(boto3_exceptions.RetriesExceededError(timeout)) is timeout
    assert not _from_sdk(TypeError("a bug of ours"))
