"""Safe reading and extraction of tar archives (no tar-slip).

Only regular files and directories are accepted. Absolute names, ``..`` parts, symbolic
and hard links, devices and FIFOs are rejected before anything is written, with an error
naming the member.
"""
from __future__ import annotations

import os
import shutil
import tarfile
from pathlib import Path, PurePosixPath
from typing import Iterator


class UnsafeArchiveError(ValueError):
    pass


def check_member(archive: Path, member: tarfile.TarInfo) -> str:
    """Return the member's safe relative name, or raise UnsafeArchiveError."""
    name = member.name
    where = f"{archive.name}: member {name!r}"
    if member.issym() or member.islnk():
        raise UnsafeArchiveError(f"{where} is a link (to {member.linkname!r}); links are not extracted")
    if not (member.isfile() or member.isdir()):
        raise UnsafeArchiveError(f"{where} is a device, FIFO or other special file")
    if name.startswith("/") or name.startswith("\\") or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchiveError(f"{where} has an absolute path")
    parts = PurePosixPath(name).parts
    if ".." in parts or "\x00" in name or "\\" in name:
        raise UnsafeArchiveError(f"{where} points outside the extraction folder")
    clean = "/".join(p for p in parts if p not in ("", "."))
    if not clean and not member.isdir():
        raise UnsafeArchiveError(f"{where} has an empty name")
    return clean


def iter_archive_files(archive: Path) -> Iterator[tuple[str, bytes]]:
    """Yield (safe relative name, content) for each regular file, in archive order."""
    archive = Path(archive)
    try:
        tar = tarfile.open(archive, "r:*")
    except tarfile.TarError as err:
        raise UnsafeArchiveError(f"{archive.name} is not a readable tar archive: {err}") from None
    with tar:
        for member in tar:
            name = check_member(archive, member)
            if member.isfile():
                fh = tar.extractfile(member)
                yield name, fh.read() if fh else b""


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
        self._dirs: set[Path] = set()

    def write(self, name: str, data: bytes) -> None:
        path = self.partial / name
        if path.parent not in self._dirs:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._dirs.add(path.parent)
        with open(path, "wb") as fh:
            fh.write(data)

    def commit(self, marker_json: str) -> None:
        (self.partial / extraction_marker(Path(".")).name).write_text(marker_json)
        if self.dest.exists():
            shutil.rmtree(self.dest)
        os.replace(self.partial, self.dest)


def iter_extracted_files(root: Path) -> Iterator[tuple[str, bytes]]:
    """Yield (relative name, content) of an extracted tree in sorted order (marker excluded)."""
    root = Path(root)
    paths = sorted(p for p in root.rglob("*") if p.is_file() and p.name != extraction_marker(root).name)
    for path in paths:
        yield path.relative_to(root).as_posix(), path.read_bytes()
