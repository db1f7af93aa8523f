"""Storage under an S3 prefix through boto3 (AWS, MinIO, SeaweedFS, moto: anything with an endpoint
URL); bulk reads of small objects through pyarrow's C++ client when one is given.

A PUT is atomic in S3, so a single PUT (or a multipart upload, which becomes visible
only when completed) never exposes a half-written object.
"""
from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from boto3.s3.transfer import TransferConfig
from botocore.exceptions import BotoCoreError, ClientError

from storage.base import (
    NotFoundError,
    ObjectInfo,
    PreconditionFailedError,
    Storage,
    StorageError,
    normalize_key,
    normalize_prefix,
)

# Objects above this size go up and down in parallel 16 MiB parts.
TRANSFER = TransferConfig(multipart_threshold=64 * 2**20, multipart_chunksize=16 * 2**20, max_concurrency=4)

_MISSING = {"404", "NoSuchKey", "NotFound"}
# A conditional PUT that lost: 412, or 409 when another conditional PUT of the key is in flight.
_LOST_RACE = {"412", "PreconditionFailed", "409", "ConditionalRequestConflict"}
_UNSET = object()


def _is_missing(err: ClientError) -> bool:
    return str(err.response.get("Error", {}).get("Code")) in _MISSING


class S3Storage(Storage):
    list_page_size = 1000  # S3's maximum; tests lower it to exercise pagination

    def __init__(self, bucket: str, prefix: str, client: Any, fetch_fs: Callable[[], Any] | None = None):
        """``fetch_fs``: returns the pyarrow S3FileSystem for ``fetch_bytes`` (made on first use), or
        None for boto3."""
        if not bucket:
            raise ValueError("S3 storage needs a bucket name")
        self.bucket = bucket
        self.prefix = normalize_prefix(prefix)
        self.client = client
        self._fetch_fs = fetch_fs
        self._fs: Any = None if fetch_fs is None else _UNSET
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")

    def _key(self, key: str) -> str:
        return self.prefix + normalize_key(key, empty_parts=True)  # ``a//b`` is its own object in S3

    def _fail(self, action: str, key: str, err: Exception) -> StorageError:
        # Only the operation, the address and the service's error code: never request headers.
        if isinstance(err, ClientError):
            code = err.response.get("Error", {}).get("Code", "?")
            failed = StorageError(f"S3 {action} of {self.uri(key)} failed: {code}")
            failed.code = str(code)  # the service's own code, for callers that tell one object's fault from an outage
            return failed
        return StorageError(f"S3 {action} of {self.uri(key)} failed: {type(err).__name__}: {err}")

    def read_bytes(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except ClientError as err:
            if _is_missing(err):
                raise NotFoundError(f"{self.uri(key)} does not exist") from None
            raise self._fail("read", key, err) from err
        except BotoCoreError as err:
            raise self._fail("read", key, err) from err

    def fetch_bytes(self, key: str) -> bytes:
        """One GET through pyarrow's C++ S3 client, which releases the GIL for the whole request: 2.6-2.9x
        boto3's rate from 16 threads here (BENCHMARKS.md). Whatever pyarrow cannot read is asked of
        boto3 once, which tells a missing key (NotFoundError) from a missing bucket, a redirect to
        another region or an outage (StorageError); when boto3 reads what pyarrow could not, this
        storage keeps to boto3."""
        if self._fs is _UNSET:  # once per storage: settings are read from the environment
            self._fs = self._fetch_fs()
        fs = self._fs
        if fs is not None and "//" not in self._key(key):  # pyarrow would read a//b as a/b
            try:
                with fs.open_input_stream(f"{self.bucket}/{self._key(key)}") as stream:
                    return stream.read()
            except FileNotFoundError:
                pass  # a HEAD's 404 carries no code: the key, or the whole bucket, may be missing
            except OSError:
                data = self.read_bytes(key)  # raises StorageError in an outage: the shard is retried
                self._fs = None
                return data
        return self.read_bytes(key)

    def write_bytes(self, key: str, data: bytes) -> None:
        try:
            if len(data) >= TRANSFER.multipart_threshold:
                self.client.upload_fileobj(io.BytesIO(data), self.bucket, self._key(key), Config=TRANSFER)
            else:
                self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        except (ClientError, BotoCoreError) as err:
            raise self._fail("write", key, err) from err

    def read_versioned(self, key: str) -> tuple[bytes | None, str | None]:
        try:
            got = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            return got["Body"].read(), got["ETag"]
        except ClientError as err:
            if _is_missing(err):
                return None, None
            raise self._fail("read", key, err) from err
        except BotoCoreError as err:
            raise self._fail("read", key, err) from err

    def write_if(self, key: str, data: bytes, expected: str | None) -> None:
        condition = {"IfMatch": expected} if expected is not None else {"IfNoneMatch": "*"}
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **condition)
        except ClientError as err:
            if str(err.response.get("Error", {}).get("Code")) in _LOST_RACE:
                raise PreconditionFailedError(f"{self.uri(key)} changed since it was read (another writer moved "
                                              "it)") from None
            raise self._fail("write", key, err) from err
        except BotoCoreError as err:
            raise self._fail("write", key, err) from err

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        full = self.prefix + normalize_prefix(prefix) if prefix.strip("/") else self.prefix
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            pages = paginator.paginate(Bucket=self.bucket, Prefix=full,
                                       PaginationConfig={"PageSize": self.list_page_size})
            for page in pages:
                for obj in page.get("Contents", []):
                    yield ObjectInfo(
                        key=obj["Key"][len(self.prefix):], size=int(obj["Size"]), etag=obj["ETag"].strip('"')
                    )
        except (ClientError, BotoCoreError) as err:
            raise self._fail("list", prefix or ".", err) from err

    # Key ranges listed at once by list_all: [bound_i, bound_i+1) after the prefix, in S3's (UTF-8 byte) order.
    LIST_BOUNDS = ("", "0", "A", "D", "G", "J", "M", "P", "S", "V", "a", "g", "m", "s", "\x80")

    def list_all(self, prefix: str = "") -> list[ObjectInfo]:
        """Every object under ``prefix`` in key order, its key ranges listed concurrently: one
        listing is a chain of 1,000-key pages, each waiting for the last."""
        full = self.prefix + normalize_prefix(prefix) if prefix.strip("/") else self.prefix
        bounds = [full + b for b in self.LIST_BOUNDS] + [None]

        def one_range(lo: str, hi: str | None) -> list[ObjectInfo]:
            extra = {}
            if lo != full:  # start just after every key of the range before it (those sort below "<c-1>\U0010ffff")
                extra["StartAfter"] = lo[:-1] + chr(ord(lo[-1]) - 1) + "\U0010ffff"
            out = []
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=full, PaginationConfig={"PageSize": self.list_page_size}, **extra)
            for page in pages:
                for obj in page.get("Contents", []):
                    key = obj["Key"]
                    if key.encode() < lo.encode():
                        continue
                    if hi is not None and key.encode() >= hi.encode():
                        return out
                    out.append(ObjectInfo(key=key[len(self.prefix):], size=int(obj["Size"]),
                                          etag=obj["ETag"].strip('"')))
            return out

        try:
            with ThreadPoolExecutor(len(bounds) - 1, thread_name_prefix="list") as pool:
                parts = list(pool.map(one_range, bounds[:-1], bounds[1:]))
        except (ClientError, BotoCoreError) as err:
            raise self._fail("list", prefix or ".", err) from err
        return [info for part in parts for info in part]

    def info(self, key: str) -> ObjectInfo | None:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as err:
            if _is_missing(err):
                return None
            raise self._fail("head", key, err) from err
        except BotoCoreError as err:
            raise self._fail("head", key, err) from err
        return ObjectInfo(key=normalize_key(key, empty_parts=True), size=int(head["ContentLength"]),
                          etag=head["ETag"].strip('"'))

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except (ClientError, BotoCoreError) as err:
            raise self._fail("delete", key, err) from err

    def download_file(self, key: str, local_path: str | Path) -> Path:
        dst = Path(local_path)
        dst.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
        os.close(fd)
        try:
            self.client.download_file(self.bucket, self._key(key), tmp, Config=TRANSFER)
            os.replace(tmp, dst)
        except ClientError as err:
            Path(tmp).unlink(missing_ok=True)
            if _is_missing(err):
                raise NotFoundError(f"{self.uri(key)} does not exist") from None
            raise self._fail("download", key, err) from err
        except BaseException as err:
            Path(tmp).unlink(missing_ok=True)
            if isinstance(err, BotoCoreError):
                raise self._fail("download", key, err) from err
            raise
        return dst

    def upload_file(self, local_path: str | Path, key: str) -> None:
        src = Path(local_path)
        if not src.is_file():
            raise FileNotFoundError(f"cannot upload {src}: not a file")
        try:
            self.client.upload_file(str(src), self.bucket, self._key(key), Config=TRANSFER)
        except (ClientError, BotoCoreError) as err:
            raise self._fail("upload", key, err) from err

    def open_range(self, key: str, start: int) -> tuple[Any, int]:
        """A streaming body of ``key`` from byte ``start`` and the object's total size."""
        try:
            extra = {"Range": f"bytes={start}-"} if start else {}
            resp = self.client.get_object(Bucket=self.bucket, Key=self._key(key), **extra)
        except ClientError as err:
            if _is_missing(err):
                raise NotFoundError(f"{self.uri(key)} does not exist") from None
            raise self._fail("read", key, err) from err
        total = int(resp["ContentRange"].rpartition("/")[2]) if start else int(resp["ContentLength"])
        return resp["Body"], total
