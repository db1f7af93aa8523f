"""Downloads from a real local HTTP server, file://, a directory and a moto S3 bucket."""
from __future__ import annotations

import hashlib

import pytest

from tasks.data.download import (
    ChecksumMismatchError,
    DownloadError,
    download_dataset,
    fetch_file,
    mirror_checksums,
    plan_downloads,
    redact_url,
)
from tests.fakes import tiny_spec

DATA = bytes(range(256)) * 4096  # 1 MiB
SHA = hashlib.sha256(DATA).hexdigest()


def no_sleep(_seconds: float) -> None:
    pass


@pytest.fixture
def served(http_files):
    (http_files.root / "blob.bin").write_bytes(DATA)
    return http_files


def test_http_download_then_nothing_on_second_run(served, tmp_path):
    dest = tmp_path / "cache" / "blob.bin"
    first = fetch_file(f"{served.url}/blob.bin", dest, SHA)
    assert dest.read_bytes() == DATA and first.bytes_transferred == len(DATA)
    second = fetch_file(f"{served.url}/blob.bin", dest, SHA)
    assert second.bytes_transferred == 0 and len(served.requests) == 1  # no second request at all


def test_wrong_checksum_fails_clearly_and_leaves_no_file(served, tmp_path):
    dest = tmp_path / "cache" / "blob.bin"
    with pytest.raises(ChecksumMismatchError, match=r"blob.bin from http://127.0.0.1:\d+/blob.bin: sha256 "):
        fetch_file(f"{served.url}/blob.bin", dest, "0" * 64)
    assert list((tmp_path / "cache").iterdir()) == []


def test_interrupted_download_resumes_with_range(served, tmp_path):
    served.faults["blob.bin"] = [("drop", 300_000)]
    result = fetch_file(f"{served.url}/blob.bin", tmp_path / "blob.bin", SHA, sleep=no_sleep)
    assert (tmp_path / "blob.bin").read_bytes() == DATA
    ranges = [r for name, r in served.requests if name == "blob.bin"]
    assert ranges[0] is None and ranges[1] is not None and int(ranges[1][6:].rstrip("-")) >= 300_000
    assert result.bytes_transferred == len(DATA)  # the first 300 kB were not sent twice


def test_partial_file_from_an_earlier_run_is_resumed(served, tmp_path):
    (tmp_path / "blob.bin.part").write_bytes(DATA[:500_000])
    result = fetch_file(f"{served.url}/blob.bin", tmp_path / "blob.bin", SHA)
    assert result.resumed_from == 500_000 and result.bytes_transferred == len(DATA) - 500_000
    assert served.requests == [("blob.bin", "bytes=500000-")]
    assert (tmp_path / "blob.bin").read_bytes() == DATA


def test_complete_part_file_is_verified_not_refetched(served, tmp_path):
    (tmp_path / "blob.bin.part").write_bytes(DATA)
    result = fetch_file(f"{served.url}/blob.bin", tmp_path / "blob.bin", SHA)
    assert result.bytes_transferred == 0 and (tmp_path / "blob.bin").read_bytes() == DATA


def test_transient_errors_are_retried(served, tmp_path):
    served.faults["blob.bin"] = [("status", 503), ("status", 502)]
    fetch_file(f"{served.url}/blob.bin", tmp_path / "blob.bin", SHA, sleep=no_sleep)
    assert len(served.requests) == 3 and (tmp_path / "blob.bin").read_bytes() == DATA


def test_persistent_errors_give_up_with_a_clear_message(served, tmp_path):
    served.faults["blob.bin"] = [("status", 503)] * 3
    with pytest.raises(DownloadError, match="giving up .* after 3 attempts"):
        fetch_file(f"{served.url}/blob.bin", tmp_path / "blob.bin", SHA, attempts=3, sleep=no_sleep)


def test_missing_file_fails_fast(served, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch_file(f"{served.url}/nope.bin", tmp_path / "nope.bin", SHA, sleep=no_sleep)
    assert len(served.requests) == 1


def test_local_directory_and_file_url_sources(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "blob.bin").write_bytes(DATA)
    fetch_file(str(src / "blob.bin"), tmp_path / "a" / "blob.bin", SHA)
    fetch_file((src / "blob.bin").as_uri(), tmp_path / "b" / "blob.bin", SHA)
    assert (tmp_path / "a" / "blob.bin").read_bytes() == (tmp_path / "b" / "blob.bin").read_bytes() == DATA


def test_s3_source_with_resume(s3_bucket, tmp_path):
    from storage import open_storage

    open_storage(f"s3://{s3_bucket}/mirror").write_bytes("blob.bin", DATA)
    (tmp_path / "blob.bin.part").write_bytes(DATA[:123_456])
    result = fetch_file(f"s3://{s3_bucket}/mirror/blob.bin", tmp_path / "blob.bin", SHA)
    assert result.bytes_transferred == len(DATA) - 123_456 and (tmp_path / "blob.bin").read_bytes() == DATA


def test_dataset_from_http_mirror_in_parallel(http_files, tiny_mirror, tmp_path):
    folder, sums = tiny_mirror
    for f in folder.iterdir():
        (http_files.root / f.name).write_bytes(f.read_bytes())
    spec = tiny_spec()  # nothing pinned: the checksums must come from the mirror
    with pytest.raises(DownloadError, match="no checksum is known"):
        plan_downloads(spec, http_files.url)  # a remote mirror's SHA256SUMS is not trusted by default
    results = download_dataset(spec, tmp_path / "dl", http_files.url, trust_mirror_checksums=True)
    assert {n: r.sha256 for n, r in results.items()} == {f.name: sums[f.name] for f in spec.files}
    again = download_dataset(spec, tmp_path / "dl", http_files.url, trust_mirror_checksums=True)
    assert sum(r.bytes_transferred for r in again.values()) == 0


def test_pinned_checksum_rejects_a_tampered_mirror(tiny_mirror, tmp_path):
    folder, sums = tiny_mirror
    spec = tiny_spec(sums)
    (folder / "pairs.txt").write_text("10\t300\n")  # tampered, and SHA256SUMS not trusted here
    with pytest.raises(ChecksumMismatchError, match="pairs.txt"):
        download_dataset(spec, tmp_path / "dl", str(folder), trust_mirror_checksums=False)
    assert not (tmp_path / "dl" / "pairs.txt").exists()


def test_mirror_checksums_from_parent_sha256sums(tmp_path):
    (tmp_path / "lfw").mkdir()
    (tmp_path / "SHA256SUMS").write_text(f"{'a' * 64}  lfw/lfw.tgz\n{'b' * 64}  att/att.tgz\n")
    assert mirror_checksums(str(tmp_path / "lfw")) == {"lfw.tgz": "a" * 64}


def test_redact_url_drops_credentials_and_query():
    assert redact_url("https://user:pw@host:8443/a/b.tgz?X-Amz-Signature=abc") == "https://host:8443/a/b.tgz"
