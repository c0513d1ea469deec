"""Fill a (tmpfs) disk to its last byte: the full-disk fault of the resilience tests and the soak."""
from __future__ import annotations

import os
from pathlib import Path


def fill_disk(directory: Path, name: str = "filler") -> Path:
    """Write ``directory/name`` until the disk refuses one more page; delete it to free the space."""
    filler = Path(directory) / name
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for chunk in (1 << 20, 4096):  # megabytes first, then the last pages
            try:
                while True:
                    os.write(fd, b"\0" * chunk)
            except OSError:
                pass
    finally:
        os.close(fd)
    return filler
