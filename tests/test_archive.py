"""Tar-slip and other unsafe members are rejected before anything is written."""
from __future__ import annotations

import io
import tarfile

import pytest

from tasks.archive import UnsafeArchiveError, iter_archive_files
from tasks.datasets import LFW
from tasks.index import extract_and_index
from tasks.preprocess import PreprocessConfig
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
