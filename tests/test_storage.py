"""Every storage operation, on a local directory, a real S3 server (SeaweedFS) and moto's server."""
from __future__ import annotations

import pandas as pd
import pytest

from storage import NotFoundError, StorageError, open_storage
from storage.local import LocalStorage
from storage.s3 import S3Storage


@pytest.fixture(params=["local", "seaweedfs", "moto"])
def store(request, tmp_path):
    if request.param == "local":
        return open_storage(str(tmp_path / "store"))
    bucket = request.getfixturevalue("seaweed_bucket" if request.param == "seaweedfs" else "s3_bucket")
    return open_storage(f"s3://{bucket}/some/prefix")


def test_open_storage_picks_backend(tmp_path, s3_bucket):
    assert isinstance(open_storage(str(tmp_path)), LocalStorage)
    assert isinstance(open_storage(tmp_path.as_uri()), LocalStorage)
    s3 = open_storage(f"s3://{s3_bucket}/p")
    assert isinstance(s3, S3Storage) and s3.url == f"s3://{s3_bucket}/p"
    with pytest.raises(ValueError, match="unsupported scheme"):
        open_storage("ftp://example/x")
    with pytest.raises(ValueError, match="no bucket"):
        open_storage("s3:///prefix")


def test_default_storage_is_local_under_home(siamese_home):
    store = open_storage()
    assert isinstance(store, LocalStorage) and store.root == (siamese_home / "store").resolve()


def test_bytes_roundtrip_exists_info_delete(store):
    assert not store.exists("a/b.bin") and store.info("a/b.bin") is None
    store.write_bytes("a/b.bin", b"hello")
    assert store.read_bytes("a/b.bin") == b"hello"
    info = store.info("a/b.bin")
    assert info.key == "a/b.bin" and info.size == 5 and info.etag
    store.write_bytes("a/b.bin", b"replaced")  # overwrite
    assert store.read_bytes("a/b.bin") == b"replaced"
    assert store.fetch_bytes("a/b.bin") == b"replaced"  # the bulk path (pyarrow's client on S3)
    store.delete("a/b.bin")
    assert not store.exists("a/b.bin")
    store.delete("a/b.bin")  # deleting again is fine
    with pytest.raises(NotFoundError, match="a/b.bin"):
        store.read_bytes("a/b.bin")
    with pytest.raises(NotFoundError, match="a/b.bin"):
        store.fetch_bytes("a/b.bin")


def test_bulk_reads_go_through_pyarrow_and_an_outage_is_not_a_missing_object(seaweed_bucket, monkeypatch):
    import pyarrow.fs

    from tests.servers import free_port

    store = open_storage(f"s3://{seaweed_bucket}/p")
    store.write_bytes("x.jpg", b"abc")
    assert isinstance(store._fetch_fs(), pyarrow.fs.S3FileSystem) and store.fetch_bytes("x.jpg") == b"abc"
    monkeypatch.setenv("SIAMESE_S3_FETCH_CLIENT", "boto3")
    boto = open_storage(f"s3://{seaweed_bucket}/p")
    assert boto._fetch_fs() is None and boto.fetch_bytes("x.jpg") == b"abc"
    monkeypatch.delenv("SIAMESE_S3_FETCH_CLIENT")
    monkeypatch.setenv("SIAMESE_S3_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens
    monkeypatch.setenv("SIAMESE_S3_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("SIAMESE_S3_CONNECT_TIMEOUT", "1")
    down = open_storage(f"s3://{seaweed_bucket}/p")
    with pytest.raises(StorageError, match=r"S3 read of s3://.*/p/x.jpg failed") as err:
        down.fetch_bytes("x.jpg")
    assert not isinstance(err.value, NotFoundError)  # matching fails the shard (retried), no error row


def test_parquet_and_json_roundtrip(store):
    df = pd.DataFrame({"x": [1, 2, 3], "name": ["a", "b", None], "same": [True, False, True]})
    store.write_parquet("t/table.parquet", df)
    back = store.read_parquet("t/table.parquet")
    assert back["x"].tolist() == [1, 2, 3] and back["same"].tolist() == [True, False, True]
    assert back["name"].isna().tolist() == [False, False, True]
    store.write_json("t/m.json", {"k": [1, 2]})
    assert store.read_json("t/m.json") == {"k": [1, 2]}
    assert store.read_json_or_none("t/missing.json") is None


def test_list_is_sorted_filtered_and_paginated(store):
    keys = [f"many/{i:03d}.txt" for i in range(7)] + ["other/x.txt", "manyx/y.txt"]
    for k in keys:
        store.write_bytes(k, k.encode())
    if isinstance(store, S3Storage):
        store.list_page_size = 2  # force four pages for seven objects
    listed = [o.key for o in store.list("many")]
    assert listed == [f"many/{i:03d}.txt" for i in range(7)]
    assert {o.key for o in store.list()} == set(keys)
    assert [o.size for o in store.list("other/")] == [len("other/x.txt")]
    assert list(store.list("nothing-here")) == []


def test_list_all_lists_key_ranges_at_once_and_misses_nothing(store):
    """S3 lists key ranges concurrently; every key lands in exactly one range, in key order, whatever
    it starts with (names beside each range's first letter, punctuation, non-ASCII, the highest code point)."""
    if not isinstance(store, S3Storage):
        pytest.skip("a local directory's list_all is its list: nothing to compare")
    keys = ["A b/1.jpg", "A-b/1.jpg", "A/1.jpg", "Ab/1.jpg", "C\U0010ffffz/1.jpg", "C/1.jpg", "D/1.jpg", "Da/1.jpg",
            "I/2.jpg", "J/1.jpg", "Jo/1.jpg", "Zed/1.jpg", "_x/1.jpg", "a/1.jpg", "f/1.jpg", "g/1.jpg", "zz/1.jpg",
            "~/1.jpg", "\u00c9mile/1.jpg", "\u00ff/1.jpg", "\u4e2d\u6587/1.jpg", "0/1.jpg", "/".join(["!"] * 3),
            "9/1.jpg", "readme"]
    keys += [f"M{i:03d}/p.jpg" for i in range(7)]  # several pages within one range
    for k in keys:
        store.write_bytes(k, b"x")
    if isinstance(store, S3Storage):
        store.list_page_size = 2
    expected = [o.key for o in store.list()]  # the server's own order (SeaweedFS: folder by folder)
    assert sorted(expected) == sorted(keys)
    assert [o.key for o in store.list_all()] == expected


def test_upload_and_download_files(store, tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"x" * 10_000)
    store.upload_file(src, "files/src.bin")
    assert store.info("files/src.bin").size == 10_000
    dst = store.download_file("files/src.bin", tmp_path / "out" / "dst.bin")
    assert dst.read_bytes() == src.read_bytes()
    assert not [p for p in (tmp_path / "out").iterdir() if p.name != "dst.bin"]  # no temp files left
    with pytest.raises(NotFoundError):
        store.download_file("files/missing.bin", tmp_path / "out" / "missing.bin")
    assert not (tmp_path / "out" / "missing.bin").exists()
    with pytest.raises(FileNotFoundError):
        store.upload_file(tmp_path / "nope.bin", "files/nope.bin")


@pytest.mark.parametrize("bad", ["/abs", "../up", "a/../b", "", "a/./b", "a\x00b"])
def test_keys_cannot_escape_the_location(store, bad):
    with pytest.raises(ValueError):
        store.write_bytes(bad, b"x")


def test_an_empty_part_is_a_key_of_its_own_in_s3_and_refused_in_a_folder(store):
    if store.url.startswith("file:"):
        with pytest.raises(ValueError, match="empty part"):
            store.write_bytes("a//b", b"x")
    else:  # legal in S3 and another object than a/b (SeaweedFS folds it into a/b: its own rule)
        store.write_bytes("a//b", b"x")
        assert store.read_bytes("a//b") == b"x"


def test_a_local_link_out_of_the_folder_is_refused(tmp_path):
    from storage.local import OutsideStorageError
    from tasks.matching.gallery import fetch_faces
    from tests.fakes import jpeg

    secret = tmp_path / "outside" / "secret.jpg"
    secret.parent.mkdir()
    secret.write_bytes(jpeg(1))
    root = tmp_path / "probes"
    (root / "inside").mkdir(parents=True)
    (root / "inside" / "ok.jpg").write_bytes(jpeg(2))
    (root / "inside" / "link.jpg").symlink_to(secret)
    (root / "linked_dir").symlink_to(secret.parent, target_is_directory=True)
    store = LocalStorage(root)
    assert store.read_bytes("inside/ok.jpg") == jpeg(2)
    for key in ("inside/link.jpg", "linked_dir/secret.jpg"):
        with pytest.raises(OutsideStorageError, match="outside"):
            store.read_bytes(key)
        with pytest.raises(OutsideStorageError):
            store.write_bytes(key, b"x")
    assert secret.read_bytes() == jpeg(1)  # never written through the link
    # in a batch the link is one error row, the rest is matched
    found = {key: error for key, _, error in fetch_faces(store, ["inside/ok.jpg", "inside/link.jpg"], "none")}
    assert found["inside/ok.jpg"] is None and "refused" in found["inside/link.jpg"]


def test_local_write_is_atomic(tmp_path):
    store = LocalStorage(tmp_path)
    store.write_bytes("k.bin", b"old")

    # A failing write (here: data that is not bytes-like) leaves the old content and no temp file.
    with pytest.raises(TypeError):
        store.write_bytes("k.bin", object())  # type: ignore[arg-type]
    assert store.read_bytes("k.bin") == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["k.bin"]


def test_s3_multipart_upload(s3_bucket, tmp_path, monkeypatch):
    from boto3.s3.transfer import TransferConfig

    import storage.s3 as s3mod

    monkeypatch.setattr(s3mod, "TRANSFER", TransferConfig(multipart_threshold=5 * 2**20,
                                                          multipart_chunksize=5 * 2**20))
    store = open_storage(f"s3://{s3_bucket}/mp")
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(range(256)) * (11 * 2**20 // 256))
    store.upload_file(big, "big.bin")
    assert store.info("big.bin").etag.endswith("-3")  # three parts: a multipart upload
    store.write_bytes("big2.bin", big.read_bytes())
    assert store.info("big2.bin").etag.endswith("-3")
    assert store.read_bytes("big2.bin") == big.read_bytes()


def test_s3_errors_name_the_address_and_the_service_code(s3_bucket):
    store = open_storage("s3://no-such-bucket-siamese/x")
    with pytest.raises(StorageError, match=r"S3 write of s3://no-such-bucket-siamese/x/k failed: NoSuchBucket"):
        store.write_bytes("k", b"x")
    with pytest.raises(StorageError, match="NoSuchBucket") as err:  # pyarrow's bare 404, asked of boto3
        store.fetch_bytes("k")
    assert not isinstance(err.value, NotFoundError)  # a missing bucket fails the shard, not one image
