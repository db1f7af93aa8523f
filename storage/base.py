"""The one interface every storage location implements (local directory or S3).

Keys are relative POSIX paths such as ``datasets/lfw/index.parquet``; a location
maps them onto a directory or a bucket prefix. Everything above this package
speaks keys only, never paths or buckets.
"""
from __future__ import annotations

import io
import json
import posixpath
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


class StorageError(RuntimeError):
    """A storage operation failed; the message names the location and key."""

    code: str | None = None  # S3's error code when the service answered (AccessDenied, ...)


class NotFoundError(StorageError, FileNotFoundError):
    """The key does not exist at the location."""


class PreconditionFailedError(StorageError):
    """A conditional write found the object changed since it was read: another writer moved it first."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str  # S3 ETag, or "<size>-<mtime_ns>" for local files


# S3 error codes that concern one object, not the endpoint: that object's error row, never a failed run.
OBJECT_FAULT_CODES = frozenset({"AccessDenied", "InvalidObjectState", "BadKey"})


class BadKeyError(StorageError, ValueError):
    """A key this storage cannot address safely: one object's problem (an error row), never a run's."""

    code = "BadKey"


def normalize_key(key: str, empty_parts: bool = False) -> str:
    """Validate a key and return its canonical form.

    Rejects absolute keys, NULs, and ``.``/``..`` parts, so that no key can escape its location (a
    local root or a bucket prefix; S3-compatible servers resolve such parts differently, so one
    could name another object). Empty parts (``a//b``) are refused unless ``empty_parts`` (S3, where
    they are a different, legal key, kept as it is). A backslash is an ordinary character.
    """
    if not isinstance(key, str) or not key.strip():
        raise BadKeyError(f"storage key must be a non-empty string, got {key!r}")
    if key.startswith("/") or "\x00" in key:
        raise BadKeyError(f"storage key {key!r} must be a relative path without NUL characters")
    parts = key.split("/")
    if any(p in (".", "..") for p in parts):
        raise BadKeyError(f"storage key {key!r} has a '.' or '..' part (servers resolve it differently): refused")
    if "" in parts and not empty_parts:
        raise BadKeyError(f"storage key {key!r} has an empty part")
    return key if empty_parts else posixpath.join(*parts)


def normalize_prefix(prefix: str) -> str:
    """Like :func:`normalize_key` but the empty prefix (everything) is allowed."""
    prefix = prefix.strip("/")
    return normalize_key(prefix) + "/" if prefix else ""


class Storage(ABC):
    """Read, write, list and delete objects by key; writes are atomic."""

    url: str  # where this location points, without credentials

    @abstractmethod
    def read_bytes(self, key: str) -> bytes: ...

    def fetch_bytes(self, key: str) -> bytes:
        """``read_bytes`` for one of many small objects read at once (probes, gallery images), from
        many threads; S3 uses a faster client for it. NotFoundError when the key does not exist."""
        return self.read_bytes(key)

    @abstractmethod
    def write_bytes(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object under ``prefix``, in key order, across all pages."""

    def list_all(self, prefix: str = "") -> list[ObjectInfo]:
        """``list`` as one list, in key order; S3 lists key ranges concurrently (a folder of millions)."""
        return list(self.list(prefix))

    @abstractmethod
    def info(self, key: str) -> ObjectInfo | None:
        """Size and ETag of ``key``, or None when it does not exist."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; removing a missing key is not an error (idempotent)."""

    @abstractmethod
    def download_file(self, key: str, local_path: str | Path) -> Path:
        """Copy ``key`` to ``local_path`` atomically and return the path."""

    @abstractmethod
    def upload_file(self, local_path: str | Path, key: str) -> None:
        """Copy a local file to ``key`` atomically (multipart for large files on S3)."""

    @abstractmethod
    def read_versioned(self, key: str) -> tuple[bytes | None, str | None]:
        """(content, version token) of ``key``, or (None, None) when it does not exist; the token is
        what ``write_if`` compares against."""

    @abstractmethod
    def write_if(self, key: str, data: bytes, expected: str | None) -> None:
        """Write ``key`` only if it is still at version ``expected`` (None: only if it does not exist);
        PreconditionFailedError otherwise. The compare and the write are one step (S3's conditional
        PUT; a lock on the folder locally), so of two writers that read the same version one wins."""

    def exists(self, key: str) -> bool:
        return self.info(key) is not None

    def uri(self, key: str) -> str:
        """A human-readable address of ``key`` for logs and reports."""
        return f"{self.url.rstrip('/')}/{key}"  # as given: an error about an odd key must not raise again

    # Typed helpers built on the primitives above.
    def write_parquet(self, key: str, table: pd.DataFrame | pa.Table) -> None:
        if isinstance(table, pd.DataFrame):
            table = pa.Table.from_pandas(table, preserve_index=False)
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        self.write_bytes(key, buf.getvalue())

    def read_parquet(self, key: str) -> pd.DataFrame:
        return self.read_arrow(key).to_pandas()

    def read_arrow(self, key: str) -> pa.Table:
        return pq.read_table(io.BytesIO(self.read_bytes(key)))

    def write_json(self, key: str, value: Any) -> None:
        self.write_bytes(key, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())

    def read_json(self, key: str) -> Any:
        return json.loads(self.read_bytes(key))

    def read_json_or_none(self, key: str) -> Any:
        try:
            return self.read_json(key)
        except NotFoundError:
            return None

    def write_text(self, key: str, text: str) -> None:
        self.write_bytes(key, text.encode("utf-8"))
