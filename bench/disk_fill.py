"""Real small disks for the full-disk faults: a tmpfs mounted for a while, filled to its last byte.

Used by ``bench/chaos_soak.py`` (a fault injector) and by the resilience tests. Mounting needs root (the test
environment has it); callers skip when the mount is refused.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path


class MountRefused(RuntimeError):
    pass


@contextlib.contextmanager
def mounted_tmpfs(mount_point: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (``256k``, ``200m``) at ``mount_point``, lazily unmounted afterwards."""
    mount_point = Path(mount_point)
    mount_point.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise MountRefused(f"cannot mount a tmpfs at {mount_point}: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, check=False)


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
