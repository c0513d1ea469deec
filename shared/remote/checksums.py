"""Local digests of a checkpoint file, in one read: the whole file's SHA-256, its CRC-32, and the
CRC-32 of each part S3 stores it in.

Why these: the whole-file SHA-256 goes into the commit marker and is what a download is checked
against, end to end (it does not depend on how the file was cut into parts). The CRC-32s are what
an S3 store verifies on each part as it arrives and reports back for the object: either the
whole object's CRC-32, or, for a multipart object, the composite ``base64(crc32(c1 || c2 ||
...))-N`` (each ``c`` a part's CRC-32, big-endian); computing both locally from the same read
lets the uploader check the store's own checksum without reading the object back. CRC-32 rather
than a per-part SHA-256 on the wire: it is what a plain boto3 upload sends anyway, while SHA-256
on every part (hashed by the client and again by the server) made an upload about a quarter
slower on a 2-core machine (bench/bench_remote.py); the SHA-256 that matters, the end-to-end one,
is kept.
"""
from __future__ import annotations

import base64
import hashlib
import zlib
from dataclasses import dataclass
from pathlib import Path

READ_BLOCK = 1 << 20


def crc32_b64(value: int) -> str:
    """A CRC-32 as S3 writes it in ``ChecksumCRC32``: base64 of its 4 big-endian bytes."""
    return base64.b64encode(value.to_bytes(4, "big")).decode("ascii")


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """The CRC-32 of ``A + B`` from ``crc32(A)``, ``crc32(B)`` and ``len(B)`` (zlib's
    ``crc32_combine``, which Python's zlib does not expose): appending ``len2`` zero bytes is a
    linear operator over GF(2), applied by repeated squaring. Lets one read yield the parts'
    CRC-32s and the whole file's without a second CRC pass."""
    if len2 <= 0:
        return crc1

    def times(matrix: list[int], vector: int) -> int:
        total, row = 0, 0
        while vector:
            if vector & 1:
                total ^= matrix[row]
            vector >>= 1
            row += 1
        return total

    def square(matrix: list[int]) -> list[int]:
        return [times(matrix, matrix[n]) for n in range(32)]

    odd = [0xEDB88320] + [1 << n for n in range(31)]  # one zero bit
    even = square(odd)  # two zero bits
    odd = square(even)  # four zero bits
    while True:
        even = square(odd)
        if len2 & 1:
            crc1 = times(even, crc1)
        len2 >>= 1
        if not len2:
            break
        odd = square(even)
        if len2 & 1:
            crc1 = times(odd, crc1)
        len2 >>= 1
        if not len2:
            break
    return crc1 ^ crc2


@dataclass(frozen=True)
class FileDigests:
    """What one read of a local file yields."""

    size: int
    sha256_hex: str
    part_size: int | None  # None: the file is uploaded in one PUT
    part_crc32s: tuple[int, ...] = ()  # one per part; one for the whole file when part_size is None

    @property
    def crc32(self) -> int:
        """The whole file's CRC-32, combined from the parts'."""
        if not self.part_crc32s:
            return 0
        crc, step = self.part_crc32s[0], self.part_size or self.size
        for index, part in enumerate(self.part_crc32s[1:], start=1):
            crc = crc32_combine(crc, part, min(step, self.size - index * step))
        return crc

    def s3_checksums(self) -> set[str]:
        """The ``ChecksumCRC32`` values a store may report for this file: the whole object's,
        and for a multipart upload also the composite of its parts."""
        values = {crc32_b64(self.crc32)}
        if self.part_size is not None:
            values.add(composite_crc32(self.part_crc32s))
        return values


def composite_crc32(part_crc32s: tuple[int, ...] | list[int]) -> str:
    """S3's composite CRC-32 of a multipart object: the CRC-32 of the parts' CRC-32s, then ``-N``."""
    combined = zlib.crc32(b"".join(value.to_bytes(4, "big") for value in part_crc32s))
    return f"{crc32_b64(combined)}-{len(part_crc32s)}"


def file_digests(path: Path, part_size: int | None = None, *, crc32: bool = True) -> FileDigests:
    """Read ``path`` once: its SHA-256 and the CRC-32 of each ``part_size`` slice (the last may be
    short; the whole file is one part when ``part_size`` is None). hashlib and zlib release the
    GIL, so this runs beside an upload. ``crc32=False``: the SHA-256 alone (``part_crc32s``
    empty), for an uploader that computes each part's CRC-32 as it sends the part."""
    whole = hashlib.sha256()
    parts: list[int] = []
    part_crc, in_part = 0, 0
    size = 0
    with open(path, "rb") as handle:
        while True:
            block = handle.read(READ_BLOCK)
            if not block:
                break
            size += len(block)
            whole.update(block)
            if not crc32:
                continue
            if part_size is None:
                part_crc = zlib.crc32(block, part_crc)
                continue
            view = memoryview(block)
            while view:
                take = min(len(view), part_size - in_part)
                part_crc = zlib.crc32(view[:take], part_crc)
                in_part += take
                view = view[take:]
                if in_part == part_size:
                    parts.append(part_crc)
                    part_crc, in_part = 0, 0
    if crc32 and (part_size is None or in_part):
        parts.append(part_crc)
    return FileDigests(size, whole.hexdigest(), part_size, tuple(parts))


def sha256_of_file(path: Path) -> str:
    """The hex SHA-256 of a file (a download checked against its commit marker)."""
    return file_digests(path, crc32=False).sha256_hex
