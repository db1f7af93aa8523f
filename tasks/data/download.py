"""Fetch dataset files from http(s), file://, s3:// or a local directory: streamed to disk,
resumed with HTTP Range after an interruption, retried on transient errors, verified by sha256.

A download lives in ``<name>.part`` until its checksum is verified, then is renamed into
place; a checksum mismatch deletes the part and raises. A verified file is remembered in a
``<name>.sha256`` sidecar (size, mtime, digest) so that a second run neither downloads nor
re-hashes anything.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlparse

from storage.location import redact_url  # noqa: F401 - its home for this module's callers
from tasks.data.datasets import DatasetSpec, RemoteFile

log = logging.getLogger(__name__)

CHUNK = 1 << 20
USER_AGENT = "siamese-faces/1.0 (+dataset download)"
TRANSIENT_HTTP = {408, 425, 429, 500, 502, 503, 504}


class DownloadError(RuntimeError):
    """A file could not be fetched; the message names the file and the (redacted) address."""


class ChecksumMismatchError(DownloadError):
    pass


@dataclass(frozen=True)
class FetchResult:
    name: str
    path: Path
    sha256: str
    bytes_transferred: int  # 0 when the cached file was already verified
    resumed_from: int  # bytes kept from an earlier interrupted attempt (0 if none)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


# --- sources -----------------------------------------------------------------------------


class _Transient(Exception):
    """Retry this: the network or the server failed in a way that may pass."""


def _open_http(url: str, offset: int, timeout: float) -> tuple[BinaryIO, int | None, int]:
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if offset:
        req.add_header("Range", f"bytes={offset}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 - scheme checked by caller
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # range past the end: the part may already be complete
            total = (err.headers.get("Content-Range") or "").rpartition("/")[2]
            err.close()
            raise _RangeNotSatisfiable(int(total) if total.isdigit() else None) from None
        if err.code in TRANSIENT_HTTP:
            raise _Transient(f"HTTP {err.code}") from err
        raise DownloadError(f"{redact_url(url)}: HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        raise _Transient(f"{type(err).__name__}: {err}") from err
    length = resp.headers.get("Content-Length")
    if offset and resp.status == 206:
        total = (resp.headers.get("Content-Range") or "").rpartition("/")[2]
        return resp, int(total) if total.isdigit() else None, offset
    # 200: the server ignored the range, so start again from byte 0.
    return resp, int(length) if length and length.isdigit() else None, 0


class _RangeNotSatisfiable(Exception):
    def __init__(self, total: int | None):
        self.total = total


def _open_local(path: Path, offset: int) -> tuple[BinaryIO, int | None, int]:
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        raise DownloadError(f"{path} does not exist") from None
    total = os.fstat(fh.fileno()).st_size
    fh.seek(min(offset, total))
    return fh, total, min(offset, total)


def _open_s3(url: str, offset: int) -> tuple[BinaryIO, int | None, int]:
    from botocore.exceptions import BotoCoreError

    from storage import NotFoundError, StorageError, open_storage

    p = urlparse(url)
    bucket_prefix, _, key = p.path.lstrip("/").rpartition("/")
    store = open_storage(f"s3://{p.netloc}/{bucket_prefix}")
    try:
        body, total = store.open_range(key, offset)  # type: ignore[attr-defined]
    except NotFoundError as err:
        raise DownloadError(str(err)) from None
    except (StorageError, BotoCoreError) as err:
        raise _Transient(str(err)) from err
    return body, total, offset


def open_source(url: str, offset: int = 0, timeout: float = 30.0) -> tuple[BinaryIO, int | None, int]:
    """Open ``url`` for reading from ``offset``; returns (stream, total size or None, actual offset)."""
    scheme = urlparse(url).scheme
    if scheme in ("http", "https"):
        return _open_http(url, offset, timeout)
    if scheme == "s3":
        return _open_s3(url, offset)
    if scheme == "file":
        return _open_local(Path(unquote(urlparse(url).path)), offset)
    if scheme and len(scheme) > 1:
        raise DownloadError(f"{redact_url(url)}: unsupported scheme {scheme!r} (use http(s), file, s3 or a path)")
    return _open_local(Path(url), offset)


def _stream_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [OSError, http.client.HTTPException, socket.timeout]
    try:
        from botocore.exceptions import BotoCoreError

        errors.append(BotoCoreError)
    except ImportError:  # pragma: no cover - boto3 is a dependency
        pass
    return tuple(errors)


# --- fetching ----------------------------------------------------------------------------


def _read_sidecar(path: Path) -> dict | None:
    try:
        return json.loads(path.with_name(path.name + ".sha256").read_text())
    except (FileNotFoundError, ValueError):
        return None


def _write_sidecar(path: Path, sha256: str) -> None:
    st = path.stat()
    side = path.with_name(path.name + ".sha256")
    tmp = side.with_name(side.name + ".tmp")
    tmp.write_text(json.dumps({"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}))
    os.replace(tmp, side)


def verified_sha256(path: Path) -> str | None:
    """The digest of ``path`` if its sidecar still describes it (same size and mtime)."""
    side = _read_sidecar(path)
    if not side or not path.is_file():
        return None
    st = path.stat()
    if side.get("size") == st.st_size and side.get("mtime_ns") == st.st_mtime_ns:
        return side.get("sha256")
    return None


def fetch_file(
    url: str,
    dest: Path,
    sha256: str,
    *,
    attempts: int = 5,
    backoff: float = 0.5,
    timeout: float = 30.0,
    sleep: Callable[[float], None] = time.sleep,
) -> FetchResult:
    """Download ``url`` to ``dest`` unless ``dest`` already holds the file with ``sha256``."""
    dest = Path(dest)
    name = dest.name
    sha256 = sha256.lower()
    if verified_sha256(dest) == sha256:
        return FetchResult(name, dest, sha256, 0, 0)
    if dest.is_file() and file_sha256(dest) == sha256:
        _write_sidecar(dest, sha256)
        return FetchResult(name, dest, sha256, 0, 0)

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(name + ".part")
    resumed_from = part.stat().st_size if part.exists() else 0
    transferred = 0
    stream_errors = _stream_errors()
    for attempt in range(1, attempts + 1):
        have = part.stat().st_size if part.exists() else 0
        try:
            stream, total, start = open_source(url, have, timeout)
        except _RangeNotSatisfiable as r:
            if r.total is not None and r.total == have:
                break  # the part already holds the whole file: verify it below
            part.unlink(missing_ok=True)
            continue
        except _Transient as err:
            _log_retry(name, url, attempt, attempts, err)
            if attempt == attempts:
                raise DownloadError(
                    f"{name}: giving up on {redact_url(url)} after {attempts} attempts: {err}") from None
            sleep(min(backoff * 2 ** (attempt - 1), 30.0))
            continue
        try:
            with stream, open(part, "r+b" if start and part.exists() else "wb") as out:
                out.seek(start)
                out.truncate()
                while chunk := stream.read(CHUNK):
                    out.write(chunk)
                    transferred += len(chunk)
            if total is not None and part.stat().st_size < total:
                raise http.client.IncompleteRead(b"", total - part.stat().st_size)
            break
        except stream_errors as err:
            _log_retry(name, url, attempt, attempts, err)
            if attempt == attempts:
                raise DownloadError(
                    f"{name}: giving up on {redact_url(url)} after {attempts} attempts "
                    f"({part.stat().st_size if part.exists() else 0} bytes kept in {part} for the next run): {err}"
                ) from None
            sleep(min(backoff * 2 ** (attempt - 1), 30.0))
    else:
        raise DownloadError(f"{name}: {redact_url(url)} kept refusing the byte range; nothing was downloaded")

    got = file_sha256(part)
    if got != sha256:
        part.unlink(missing_ok=True)
        raise ChecksumMismatchError(
            f"{name} from {redact_url(url)}: sha256 {got} does not match the expected {sha256}; "
            "the download was deleted"
        )
    os.replace(part, dest)
    _write_sidecar(dest, sha256)
    return FetchResult(name, dest, sha256, transferred, resumed_from)


def _log_retry(name: str, url: str, attempt: int, attempts: int, err: BaseException) -> None:
    log.warning("download of %s from %s failed (attempt %d/%d): %s", name, redact_url(url), attempt, attempts, err)


# --- mirrors -----------------------------------------------------------------------------


def _join(base: str, name: str) -> str:
    p = urlparse(base)
    if p.scheme and len(p.scheme) > 1:
        return base.rstrip("/") + "/" + name
    return str(Path(base) / name)


def _parent(base: str) -> tuple[str, str]:
    """(parent address, last path part) of a mirror address."""
    stripped = base.rstrip("/")
    p = urlparse(stripped)
    if p.scheme and len(p.scheme) > 1:
        head, _, last = stripped.rpartition("/")
        return head, last
    path = Path(stripped).resolve()
    return str(path.parent), path.name


def is_local(address: str) -> bool:
    scheme = urlparse(address).scheme
    return not scheme or len(scheme) == 1 or scheme == "file"


def parse_sha256sums(text: str) -> dict[str, str]:
    sums = {}
    for line in text.splitlines():
        parts = line.strip().split(maxsplit=1)
        if len(parts) == 2 and len(parts[0]) == 64:
            sums[parts[1].lstrip("*").removeprefix("./")] = parts[0].lower()
    return sums


def _read_small(address: str) -> str | None:
    try:
        stream, _total, _ = open_source(address, 0, timeout=15)
    except (DownloadError, _Transient, _RangeNotSatisfiable):
        return None
    with stream:
        return stream.read(1 << 20).decode("utf-8", "replace")


def mirror_checksums(mirror: str) -> dict[str, str]:
    """File name -> sha256 from a ``SHA256SUMS`` in the mirror or its parent (``<dir>/<name>`` entries)."""
    sums: dict[str, str] = {}
    parent, last = _parent(mirror)
    text = _read_small(_join(parent, "SHA256SUMS"))
    if text:
        for path, digest in parse_sha256sums(text).items():
            if path.startswith(last + "/") and "/" not in path[len(last) + 1:]:
                sums[path[len(last) + 1:]] = digest
    text = _read_small(_join(mirror, "SHA256SUMS"))
    if text:
        sums.update({p: d for p, d in parse_sha256sums(text).items() if "/" not in p})
    return sums


@dataclass(frozen=True)
class PlannedFile:
    file: RemoteFile
    url: str
    sha256: str


def plan_downloads(spec: DatasetSpec, mirror: str | None,
                   trust_mirror_checksums: bool | None = None) -> list[PlannedFile]:
    """Where each file comes from and which checksum it must have.

    A mirror's SHA256SUMS is trusted by default for local mirrors (the user's own disk) and
    only on request for remote ones; otherwise the spec's pinned checksum applies.
    """
    trusted: dict[str, str] = {}
    if mirror:
        trust = is_local(mirror) if trust_mirror_checksums is None else trust_mirror_checksums
        if trust:
            trusted = mirror_checksums(mirror)
    planned = []
    for f in spec.files:
        url = _join(mirror, f.name) if mirror else f.url
        if not url:
            raise DownloadError(f"{spec.name}/{f.name} has no official address: give a mirror that holds it")
        sha = trusted.get(f.name) or f.sha256
        if not sha:
            raise DownloadError(f"{spec.name}/{f.name}: no checksum is known (pin one or use a mirror with SHA256SUMS)")
        planned.append(PlannedFile(f, url, sha))
    return planned


def download_dataset(
    spec: DatasetSpec,
    cache_dir: Path,
    mirror: str | None = None,
    trust_mirror_checksums: bool | None = None,
    max_workers: int = 4,
    **fetch_kwargs,
) -> dict[str, FetchResult]:
    """Fetch every file of ``spec`` in parallel into ``cache_dir``; returns results by file name."""
    planned = plan_downloads(spec, mirror, trust_mirror_checksums)
    cache_dir = Path(cache_dir)
    with ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="download") as pool:
        futures = {p.file.name: pool.submit(fetch_file, p.url, cache_dir / p.file.name, p.sha256, **fetch_kwargs)
                   for p in planned}
        return {name: fut.result() for name, fut in futures.items()}
