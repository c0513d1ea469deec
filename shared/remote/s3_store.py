"""S3 and every S3-compatible store (MinIO, SeaweedFS, Ceph, R2) as a checkpoint store, via boto3.

Why boto3: one well-kept dependency (the AWS SDK itself), S3's own checksums (``ChecksumAlgorithm
CRC32``: the store verifies every part as it receives it and reports the object's checksum back;
the end-to-end SHA-256 is ours, in the commit marker: ``shared/remote/checksums.py``), and its
transfer manager for parallel multipart uploads and downloads. It is imported
lazily, inside this backend, so ``shared/`` imports fast and boto3 stays an optional extra.

Credentials and the endpoint come only from the standard AWS chain (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_PROFILE``, ``AWS_ENDPOINT_URL`` /
``AWS_ENDPOINT_URL_S3``, ``AWS_REGION``, the shared config files): nothing here takes, stores or
prints a key. Error messages are built from the error code, the bucket and the endpoint (with any
``user:password@`` stripped), never from the library's text.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import re
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlsplit, urlunsplit

from shared.remote.checksums import FileDigests, crc32_b64
from shared.remote.errors import IntegrityError, ObjectStoreError, StoreAccessError
from shared.remote.store import CheckpointStore

DEFAULT_MULTIPART_THRESHOLD = 64 << 20
DEFAULT_MULTIPART_CHUNKSIZE = 64 << 20
DEFAULT_REGION = "us-east-1"  # what S3-compatible servers accept, and AWS's global default
READ_BLOCK = 8 << 20

# Error codes and what they mean to the person running the command.
_CODE_TEXT = {
    "InvalidAccessKeyId": "the access key is not known to the store (check AWS_ACCESS_KEY_ID / AWS_PROFILE)",
    "SignatureDoesNotMatch": "the secret key does not match the access key (check AWS_SECRET_ACCESS_KEY / AWS_PROFILE)",
    "AccessDenied": "access denied by the store's policy for these credentials",
    "403": "access denied (wrong credentials, or no permission on the bucket)",
    "Forbidden": "access denied (wrong credentials, or no permission on the bucket)",
    "NoSuchBucket": "the bucket does not exist",
    "404": "the bucket does not exist",
    "ExpiredToken": "the session token has expired (AWS_SESSION_TOKEN)",
    "InvalidToken": "the session token is not valid (AWS_SESSION_TOKEN)",
    "BadDigest": "the bytes the store received do not match their checksum (BadDigest): changed on disk or in transit",
    "SlowDown": "the store is throttling requests (SlowDown)",
    "ServiceUnavailable": "the store is unavailable (503)",
}


# The SDK's loggers write request headers at DEBUG, a session token among them.
SDK_LOGGERS = ("boto3", "botocore", "s3transfer", "urllib3")


def quiet_sdk_loggers() -> None:
    """Keep the SDK's DEBUG records (headers with X-Amz-Security-Token) out of a DEBUG root logger.

    Only loggers nobody configured (level NOTSET) are capped at WARNING: a person who sets
    ``botocore``'s level on purpose gets what they asked for.
    """
    for name in SDK_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.WARNING)


def public_endpoint(url: str | None) -> str:
    """An endpoint URL fit for a message: any ``user:password@`` part removed."""
    if not url:
        return "the default AWS endpoint"
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def describe_client_error(code: str, status: int | None) -> str:
    """One line for an S3 error code (pure: unit-tested without a server)."""
    text = _CODE_TEXT.get(code)
    if text is None and status is not None:
        text = _CODE_TEXT.get(str(status))
    if text is None:
        text = f"the store answered {re.sub(r'[^A-Za-z0-9._-]', '', code)[:64] or 'an error'}" + (
            f" (HTTP {status})" if status else "")
    return text


class S3CheckpointStore(CheckpointStore):
    """``s3://bucket/prefix``: objects ``prefix/model_00500.pt`` and their markers."""

    crc32_while_sending = True

    def __init__(
        self,
        bucket: str,
        prefix: str,
        *,
        multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD,
        multipart_chunksize: int = DEFAULT_MULTIPART_CHUNKSIZE,
        max_concurrency: int = 8,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        max_attempts: int = 5,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.multipart_threshold = multipart_threshold
        self.multipart_chunksize = multipart_chunksize
        self.max_concurrency = max_concurrency
        self._timeouts = (connect_timeout, read_timeout, max_attempts)
        self._client_cache: Any = None

    # --- the client -------------------------------------------------------------------------------
    def _make_client(self, connect_timeout: float, read_timeout: float, max_attempts: int) -> Any:
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            raise StoreAccessError(f"{self.uri}: s3:// needs boto3: pip install 'gpt2sup[s3]'") from None
        quiet_sdk_loggers()
        with self._translate("open a session", StoreAccessError):
            session = boto3.session.Session()
            # botocore reads AWS_DEFAULT_REGION and the profile's region; AWS_REGION is the newer
            # name the other AWS SDKs read first.
            region = os.environ.get("AWS_REGION") or session.region_name or DEFAULT_REGION
            config = Config(
                connect_timeout=connect_timeout, read_timeout=read_timeout,
                retries={"max_attempts": max_attempts, "mode": "standard"},
            )
            # No endpoint_url argument: botocore >= 1.31.57 takes AWS_ENDPOINT_URL_S3 /
            # AWS_ENDPOINT_URL (and the profile's endpoint_url) itself.
            return session.client("s3", region_name=region, config=config)

    @property
    def _client(self) -> Any:
        if self._client_cache is None:
            self._client_cache = self._make_client(*self._timeouts)
        return self._client_cache

    @property
    def endpoint(self) -> str:
        """The endpoint in use, fit for a message."""
        try:
            return public_endpoint(self._client.meta.endpoint_url)
        except ObjectStoreError:
            return "the default AWS endpoint"

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def _transfer_config(self) -> Any:
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(
            multipart_threshold=self.multipart_threshold, multipart_chunksize=self.multipart_chunksize,
            max_concurrency=self.max_concurrency, use_threads=True,
        )

    @contextmanager
    def _translate(self, action: str, error: type[ObjectStoreError] = ObjectStoreError, client: Any = None) -> Iterator[None]:
        """Turn the SDK's exceptions (and OS errors on the local side) into one line that names no
        secret; anything else is a bug of ours and goes through unchanged."""
        try:
            yield
        except ObjectStoreError:
            raise
        except Exception as exc:  # botocore's hierarchy is imported lazily: sorted by module below
            bad_endpoint = isinstance(exc, ValueError) and "endpoint" in str(exc).lower()  # botocore's own
            if not (_from_sdk(exc) or isinstance(exc, OSError) or bad_endpoint):
                raise
            raise error(f"{self.uri}: cannot {action}: {self._explain(exc, client)}") from None

    def _explain(self, exc: BaseException, client: Any = None) -> str:
        holder = client or self._client_cache
        meta = getattr(holder, "meta", None)
        endpoint = public_endpoint(getattr(meta, "endpoint_url", None)) if meta is not None else "the store"
        cause = _root_cause(exc)
        kind = type(cause).__name__
        response = getattr(cause, "response", None)
        if isinstance(response, dict):
            err = response.get("Error") or {}
            status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
            return f"{describe_client_error(str(err.get('Code', '')), status)} [{endpoint}]"
        if kind in ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"):
            return "no usable AWS credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)"
        if kind == "ProfileNotFound":
            return f"the AWS profile {os.environ.get('AWS_PROFILE', '')!r} is not in the AWS config files"
        if kind in ("EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError", "ProxyConnectionError"):
            return f"cannot reach {endpoint}"
        if kind == "ReadTimeoutError":
            return f"{endpoint} did not answer in time"
        if kind == "InvalidEndpointURLError" or kind == "ValueError" and "endpoint" in str(cause).lower():
            return "AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3 is not a valid URL"
        if isinstance(cause, OSError):
            return f"local file error: {cause.strerror or kind}"
        return f"{kind} talking to {endpoint}"

    # --- backend primitives -----------------------------------------------------------------------
    def check_access(self) -> None:
        """List the prefix and write then delete a probe object, with short timeouts and 2 tries."""
        client = self._make_client(5.0, 15.0, 2)
        probe = self._key(".gpt2sup-access-check")
        with self._translate("use the bucket", StoreAccessError, client):
            client.list_objects_v2(Bucket=self.bucket, Prefix=self._key(""), MaxKeys=1)
            client.put_object(Bucket=self.bucket, Key=probe, Body=b"ok\n")
            client.delete_object(Bucket=self.bucket, Key=probe)

    def _list(self) -> dict[str, int]:
        listing: dict[str, int] = {}
        start = self._key("")
        with self._translate("list the prefix"):
            paginator = self._client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=start, Delimiter="/"):
                for obj in page.get("Contents", ()):
                    name = obj["Key"][len(start):]
                    if name and not name.startswith("."):
                        listing[name] = int(obj["Size"])
        return listing

    def _get_bytes(self, name: str) -> bytes | None:
        with self._translate(f"read {name}"):
            try:
                response = self._client.get_object(Bucket=self.bucket, Key=self._key(name))
            except Exception as exc:
                if _is_not_found(exc):
                    return None
                raise
            return response["Body"].read()

    def _put_bytes(self, name: str, data: bytes) -> None:
        with self._translate(f"write {name}"):
            self._client.put_object(Bucket=self.bucket, Key=self._key(name), Body=data, ChecksumAlgorithm="SHA256")

    def _part_size(self, size: int) -> int | None:
        if size < self.multipart_threshold:
            return None
        from s3transfer.utils import (
            ChunksizeAdjuster,  # what the transfer manager itself applies
        )

        return int(ChunksizeAdjuster().adjust_chunksize(self.multipart_chunksize, size))

    def _upload(self, name: str, local: Path, digests: Callable[[], FileDigests]) -> str:
        """Each part is read once to compute its CRC-32, then sent from the file with that
        CRC-32 in its header: the store checks it on arrival, and the SDK, given a checksum,
        computes none of its own (boto3's ``upload_file`` with a checksum computes it again over
        the bytes it streams, beside our own pass: measurably slower on a 2-core machine).
        Parts go up ``max_concurrency`` at a time, read lazily from the file (memory stays at
        the read blocks, not the parts); a failed upload is aborted so no parts linger."""
        key = self._key(name)
        size = local.stat().st_size
        part_size = self._part_size(size)
        with self._translate(f"upload {name}"):
            if part_size is None:
                crcs = (self._put_file(key, local, size),)
            else:
                crcs = self._multipart(key, local, size, part_size)
            head = self._client.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
        sent = dataclasses.replace(digests(), part_size=part_size, part_crc32s=crcs)
        return self._verify_upload(name, head, sent)

    def _send_region(self, request: Callable[..., Any], local: Path, offset: int, length: int,
                     **params: Any) -> tuple[Any, int]:
        """One request whose body is ``length`` bytes of ``local`` from ``offset``, sent with
        their CRC-32 (read first): the store's answer, and that CRC-32."""
        crc = region_crc32(local, offset, length)
        with FileRegion(local, offset, length) as body:
            answer = request(Bucket=self.bucket, Body=body, ContentLength=length, ChecksumCRC32=crc32_b64(crc),
                             **params)
        return answer, crc

    def _put_file(self, key: str, local: Path, size: int) -> int:
        return self._send_region(self._client.put_object, local, 0, size, Key=key)[1]

    def _multipart(self, key: str, local: Path, size: int, part_size: int) -> tuple[int, ...]:
        client = self._client
        upload_id = client.create_multipart_upload(Bucket=self.bucket, Key=key, ChecksumAlgorithm="CRC32")["UploadId"]

        def send(number: int) -> tuple[str, int]:
            offset = (number - 1) * part_size
            answer, crc = self._send_region(client.upload_part, local, offset, min(part_size, size - offset),
                                            Key=key, UploadId=upload_id, PartNumber=number)
            return answer["ETag"], crc

        numbers = range(1, -(-size // part_size) + 1)
        try:
            with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(numbers)),
                                    thread_name_prefix="checkpoint-part") as pool:
                sent = list(pool.map(send, numbers))
            client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id,
                MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etag, "ChecksumCRC32": crc32_b64(crc)}
                                           for n, (etag, crc) in zip(numbers, sent)]})
        except BaseException:
            with contextlib.suppress(Exception):
                client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            raise
        return tuple(crc for _, crc in sent)

    def _verify_upload(self, name: str, head: dict[str, Any], digests: FileDigests) -> str:
        if int(head.get("ContentLength", -1)) != digests.size:
            raise IntegrityError(f"{self.key_of(name)}: stored size {head.get('ContentLength')} != local {digests.size}; not committed")
        return self._verify_checksum(name, head.get("ChecksumCRC32"), digests)

    def _verify_checksum(self, name: str, reported: str | None, digests: FileDigests) -> str:
        """Compare the store's CRC-32 with ours; read the object back (and compare SHA-256s) when
        the store reports none we can compare (no checksum support, or parts cut differently)."""
        if reported and reported in digests.s3_checksums():
            return "store-crc32"
        parts = len(digests.part_crc32s) if digests.part_size is not None else 1
        comparable = reported and (("-" not in reported) or reported.endswith(f"-{parts}"))
        if comparable:
            raise IntegrityError(f"{self.key_of(name)}: the store's checksum differs from the local file's; not committed")
        if self._reread_sha256(name) != digests.sha256_hex:
            raise IntegrityError(f"{self.key_of(name)}: the object read back differs from the local file; not committed")
        return "reread"

    def _reread_sha256(self, name: str) -> str:
        digest = hashlib.sha256()
        with self._translate(f"read back {name}"):
            body = self._client.get_object(Bucket=self.bucket, Key=self._key(name))["Body"]
            for block in iter(lambda: body.read(READ_BLOCK), b""):
                digest.update(block)
        return digest.hexdigest()

    def _download(self, name: str, dest: Path) -> None:
        with self._translate(f"download {name}"):
            self._client.download_file(self.bucket, self._key(name), str(dest), Config=self._transfer_config())

    def _delete(self, name: str) -> None:
        with self._translate(f"delete {name}"):
            self._client.delete_object(Bucket=self.bucket, Key=self._key(name))


class FileRegion:
    """``length`` bytes of a file from ``offset``, as a seekable read-only stream: the body of
    one part, read as the HTTP layer sends it (and re-read from its start when the SDK retries)."""

    def __init__(self, path: Path, offset: int, length: int) -> None:
        self._fd = os.open(path, os.O_RDONLY)
        self._offset, self._length, self._pos = offset, length, 0

    def __len__(self) -> int:
        return self._length

    def read(self, size: int | None = -1) -> bytes:
        left = self._length - self._pos
        want = left if size is None or size < 0 else min(size, left)
        data = os.pread(self._fd, want, self._offset + self._pos) if want > 0 else b""
        self._pos += len(data)
        return data

    def seek(self, position: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._length}[whence]
        self._pos = max(0, min(self._length, base + position))
        return self._pos

    def tell(self) -> int:
        return self._pos

    def seekable(self) -> bool:
        return True

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def region_crc32(path: Path, offset: int, length: int) -> int:
    """The CRC-32 of ``length`` bytes of ``path`` from ``offset`` (zlib releases the GIL)."""
    crc = 0
    with FileRegion(path, offset, length) as region:
        for block in iter(lambda: region.read(READ_BLOCK), b""):
            crc = zlib.crc32(block, crc)
    return crc


def _from_sdk(exc: BaseException) -> bool:
    """Whether boto3, botocore or s3transfer raised this (classified without importing them)."""
    return type(exc).__module__.split(".")[0] in ("boto3", "botocore", "s3transfer", "urllib3")


_WRAPPERS = ("S3UploadFailedError", "RetriesExceededError", "S3TransferRetriesExceededError")


def _root_cause(exc: BaseException) -> BaseException:
    """The exception that says what happened: boto3 wraps a ClientError in S3UploadFailedError
    (as its context) and a failed transfer's last error in RetriesExceededError
    (``last_exception``). Only those wrappers are unwrapped: botocore's own errors (an
    EndpointConnectionError over urllib3's) already say it."""
    current = exc
    for _ in range(5):
        if type(current).__name__ not in _WRAPPERS:
            return current
        inner = getattr(current, "last_exception", None) or current.__cause__ or current.__context__
        if inner is None:
            return current
        current = inner
    return current


def _is_not_found(exc: BaseException) -> bool:
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return False
    code = str((response.get("Error") or {}).get("Code", ""))
    return code in ("NoSuchKey", "404", "NotFound")
