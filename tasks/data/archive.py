"""Safe, fast reading and extraction of tar archives (no tar-slip).

Only regular files and directories are accepted. Absolute names, ``..`` parts, symbolic
and hard links, devices, FIFOs and unknown member types are rejected, with an error naming
the member, before that member is written.

Gzip and plain tars are read by a small streaming ustar/pax/GNU reader: ``tarfile`` spends
more time building ``TarInfo`` objects than zlib spends inflating (measured on LFW: ~1.9 s
of header parsing for 19k members). Gzip is inflated in a helper thread, since zlib releases
the GIL. Other compressions (bz2, xz) go through ``tarfile``.
"""
from __future__ import annotations

import os
import queue
import shutil
import tarfile
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

BLOCK = 512
_READ = 1 << 20


class UnsafeArchiveError(ValueError):
    pass


@dataclass(frozen=True)
class Member:
    name: str
    kind: str  # file | dir | symlink | hardlink | special
    linkname: str = ""


def check_member(archive: Path, member: Member) -> str:
    """Return the member's safe relative name, or raise UnsafeArchiveError."""
    name = member.name
    where = f"{archive.name}: member {name!r}"
    if member.kind in ("symlink", "hardlink"):
        raise UnsafeArchiveError(f"{where} is a link (to {member.linkname!r}); links are not extracted")
    if member.kind not in ("file", "dir"):
        raise UnsafeArchiveError(f"{where} is a device, FIFO or other special file")
    if name.startswith("/") or name.startswith("\\") or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchiveError(f"{where} has an absolute path")
    parts = PurePosixPath(name).parts
    if ".." in parts or "\x00" in name or "\\" in name:
        raise UnsafeArchiveError(f"{where} points outside the extraction folder")
    clean = "/".join(p for p in parts if p not in ("", "."))
    if not clean and member.kind != "dir":
        raise UnsafeArchiveError(f"{where} has an empty name")
    return clean


# --- the stream of tar bytes ---------------------------------------------------------------


def _gzip_chunks(path: Path) -> Iterator[bytes]:
    """Inflate a (multi-member) gzip file in a helper thread; yields the inflated chunks."""
    out: queue.Queue = queue.Queue(maxsize=16)
    stop = threading.Event()

    def inflate() -> None:
        try:
            with open(path, "rb") as fh:
                z = zlib.decompressobj(wbits=31)
                while not stop.is_set():
                    data = fh.read(_READ)
                    if not data:
                        break
                    while data and not stop.is_set():
                        out.put(z.decompress(data))
                        data = z.unused_data
                        if z.eof:  # concatenated gzip members
                            z = zlib.decompressobj(wbits=31)
                if not z.eof and not stop.is_set():
                    raise EOFError("the gzip stream ends early (truncated file)")
            out.put(None)
        except BaseException as err:  # handed to the reading thread
            out.put(err)

    worker = threading.Thread(target=inflate, name="gunzip", daemon=True)
    worker.start()
    try:
        while (item := out.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue
            try:
                out.get_nowait()
            except queue.Empty:
                worker.join(0.01)


def _plain_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while chunk := fh.read(_READ):
            yield chunk


class _Bytes:
    """Exact-size reads over an iterator of chunks."""

    def __init__(self, chunks: Iterator[bytes]):
        self._chunks = chunks
        self._buf = bytearray()
        self._pos = 0

    def read(self, n: int) -> bytes:
        while len(self._buf) - self._pos < n:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            if self._pos > (8 << 20):
                del self._buf[: self._pos]
                self._pos = 0
            self._buf += chunk
        data = bytes(self._buf[self._pos : self._pos + n])
        self._pos += len(data)
        return data


def _octal(field: bytes) -> int:
    if field and field[0] & 0x80:  # GNU base-256 for large values
        return int.from_bytes(field[1:], "big")
    text = field.rstrip(b"\0 ").lstrip(b" ")
    return int(text, 8) if text else 0


def _pax_records(data: bytes) -> dict[str, str]:
    records, pos = {}, 0
    while pos < len(data):
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
        records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return records


_KINDS = {b"0": "file", b"\0": "file", b"7": "file", b"5": "dir", b"1": "hardlink", b"2": "symlink",
          b"3": "special", b"4": "special", b"6": "special"}


def _iter_ustar(archive: Path, stream: _Bytes) -> Iterator[tuple[Member, bytes]]:
    long_name = long_link = None
    pax: dict[str, str] = {}
    while True:
        header = stream.read(BLOCK)
        if len(header) < BLOCK:
            raise UnsafeArchiveError(f"{archive.name} ends in the middle of a header (truncated archive)")
        if header == bytes(BLOCK):
            return  # end-of-archive marker
        stored = _octal(header[148:156])
        if stored != sum(header[:148]) + 256 + sum(header[156:]):
            raise UnsafeArchiveError(f"{archive.name}: corrupt tar header (checksum mismatch)")
        size = _octal(header[124:136])
        data = stream.read(size)
        if len(data) < size:
            raise UnsafeArchiveError(f"{archive.name} ends in the middle of a member (truncated archive)")
        stream.read(-size % BLOCK)
        kind_flag = header[156:157]
        if kind_flag == b"L":
            long_name = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
            continue
        if kind_flag == b"K":
            long_link = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
            continue
        if kind_flag == b"x":
            pax = _pax_records(data)
            continue
        if kind_flag == b"g":
            continue  # global pax defaults: nothing in them changes names or sizes we use
        name = header[0:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        if header[257:263] == b"ustar\0":
            prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            if prefix:
                name = f"{prefix}/{name}"
        name = pax.get("path") or long_name or name
        link = pax.get("linkpath") or long_link or header[157:257].split(b"\0", 1)[0].decode("utf-8", "replace")
        if "size" in pax and int(pax["size"]) != size:
            raise UnsafeArchiveError(f"{archive.name}: member {name!r} has a pax size we do not support")
        long_name = long_link = None
        pax = {}
        kind = _KINDS.get(kind_flag)
        if kind is None:
            raise UnsafeArchiveError(f"{archive.name}: member {name!r} has an unsupported type {kind_flag!r}")
        if kind == "file" and name.endswith("/"):
            kind = "dir"  # old tars mark directories by a trailing slash
        yield Member(name, kind, link), data


def _iter_tarfile(archive: Path) -> Iterator[tuple[Member, bytes]]:
    try:
        tar = tarfile.open(archive, "r:*")
    except tarfile.TarError as err:
        raise UnsafeArchiveError(f"{archive.name} is not a readable tar archive: {err}") from None
    with tar:
        for info in tar:
            kind = ("file" if info.isfile() else "dir" if info.isdir() else "symlink" if info.issym()
                    else "hardlink" if info.islnk() else "special")
            fh = tar.extractfile(info) if kind == "file" else None
            yield Member(info.name, kind, info.linkname), fh.read() if fh else b""


def _members(archive: Path) -> Iterator[tuple[Member, bytes]]:
    with open(archive, "rb") as fh:
        magic = fh.read(BLOCK + 8)
    if magic[:2] == b"\x1f\x8b":
        chunks = _gzip_chunks(archive)
    elif magic[257:263] in (b"ustar\0", b"ustar "):
        chunks = _plain_chunks(archive)
    elif magic[:3] == b"BZh" or magic[:6] == b"\xfd7zXZ\x00":
        yield from _iter_tarfile(archive)
        return
    else:
        raise UnsafeArchiveError(f"{archive.name} is not a readable tar archive (unknown format)")
    try:
        yield from _iter_ustar(archive, _Bytes(chunks))
    except (EOFError, zlib.error) as err:
        raise UnsafeArchiveError(f"{archive.name} is not a readable tar archive: {err}") from None
    finally:
        chunks.close()


def iter_archive_files(archive: Path) -> Iterator[tuple[str, bytes]]:
    """Yield (safe relative name, content) for each regular file, in archive order."""
    archive = Path(archive)
    for member, data in _members(archive):
        name = check_member(archive, member)
        if member.kind == "file":
            yield name, data


# --- extraction ----------------------------------------------------------------------------


def extraction_marker(dest: Path) -> Path:
    return dest / ".extracted.json"


class Extractor:
    """Writes files into ``<dest>.partial`` and moves it to ``dest`` when complete.

    An interrupted extraction leaves only the ``.partial`` folder, which the next run discards.
    """

    def __init__(self, dest: Path):
        self.dest = Path(dest)
        self.partial = self.dest.with_name(self.dest.name + ".partial")
        shutil.rmtree(self.partial, ignore_errors=True)
        self.partial.mkdir(parents=True)
        self._root = str(self.partial)
        self._dirs: set[str] = set()

    def write(self, name: str, data: bytes) -> None:
        # Plain os calls: pathlib costs more than the write itself for 13k small files.
        path = f"{self._root}/{name}"
        parent = path.rpartition("/")[0]
        if parent not in self._dirs:
            os.makedirs(parent, exist_ok=True)
            self._dirs.add(parent)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    def commit(self, marker_json: str) -> None:
        (self.partial / extraction_marker(Path(".")).name).write_text(marker_json)
        if self.dest.exists():
            shutil.rmtree(self.dest)
        os.replace(self.partial, self.dest)


def list_extracted_files(root: Path) -> list[str]:
    """Relative names of an extracted tree's files, sorted (the completion marker excluded)."""
    root = Path(root)
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.is_file() and p.name != extraction_marker(root).name)
