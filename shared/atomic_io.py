"""Small file helpers shared by the worker and the supervisor: atomic rewrites, appends, tails.

Readers of our state files (heartbeats, supervisor.json) poll them while they are rewritten, so
every rewrite goes through a temporary file in the same directory followed by ``os.replace``:
a reader sees either the old or the new content, never half of one. The one exception is
deliberate: on a full disk (no block for the temporary file) :func:`rewrite_json` rewrites the
file inside its own block, because a state file that stops changing is worse there (a silent
heartbeat reads as a hang) than the rare torn read, which our readers already survive.
"""
from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def fsync_path(path: Path) -> None:
    """fsync a file, or a directory to make a rename inside it durable (POSIX needs both)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path: Path, text: str, *, durable: bool = False, create_parent: bool = True) -> None:
    """Replace ``path`` with ``text`` atomically; ``durable`` adds fsyncs for crash safety.

    ``create_parent=False`` makes a missing directory an error (FileNotFoundError) instead of
    silently recreating a run directory somebody removed.
    """
    path = Path(path)
    if create_parent:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp creates 0600; these files are meant to be read by others
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp_name, path)
        if durable:
            fsync_path(path.parent)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise


def write_json_atomic(path: Path, data: Any, *, durable: bool = False, create_parent: bool = True) -> None:
    """Replace ``path`` with the JSON encoding of ``data`` atomically."""
    write_text_atomic(path, json.dumps(data, sort_keys=True) + "\n", durable=durable, create_parent=create_parent)


def overwrite_in_place(path: Path, text: str) -> None:
    """Rewrite an existing small file inside the blocks it already has: the full-disk fallback.

    A rewrite through a temporary file needs a free block, which a full disk does not have; the
    file's own block is still there. The new text is padded with spaces to the old size (JSON
    allows trailing whitespace), so the file never shrinks and a reader never sees the old tail
    behind the new text. A reader polling at the very moment of the write may see a torn file;
    our readers treat that as unreadable and keep the last good copy. Raises OSError (ENOSPC
    when the text outgrows the file's last block, FileNotFoundError when there is no file).
    """
    data = text.encode("utf-8")
    fd = os.open(path, os.O_WRONLY)  # never O_CREAT: a new file would need a block
    try:
        size = os.fstat(fd).st_size
        data += b" " * max(0, size - len(data))
        written = 0
        while written < len(data):
            written += os.pwrite(fd, data[written:], written)
    finally:
        os.close(fd)


def rewrite_json(path: Path, data: Any, *, create_parent: bool = True) -> None:
    """:func:`write_json_atomic`, falling back to :func:`overwrite_in_place` when the disk is full.

    For the small state files that must keep up while the disk is full (heartbeats, supervisor.json):
    the one that matters most then is the one that says what is going on.
    """
    text = json.dumps(data, sort_keys=True) + "\n"
    try:
        write_text_atomic(path, text, create_parent=create_parent)
    except OSError as exc:
        if exc.errno not in DISK_FULL_ERRNOS:
            raise
        try:
            overwrite_in_place(path, text)
        except OSError:
            raise exc from None


def read_json(path: Path) -> Any | None:
    """Read a JSON file written by :func:`write_json_atomic`; ``None`` if absent or unreadable."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def append_jsonl(path: Path, record: dict[str, Any], *, create_parent: bool = True) -> None:
    """Append one JSON line, whole or not at all.

    One ``write`` on an ``O_APPEND`` descriptor keeps concurrent appends from interleaving. When
    the disk fills mid-line (a short write, then ENOSPC) the partial line is cut off again, so a
    reader never meets half a record glued to the next one; the error still reaches the caller.
    A file whose last line is torn already (a writer killed mid-line, a disk that filled under
    another program) gets this record on a fresh line: glued to the torn one, it would be lost
    with it.
    """
    path = Path(path)
    if create_parent:
        path.parent.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(record, sort_keys=True) + "\n").encode("utf-8")
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        start = os.fstat(fd).st_size
        if start and os.pread(fd, 1, start - 1) != b"\n":
            data = b"\n" + data  # the torn line stays one bad line, skipped by the readers
        written = 0
        try:
            while written < len(data):
                written += os.write(fd, data[written:])
        except OSError:
            # Only undo our own bytes: if another writer appended meanwhile, the size tells.
            if written and os.fstat(fd).st_size == start + written:
                os.ftruncate(fd, start)
            raise
    finally:
        os.close(fd)


def read_file_tail(path: Path, max_bytes: int) -> tuple[bytes, bool]:
    """The last ``max_bytes`` of a file (``b""`` if unreadable), and whether the start was cut.

    Seeks from the end, so reading the tail of a long log costs the same as of a short one.
    """
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            start = max(0, size - max_bytes)
            handle.seek(start)
            return handle.read(size - start), start > 0
    except OSError:
        return b"", False


JSONL_TAIL_BYTES = 64 * 1024  # what a tail read of a JSONL file looks at by default


def read_jsonl(path: Path, max_records: int | None = None,
               tail_bytes: int = JSONL_TAIL_BYTES) -> list[dict[str, Any]]:
    """The well-formed JSON object lines of ``path``, oldest first; a torn or foreign line is skipped.

    The one tolerant JSONL reader (events.jsonl, metrics.jsonl are appended while they are read).
    Without ``max_records`` the whole file is read, parsed as one JSON array first (several times
    faster than line by line, which matters to ``gpt2sup status`` on a long run); only a file with
    a bad line pays for the line-by-line pass. With ``max_records``, only the last ``max_records``
    objects within the last ``tail_bytes``: the read seeks from the end, so its cost does not grow
    with the file, and a line cut by the seek is skipped rather than trusted.
    """
    if max_records is not None:
        return _read_jsonl_tail(path, max_records, tail_bytes)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    try:
        records = json.loads("[" + ",".join(line for line in text.splitlines() if line.strip()) + "]")
    except ValueError:
        records = []
        for line in text.splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    return [record for record in records if isinstance(record, dict)]


def _read_jsonl_tail(path: Path, max_records: int, tail_bytes: int) -> list[dict[str, Any]]:
    chunk, cut = read_file_tail(path, tail_bytes)
    lines = chunk.split(b"\n")
    if cut:
        lines = lines[1:]  # first line is probably partial
    records: list[dict[str, Any]] = []
    for raw in reversed(lines):
        if len(records) >= max_records:
            break
        raw = raw.strip()
        if not raw:
            continue
        try:
            record = json.loads(raw)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    records.reverse()
    return records
