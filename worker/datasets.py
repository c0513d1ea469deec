"""Evaluation and fine-tuning datasets: a file given on the command line, else a cached copy,
else the official file downloaded once into the cache.

Shared by HellaSwag (``--hellaswag_path``) and Dolly fine-tuning (``--data_path``). The download
goes to a temporary name and is renamed into place, so an interrupted one leaves no half file
that a later run would take for the data. ``GPT2SUP_OFFLINE`` (air-gapped machines, tests) skips
it: without network an attempt could only wait for its timeout.
"""
from __future__ import annotations

import os
import urllib.request
from collections.abc import Callable
from pathlib import Path

DOWNLOAD_TIMEOUT_S = 30.0
OFFLINE_ENV = "GPT2SUP_OFFLINE"


class DatasetUnavailable(Exception):
    """No data could be found or fetched; the message is the one line a user sees."""


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
