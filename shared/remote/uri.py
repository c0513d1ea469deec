"""``--checkpoint-uri``: which store, parsed without touching it.

``s3://bucket/prefix`` (any S3-compatible store; the endpoint comes from the AWS chain, not the
URI), ``file:///abs/path`` or a plain path (a local or mounted directory). Anything else is a
:class:`CheckpointUriError` whose text a CLI prints as its one line.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from shared.remote.errors import CheckpointUriError
from shared.remote.store import CheckpointStore

# S3's bucket naming rules (the subset every compatible store accepts).
BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
EXPECTED = "expected s3://BUCKET/PREFIX, file:///ABSOLUTE/PATH or a directory path"


@dataclass(frozen=True)
class StoreLocation:
    """A parsed URI: ``scheme`` "s3" with ``bucket`` and ``prefix``, or "file" with ``path``."""

    scheme: str
    bucket: str = ""
    prefix: str = ""
    path: Path | None = None

    @property
    def uri(self) -> str:
        if self.scheme == "s3":
            return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        assert self.path is not None
        return self.path.as_uri()


def shown(uri: str) -> str:
    """A URI fit for a message: a ``user:password@`` part (which has no place in it) cut out."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/@]*@", r"\1", uri)


def _s3_location(uri: str) -> StoreLocation:
    parts = urlsplit(uri)
    bucket = parts.netloc
    if not bucket:
        raise CheckpointUriError(f"checkpoint URI {shown(uri)!r} names no bucket ({EXPECTED})")
    if "@" in bucket or ":" in bucket:
        raise CheckpointUriError(
            f"checkpoint URI {shown(uri)!r}: put credentials and the endpoint in the AWS environment "
            "(AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL_S3...), not in the URI"
        )
    if not BUCKET_RE.match(bucket) or ".." in bucket:
        raise CheckpointUriError(f"checkpoint URI {shown(uri)!r}: {bucket!r} is not a valid bucket name")
    if parts.query or parts.fragment:
        raise CheckpointUriError(f"checkpoint URI {shown(uri)!r}: no ?query or #fragment allowed ({EXPECTED})")
    segments = [s for s in parts.path.split("/") if s]
    if any(s in (".", "..") for s in segments) or "//" in parts.path.strip("/"):
        raise CheckpointUriError(f"checkpoint URI {shown(uri)!r}: the prefix has an empty, '.' or '..' segment")
    return StoreLocation("s3", bucket=bucket, prefix="/".join(segments))


def _file_location(uri: str) -> StoreLocation:
    parts = urlsplit(uri)
    if parts.netloc not in ("", "localhost"):
        raise CheckpointUriError(
            f"checkpoint URI {shown(uri)!r}: file:// takes an absolute path (file:///mnt/ckpt), not a host"
        )
    path = unquote(parts.path)
    if not path.startswith("/") or parts.query or parts.fragment:
        raise CheckpointUriError(f"checkpoint URI {shown(uri)!r}: file:// takes an absolute path ({EXPECTED})")
    return StoreLocation("file", path=Path(path))


def parse_checkpoint_uri(uri: str) -> StoreLocation:
    """Parse ``uri`` (pure: nothing is opened or created)."""
    text = (uri or "").strip()
    if not text:
        raise CheckpointUriError(f"empty checkpoint URI ({EXPECTED})")
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", text)
    if match is None:
        return StoreLocation("file", path=Path(text).expanduser().absolute())
    scheme = match.group(1).lower()
    if scheme == "s3":
        return _s3_location(text)
    if scheme == "file":
        return _file_location(text)
    raise CheckpointUriError(f"checkpoint URI {shown(text)!r}: unsupported scheme {scheme}:// ({EXPECTED})")


def open_store(uri: str, **s3_options: Any) -> CheckpointStore:
    """The store a URI names; ``s3_options`` tune the S3 backend (multipart threshold, timeouts).

    Opening touches nothing: call ``check_access()`` to find out, in one line, whether the store
    can be used.
    """
    location = parse_checkpoint_uri(uri)
    if location.scheme == "s3":
        from shared.remote.s3_store import S3CheckpointStore

        return S3CheckpointStore(location.bucket, location.prefix, **s3_options)
    from shared.remote.local_store import LocalDirStore

    assert location.path is not None
    return LocalDirStore(location.path)
