"""A directory as a checkpoint store: ``file:///mnt/shared/run1`` or a plain path (a network mount).

Every write goes to a hidden temporary file in the same directory, is fsynced and renamed into
place, and the directory is fsynced: a reader (another machine on the mount) sees a whole object
or none. A mount has no checksum of its own to ask, so an upload is verified by reading the
object back from the mount and hashing it.
"""
from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from shared.atomic_io import fsync_path
from shared.remote.checksums import FileDigests, sha256_of_file
from shared.remote.errors import IntegrityError, ObjectStoreError, StoreAccessError
from shared.remote.store import CheckpointStore

COPY_BLOCK = 8 << 20


class LocalDirStore(CheckpointStore):
    """Checkpoints as files in one directory.

    The directory itself is created on first use, but never its parent: a mount that is not
    there (``/mnt/nfs`` unmounted) must be an error, not a directory quietly made on the very
    local disk the store is meant to outlive.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.uri = self.root.as_uri()

    def _tmp_path(self, name: str) -> Path:
        return self.root / f".{name}.{uuid.uuid4().hex[:8]}.tmp"

    def _os_error(self, action: str, exc: OSError) -> ObjectStoreError:
        return ObjectStoreError(f"{self.uri}: cannot {action}: {exc.strerror or type(exc).__name__}")

    def check_access(self) -> None:
        probe = self.root / f".gpt2sup-access-check.{uuid.uuid4().hex[:8]}"
        if not self.root.parent.is_dir():
            raise StoreAccessError(f"{self.uri}: {self.root.parent} is not a directory (is the mount there?)")
        try:
            self.root.mkdir(exist_ok=True)
            probe.write_bytes(b"ok\n")
            probe.unlink()
        except OSError as exc:
            raise StoreAccessError(f"{self.uri}: not a writable directory: {exc.strerror or type(exc).__name__}") from None

    def _list(self) -> dict[str, int]:
        listing: dict[str, int] = {}
        try:
            with os.scandir(self.root) as entries:
                for entry in entries:
                    if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
                        continue
                    try:
                        listing[entry.name] = entry.stat(follow_symlinks=False).st_size
                    except FileNotFoundError:
                        continue  # pruned while we listed
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise self._os_error("list the directory", exc) from None
        return listing

    def _get_bytes(self, name: str) -> bytes | None:
        try:
            return (self.root / name).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._os_error(f"read {name}", exc) from None

    def _install(self, name: str, write: Callable[[BinaryIO], object]) -> None:
        """Write through ``write(handle)`` into a temporary file, fsync, rename, fsync the directory."""
        tmp = self._tmp_path(name)
        try:
            self.root.mkdir(exist_ok=True)
            with open(tmp, "wb") as handle:
                write(handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.root / name)
            fsync_path(self.root)
        except OSError as exc:
            raise self._os_error(f"write {name}", exc) from None
        finally:
            tmp.unlink(missing_ok=True)

    def _put_bytes(self, name: str, data: bytes) -> None:
        self._install(name, lambda handle: handle.write(data))

    def _part_size(self, size: int) -> int | None:
        return None

    def _upload(self, name: str, local: Path, digests: Callable[[], FileDigests]) -> str:
        def copy(handle: BinaryIO) -> None:
            with open(local, "rb") as source:
                shutil.copyfileobj(source, handle, COPY_BLOCK)

        self._install(name, copy)
        try:
            sha = sha256_of_file(self.root / name)
        except OSError as exc:
            raise self._os_error(f"read back {name}", exc) from None
        if sha != digests().sha256_hex:
            raise IntegrityError(f"{self.key_of(name)}: the stored copy differs from the local file; not committed")
        return "reread"

    def _download(self, name: str, dest: Path) -> None:
        try:
            with open(self.root / name, "rb") as source, open(dest, "wb") as target:
                shutil.copyfileobj(source, target, COPY_BLOCK)
        except OSError as exc:
            raise self._os_error(f"download {name}", exc) from None

    def _delete(self, name: str) -> None:
        try:
            (self.root / name).unlink(missing_ok=True)
        except OSError as exc:
            raise self._os_error(f"delete {name}", exc) from None
