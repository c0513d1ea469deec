"""Does a torch.save file still hold the bytes that were written? (zip CRC-32 of every member)

``torch.load`` checks no CRC, so a flipped bit in tensor data loads silently as a wrong weight.
Both sides need this check: the supervisor before a restart and ``gpt2sup verify``, and the
worker on the file it is about to resume from (a byte can change after the supervisor looked).
The writing side is here too: ``fill_in_zip_crcs`` computes the CRC-32s of a file torch wrote
with its own (inline, single-threaded) CRC turned off, in parallel, and writes them where torch
would have, so the result is the same standard zip every reader above checks.
Plain standard library, no torch.
"""
from __future__ import annotations

import mmap
import os
import struct
import threading
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

_READ_CHUNK = 8 * 1024 * 1024
_CRC_CHUNK = 64 * 1024 * 1024  # zlib.crc32 releases the GIL per call: chunks keep threads busy
_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # signature .. extra length: 30 bytes
_CENTRAL_HEADER = struct.Struct("<4s4B4H3L5H2L")  # 46 bytes; its CRC-32 is at offset 16
_DESCRIPTOR_SIGNATURE = b"PK\x07\x08"
_HAS_DATA_DESCRIPTOR = 0x08  # general purpose flag bit 3


def check_zip_crc(path: Path) -> tuple[bool, str]:
    """Parse the zip directory and recompute every member's CRC-32 (one sequential read).

    Reading each member to its end through ``ZipFile.open`` makes zipfile check the local header
    against the central directory and compare the CRC-32 (``BadZipFile`` on a mismatch). A
    hand-rolled ``readinto`` loop over the stored members measured no faster (bench_verify.py):
    zlib's CRC, not the copying, is the cost, so the standard library's checked path stays.
    """
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        return False, ("not a zip archive (torch.save's format): no intact central directory, "
                       "so the file is cut short, overwritten, or not a checkpoint")
    except OSError as error:
        return False, f"read error: {error.strerror or error}"
    except Exception as error:  # noqa: BLE001 - a corrupt directory can trip zipfile in many ways
        return False, f"zip directory unreadable: {type(error).__name__}: {error}"
    total = 0
    with archive:
        members = sorted(archive.infolist(), key=lambda info: info.header_offset)  # read in file order
        if not any(info.filename.endswith("/data.pkl") or info.filename == "data.pkl" for info in members):
            return False, "zip archive holds no data.pkl: not written by torch.save"
        for info in members:
            try:
                with archive.open(info) as member:
                    while True:
                        chunk = member.read(_READ_CHUNK)
                        if not chunk:
                            break
                        total += len(chunk)
            except zipfile.BadZipFile as error:
                if "CRC" in str(error):
                    return False, (f"CRC-32 mismatch in {info.filename}: its bytes changed after "
                                   f"they were written (bit rot, a bad copy, an overwrite)")
                return False, f"zip member {info.filename} damaged: {error}"
            except OSError as error:
                return False, f"read error in {info.filename}: {error.strerror or error}"
            except Exception as error:  # noqa: BLE001 - zlib.error, EOFError, ... from a damaged member
                return False, f"zip member {info.filename} damaged: {type(error).__name__}: {error}"
    return True, f"{len(members)} members, {total:,} bytes, every CRC-32 matches"


class UnexpectedZipLayout(ValueError):
    """The file is not laid out the way torch's writer lays it out; nothing was changed."""


@dataclass(frozen=True)
class _Member:
    name: str
    data_offset: int  # first byte of the stored data
    size: int  # stored (= uncompressed) bytes
    central_crc_offset: int  # the CRC-32 field of its central directory entry
    descriptor_crc_offset: int  # the CRC-32 field of the data descriptor after its data


def fill_in_zip_crcs(path: Path, threads: int = 2) -> int:
    """Write the CRC-32 of every member of a torch.save zip whose CRC fields torch left at 0.

    Why: torch's writer computes each member's CRC-32 inline, one byte stream on one thread, and
    at GPT-2 124M that is a large part of a synchronous save (``bench/bench_checkpoint.py``).
    Saved with ``compute_crc32`` off, the file is complete but its CRC fields are 0; this reads
    the just-written bytes back (from the page cache) with ``threads`` threads and writes each
    CRC into the two places torch would have: the data descriptor after the member's data and
    the member's central directory entry (torch's local headers carry 0, the descriptor has it).
    The file is then byte for byte what torch writes with its CRC on, and every check of it
    (``check_zip_crc``, ``gpt2sup verify``, the worker's pre-load check) is unchanged.

    Every structural assumption is checked before the first byte is written: anything else
    raises ``UnexpectedZipLayout`` with the file untouched, and the caller saves again with
    torch's CRC on. Returns the number of members.
    """
    with open(path, "r+b") as handle:
        members = _torch_zip_members(handle)
        if not members:
            return 0
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
            crcs = _crcs_in_parallel(view, members, threads)
        fd = handle.fileno()
        for member in members:
            field = struct.pack("<L", crcs[member.name])
            os.pwrite(fd, field, member.descriptor_crc_offset)
            os.pwrite(fd, field, member.central_crc_offset)
    return len(members)


def _crcs_in_parallel(view: mmap.mmap, members: list[_Member], threads: int) -> dict[str, int]:
    """Every member's CRC-32, the largest first, on ``threads`` threads including this one.

    Plain threads rather than an executor: a checkpoint can be finished while the interpreter
    exits (an in-flight asynchronous save waited for at exit), when executors refuse new work
    and a thread may not start; then this thread computes them all.
    """
    pending = sorted(members, key=lambda member: member.size)  # pop() takes the largest
    crcs: dict[str, int] = {}
    errors: list[BaseException] = []
    lock = threading.Lock()

    def work() -> None:
        while True:
            with lock:
                if not pending or errors:
                    return
                member = pending.pop()
            try:
                crc = _crc_of(view, member)
            except BaseException as error:  # noqa: BLE001 - re-raised on the calling thread
                with lock:
                    errors.append(error)
                return
            with lock:
                crcs[member.name] = crc

    helpers = []
    for index in range(max(1, threads) - 1):
        helper = threading.Thread(target=work, name=f"zip-crc-{index}", daemon=True)
        try:
            helper.start()
        except RuntimeError:  # the interpreter is shutting down
            break
        helpers.append(helper)
    work()
    for helper in helpers:
        helper.join()
    if errors:
        raise errors[0]
    return crcs


def _crc_of(view: mmap.mmap, member: _Member) -> int:
    crc = 0
    with memoryview(view) as whole:
        end = member.data_offset + member.size
        for start in range(member.data_offset, end, _CRC_CHUNK):
            with whole[start:min(start + _CRC_CHUNK, end)] as chunk:
                crc = zlib.crc32(chunk, crc)
    return crc


def _torch_zip_members(handle) -> list[_Member]:
    """Each member's data span and CRC field offsets, checked against torch's layout."""
    try:
        with zipfile.ZipFile(handle) as archive:  # closing it leaves the caller's handle open
            infos, central = archive.infolist(), archive.start_dir
    except zipfile.BadZipFile as error:
        raise UnexpectedZipLayout(f"not a zip archive: {error}") from None
    members = []
    for info in infos:
        handle.seek(central)
        entry = handle.read(_CENTRAL_HEADER.size)
        if len(entry) < _CENTRAL_HEADER.size:
            raise UnexpectedZipLayout("central directory cut short")
        fields = _CENTRAL_HEADER.unpack(entry)
        name_length, extra_length, comment_length = fields[12], fields[13], fields[14]
        name = handle.read(name_length).decode("utf-8")
        if fields[0] != b"PK\x01\x02" or name != info.filename:
            raise UnexpectedZipLayout(f"central directory entry for {info.filename} not where expected")
        central_crc_offset = central + 16
        central += _CENTRAL_HEADER.size + name_length + extra_length + comment_length

        if info.compress_type != zipfile.ZIP_STORED or info.file_size != info.compress_size:
            raise UnexpectedZipLayout(f"{info.filename} is compressed: torch.save stores members")
        if info.file_size == 0 and info.CRC == 0:
            continue  # an empty member's CRC-32 is 0: right as written (torch adds no descriptor)
        if not info.flag_bits & _HAS_DATA_DESCRIPTOR:
            raise UnexpectedZipLayout(f"{info.filename} has no data descriptor")
        handle.seek(info.header_offset)
        local = handle.read(_LOCAL_HEADER.size)
        if len(local) < _LOCAL_HEADER.size:
            raise UnexpectedZipLayout(f"local header of {info.filename} cut short")
        signature, *_, local_name_length, local_extra_length = _LOCAL_HEADER.unpack(local)
        if signature != b"PK\x03\x04":
            raise UnexpectedZipLayout(f"no local header for {info.filename}")
        data_offset = info.header_offset + _LOCAL_HEADER.size + local_name_length + local_extra_length
        end = data_offset + info.compress_size
        handle.seek(end)
        if handle.read(len(_DESCRIPTOR_SIGNATURE)) != _DESCRIPTOR_SIGNATURE:
            raise UnexpectedZipLayout(f"no data descriptor after {info.filename}")
        members.append(_Member(info.filename, data_offset, info.compress_size, central_crc_offset,
                               end + len(_DESCRIPTOR_SIGNATURE)))
    return members
