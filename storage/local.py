"""Storage in a local directory; every write goes to a temp file, then rename."""
from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from storage.base import (
    NotFoundError,
    ObjectInfo,
    PreconditionFailedError,
    Storage,
    StorageError,
    normalize_key,
    normalize_prefix,
)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_copy_file(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _is_temp(name: str) -> bool:
    return name.startswith(".") and name.endswith(".tmp")


class OutsideStorageError(NotFoundError):
    """A key's file lies outside the storage's folder (through a link); to every reader it does not
    exist there, and the message says why."""


class LocalStorage(Storage):
    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        self.url = self.root.as_uri()

    def path(self, key: str) -> Path:
        """The file of ``key``; a key whose file or folder is a link out of the root is refused
        (a probe folder's link to /etc/passwd is an error row, never read)."""
        path = self.root / normalize_key(key)
        if not path.resolve().is_relative_to(self.root):
            raise OutsideStorageError(f"{self.uri(key)} leads outside {self.root} (a symbolic link): refused")
        return path

    def read_bytes(self, key: str) -> bytes:
        path = self.path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFoundError(f"{self.uri(key)} does not exist") from None
        except PermissionError:
            denied = StorageError(f"{self.uri(key)}: permission denied")
            denied.code = "AccessDenied"  # as S3 says it: one object's fault
            raise denied from None

    def write_bytes(self, key: str, data: bytes) -> None:
        atomic_write_bytes(self.path(key), data)

    def read_versioned(self, key: str) -> tuple[bytes | None, str | None]:
        try:
            data = self.read_bytes(key)
        except NotFoundError:
            return None, None
        return data, hashlib.sha256(data).hexdigest()  # content, not mtime: two quick writes still differ

    def write_if(self, key: str, data: bytes, expected: str | None) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            try:  # writers of this folder's pointers take turns (a local filesystem's flock)
                fcntl.flock(folder, fcntl.LOCK_EX)
            except OSError as err:
                raise StorageError(f"cannot lock {self.uri(key)}'s folder for a compare-and-swap ({err}): "
                                   "pointers need a local filesystem with flock") from err
            _, current = self.read_versioned(key)
            if current != expected:
                raise PreconditionFailedError(f"{self.uri(key)} changed since it was read (another writer moved it)")
            atomic_write_bytes(path, data)
        finally:
            os.close(folder)  # closing releases the lock

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        prefix = normalize_prefix(prefix)
        # Walk only the deepest directory the prefix names, then filter by string prefix.
        base = self.root / prefix.rpartition("/")[0] if "/" in prefix else self.root
        if not base.is_dir():
            return
        found = []
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                if _is_temp(name):
                    continue
                full = Path(dirpath) / name
                key = full.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    found.append((key, full))
        for key, full in sorted(found):
            st = full.stat()
            yield ObjectInfo(key=key, size=st.st_size, etag=f"{st.st_size}-{st.st_mtime_ns}")

    def info(self, key: str) -> ObjectInfo | None:
        path = self.path(key)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not path.is_file():
            return None
        return ObjectInfo(key=normalize_key(key), size=st.st_size, etag=f"{st.st_size}-{st.st_mtime_ns}")

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def download_file(self, key: str, local_path: str | Path) -> Path:
        src, dst = self.path(key), Path(local_path)
        if not src.is_file():
            raise NotFoundError(f"{self.uri(key)} does not exist")
        atomic_copy_file(src, dst)
        return dst

    def upload_file(self, local_path: str | Path, key: str) -> None:
        src = Path(local_path)
        if not src.is_file():
            raise FileNotFoundError(f"cannot upload {src}: not a file")
        atomic_copy_file(src, self.path(key))
