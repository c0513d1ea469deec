"""``torch.save`` for checkpoints: torch's inline zip CRC off, the CRC-32s computed in parallel.

torch's zip writer computes every member's CRC-32 on the writing thread, byte by byte, as it
writes; at GPT-2 124M (1.5 GB) that is most of what a synchronous save costs beyond writing the
bytes (``bench/bench_checkpoint.py``). Here torch writes with its CRC off, then
``shared.checkpoint_crc.fill_in_zip_crcs`` reads the file back from the page cache on several
threads (``zlib.crc32`` releases the GIL) while the caller's flusher pushes the same pages to
disk, and writes each CRC where torch would have. The file that reaches its final name is the
standard zip torch writes with the option on, every CRC-32 in place: ``gpt2sup verify``, the
supervisor's validation and the worker's own pre-load check read it unchanged.

Only checkpoint writes call ``torch.save`` in a worker, so switching torch's process-wide option
off around one save (under a lock, restored after) cannot reach another file.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import torch

from shared.checkpoint_crc import UnexpectedZipLayout, fill_in_zip_crcs

_TORCH_CRC_OPTION = threading.Lock()  # the option is process-wide; one save at a time changes it


def save_checkpoint_file(state: Any, path: Path, crc_threads: int = 2) -> None:
    """Write ``state`` to ``path`` as torch.save does, with every zip CRC-32 set.

    If torch cannot turn its CRC off (an older torch), or the file is not laid out as expected,
    torch writes it again with its own CRC: slower, never a file without CRCs.
    """
    if not hasattr(torch.serialization, "set_crc32_options"):
        torch.save(state, str(path))
        return
    _save_with_torch_crc(state, path, compute=False)
    try:
        fill_in_zip_crcs(path, threads=crc_threads)
    except UnexpectedZipLayout:
        _save_with_torch_crc(state, path, compute=True)


def _save_with_torch_crc(state: Any, path: Path, compute: bool) -> None:
    serialization = torch.serialization
    with _TORCH_CRC_OPTION:
        previous = serialization.get_crc32_options()
        serialization.set_crc32_options(compute)
        try:
            torch.save(state, str(path))  # a path: torch's own C++ writer, faster than a handle
        finally:
            serialization.set_crc32_options(previous)
