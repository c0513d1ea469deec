"""Evaluation and fine-tuning datasets: a file given on the command line, else a cached copy,
else the official file downloaded once into the cache.

Shared by HellaSwag (``--hellaswag_path``) and Dolly fine-tuning (``--data_path``). The download
goes to a temporary name and is renamed into place, so an interrupted one leaves no half file
that a later run would take for the data. ``GPT2SUP_OFFLINE`` (air-gapped machines, tests) skips
it: without network an attempt could only wait for its timeout.
"""
from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

DOWNLOAD_TIMEOUT_S = 30.0
OFFLINE_ENV = "GPT2SUP_OFFLINE"


class DatasetUnavailable(Exception):
    """No data could be found or fetched; the message is the one line a user sees."""


class MalformedRecord(ValueError):
    """A line of a jsonl dataset that is unreadable or lacks a field; the message names ``path:line``."""


def read_jsonl_records(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """``("path:line", record)`` for every non-blank line of a jsonl file, each a JSON object.

    Raises :class:`MalformedRecord` for a line that is not one, :class:`DatasetUnavailable` when
    the file cannot be read. Callers check the fields and raise ``MalformedRecord(where: ...)``.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                where = f"{path}:{number}"
                try:
                    record = json.loads(line)
                except ValueError as exc:
                    raise MalformedRecord(f"{where}: not JSON ({exc})") from None
                if not isinstance(record, dict):
                    raise MalformedRecord(f"{where}: not a JSON object")
                yield where, record
    except OSError as exc:
        raise DatasetUnavailable(f"cannot read {path}: {exc.strerror or exc}") from None


def find_or_download(explicit: str | None, flag: str, cache_dir: Path, cache_name: str, url: str, *,
                     may_download: bool | None = None, say: Callable[[str], None] = print) -> Path:
    """``explicit`` (the value of ``flag``), else ``cache_dir/cache_name``, else ``url`` downloaded there.

    ``may_download`` None: unless ``GPT2SUP_OFFLINE`` is set.
    """
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise DatasetUnavailable(f"{flag} {explicit}: no such file")
        return path
    cached = cache_dir / cache_name
    if cached.is_file():
        return cached
    if may_download is None:
        may_download = not os.environ.get(OFFLINE_ENV)
    if not may_download:
        raise DatasetUnavailable(f"no data: pass {flag} FILE (not cached at {cached}; "
                                 f"{OFFLINE_ENV} is set, so it is not downloaded)")
    say(f"downloading {url} to {cached}")
    partial = cached.with_name(f".{cache_name}.{os.getpid()}.part")
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(partial, "wb") as out:
            while chunk := response.read(1 << 20):
                out.write(chunk)
        os.replace(partial, cached)
    except (OSError, ValueError) as exc:  # URLError is an OSError; no network is the common case
        partial.unlink(missing_ok=True)
        raise DatasetUnavailable(f"no data: download failed ({exc}); pass {flag} FILE") from None
    return cached
