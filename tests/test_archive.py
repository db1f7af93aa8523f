"""Tar-slip and other unsafe members are rejected before anything is written."""
from __future__ import annotations

import io
import tarfile

import pytest

from tasks.data.archive import UnsafeArchiveError, iter_archive_files
from tasks.data.datasets import LFW
from tasks.data.index import extract_and_index
from tasks.images import PreprocessConfig
from tests.fakes import add_file, jpeg


def build_tar(path, members):
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def member(name, kind=tarfile.REGTYPE, data=b"x", linkname=""):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data if kind == tarfile.REGTYPE else None


@pytest.mark.parametrize("bad, reason", [
    (member("/etc/evil.jpg"), "absolute path"),
    (member("lfw/../../evil.jpg"), "outside the extraction folder"),
    (member("lfw/link.jpg", tarfile.SYMTYPE, linkname="/etc/passwd"), "is a link"),
    (member("lfw/hard.jpg", tarfile.LNKTYPE, linkname="lfw/A/A_0001.jpg"), "is a link"),
    (member("lfw/dev", tarfile.CHRTYPE), "device"),
    (member("lfw/fifo", tarfile.FIFOTYPE), "device, FIFO"),
])
def test_unsafe_members_are_rejected_and_nothing_is_extracted(tmp_path, bad, reason):
    good = tarfile.TarInfo("lfw/A/A_0001.jpg")
    data = jpeg(1)
    good.size = len(data)
    archive = build_tar(tmp_path / "evil.tgz", [(good, data), bad])
    dest = tmp_path / "out" / "images"
    with pytest.raises(UnsafeArchiveError, match=reason):
        extract_and_index(LFW, archive, "sha", dest, PreprocessConfig())
    assert not dest.exists() and not (tmp_path / "evil.jpg").exists()
    assert not (tmp_path / "out" / "images.partial" / "lfw" / "link.jpg").exists()


def test_safe_archive_yields_regular_files(tmp_path):
    path = tmp_path / "ok.tgz"
    with tarfile.open(path, "w:gz") as tar:
        add_file(tar, "lfw/A/A_0001.jpg", b"abc")
        tar.addfile(member("lfw/B", tarfile.DIRTYPE)[0])
    assert list(iter_archive_files(path)) == [("lfw/A/A_0001.jpg", b"abc")]


def test_not_an_archive(tmp_path):
    (tmp_path / "x.tgz").write_bytes(b"plain text")
    with pytest.raises(UnsafeArchiveError, match="not a readable tar archive"):
        list(iter_archive_files(tmp_path / "x.tgz"))


LONG = "lfw/" + "A" * 120 + "/" + "A" * 120 + "_0001.jpg"


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
@pytest.mark.parametrize("mode", ["w:gz", "w"])
def test_reader_matches_tarfile_for_every_format(tmp_path, fmt, mode):
    names = ["lfw/A/A_0001.jpg", "lfw/dir/with space/é_0002.jpg", "lfw/empty.txt"]
    if fmt != tarfile.USTAR_FORMAT:
        names.append(LONG)  # needs a pax record or a GNU long-name member
    path = tmp_path / "x.tar"
    with tarfile.open(path, mode, format=fmt) as tar:
        for i, name in enumerate(names):
            add_file(tar, name, bytes([i]) * (i * 700))
        tar.addfile(member("lfw/B", tarfile.DIRTYPE)[0])
    expected = [(m.name, tar_bytes) for m, tar_bytes in
                ((m, tarfile.open(path).extractfile(m).read()) for m in tarfile.open(path) if m.isfile())]
    assert list(iter_archive_files(path)) == expected


def test_corrupt_header_and_truncated_archives_are_refused(tmp_path):
    build_tar(tmp_path / "ok.tar", [member("lfw/A/A_0001.jpg", data=b"x" * 2000)])
    raw = bytearray((tmp_path / "ok.tar").read_bytes())
    import gzip

    plain = bytearray(gzip.decompress(bytes(raw)))
    plain[0] ^= 0x01  # flip a bit in the first header's name
    (tmp_path / "bad.tar").write_bytes(bytes(plain))
    with pytest.raises(UnsafeArchiveError, match="checksum mismatch"):
        list(iter_archive_files(tmp_path / "bad.tar"))
    (tmp_path / "short.tgz").write_bytes(bytes(raw[: len(raw) // 2]))
    with pytest.raises(UnsafeArchiveError, match="truncated|not a readable"):
        list(iter_archive_files(tmp_path / "short.tgz"))
