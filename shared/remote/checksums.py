"""Local digests of a checkpoint file, in one read: the whole file's SHA-256, and the per-part
SHA-256s that S3 combines into a multipart object's composite checksum.

Why both: the whole-file SHA-256 goes into the commit marker and is what a download is checked
against (it does not depend on how the file was cut into parts). The composite one is what an S3
store reports for a multipart object (``base64(sha256(d1 || d2 || ...))-N``); computing it
locally from the same read lets the uploader check the store's own checksum without reading the
object back.
"""
from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from pathlib import Path

READ_BLOCK = 1 << 20


@dataclass(frozen=True)
class FileDigests:
    """What one read of a local file yields."""

    size: int
    sha256_hex: str
    part_size: int | None  # None: the file is uploaded in one PUT
    part_digests: tuple[bytes, ...] = ()

    @property
    def sha256_b64(self) -> str:
        """The whole-file digest as S3 spells a single-part object's ``ChecksumSHA256``."""
        return base64.b64encode(bytes.fromhex(self.sha256_hex)).decode("ascii")

    def s3_checksum(self) -> str:
        """The ``ChecksumSHA256`` a store should report for this file, single- or multipart."""
        if self.part_size is None:
            return self.sha256_b64
        return composite_sha256(self.part_digests)


def composite_sha256(part_digests: tuple[bytes, ...] | list[bytes]) -> str:
    """S3's composite checksum of a multipart object: SHA-256 of the parts' digests, then ``-N``."""
    combined = hashlib.sha256(b"".join(part_digests)).digest()
    return f"{base64.b64encode(combined).decode('ascii')}-{len(part_digests)}"


def file_digests(path: Path, part_size: int | None = None) -> FileDigests:
    """Hash ``path`` once; with ``part_size``, also each ``part_size`` slice (the last may be short)."""
    whole = hashlib.sha256()
    parts: list[bytes] = []
    part = hashlib.sha256() if part_size else None
    in_part = 0
    size = 0
    with open(path, "rb") as handle:
        while True:
            block = handle.read(READ_BLOCK)
            if not block:
                break
            size += len(block)
            whole.update(block)
            if part is None or part_size is None:
                continue
            view = memoryview(block)
            while view:
                take = min(len(view), part_size - in_part)
                part.update(view[:take])
                in_part += take
                view = view[take:]
                if in_part == part_size:
                    parts.append(part.digest())
                    part, in_part = hashlib.sha256(), 0
    if part is not None and in_part:
        parts.append(part.digest())
    return FileDigests(size, whole.hexdigest(), part_size, tuple(parts))


def sha256_of_file(path: Path) -> str:
    """The hex SHA-256 of a file (a download checked against its commit marker)."""
    return file_digests(path).sha256_hex
