"""Turn a storage address into a Storage: the only place that knows local vs S3.

Addresses:
  (nothing)                 the SIAMESE_STORAGE setting, else the directory SIAMESE_HOME/store (./var/store)
  /some/dir, ./dir          a local directory
  file:///some/dir          a local directory
  s3://bucket/prefix        S3 through boto3; endpoint from SIAMESE_S3_ENDPOINT_URL or
                            AWS_ENDPOINT_URL, credentials from the usual AWS chain, or from the
                            prefect-aws AwsCredentials block named in SIAMESE_AWS_CREDENTIALS_BLOCK
                            (all read by ``settings``)
  s3-block://name[/prefix]  the prefect-aws S3Bucket block ``name`` (bucket, folder, credentials)
"""
from __future__ import annotations

import threading
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from settings import settings, siamese_home
from storage.base import Storage
from storage.local import LocalStorage
from storage.s3 import S3Storage

_clients_lock = threading.Lock()


def default_storage_url() -> str:
    return settings().storage or str(siamese_home() / "store")


def _botocore_config(max_attempts: int, connect_timeout: float, read_timeout: float) -> Any:
    from botocore.config import Config

    # Standard retry mode backs off on throttling, 5xx and connection errors.
    return Config(
        retries={"max_attempts": max_attempts, "mode": "standard"},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        max_pool_connections=64,  # several shards x 16 fetch threads share one client
    )


def _boto3_session(credentials_block: str | None) -> Any:
    import boto3

    if credentials_block:
        from prefect_aws import AwsCredentials

        return AwsCredentials.load(credentials_block).get_boto3_session()
    return boto3.session.Session()


@lru_cache(maxsize=8)
def _s3_client(endpoint_url: str | None, region: str | None, credentials_block: str | None,
               retry: tuple[int, float, float]) -> Any:
    """One boto3 client per process and configuration (boto3 clients are thread-safe)."""
    session = _boto3_session(credentials_block)
    return session.client(
        "s3", endpoint_url=endpoint_url, region_name=region or session.region_name or "us-east-1",
        config=_botocore_config(*retry),
    )


def s3_client() -> Any:
    """The process's boto3 client for the current settings (boto3 clients are thread-safe)."""
    s = settings()
    with _clients_lock:
        return _s3_client(s.s3_endpoint_url, s.aws_region, s.aws_credentials_block,
                          (s.s3_max_attempts, s.s3_connect_timeout, s.s3_read_timeout))


@lru_cache(maxsize=8)
def _arrow_s3(endpoint_url: str, region: str, credentials_block: str | None,
              retry: tuple[int, float, float]) -> Any | None:
    """pyarrow's S3 filesystem for the endpoint and region the boto3 client resolved (its settings,
    AWS_ENDPOINT_URL_S3, a profile's), the same timeouts and credentials; None when those credentials
    refresh themselves (an assumed role, instance metadata), which boto3 keeps current and a copy
    would not: bulk reads then stay on boto3."""
    import pyarrow.fs
    from botocore.credentials import RefreshableCredentials

    credentials = _boto3_session(credentials_block).get_credentials()
    if credentials is None or isinstance(credentials, RefreshableCredentials):
        return None
    frozen = credentials.get_frozen_credentials()
    parsed = urlparse(endpoint_url)
    extra: dict[str, Any] = {}
    if not parsed.netloc.endswith(".amazonaws.com"):  # AWS itself: pyarrow's own addressing
        extra = {"endpoint_override": parsed.netloc + parsed.path.rstrip("/"), "scheme": parsed.scheme or "https"}
    max_attempts, connect_timeout, read_timeout = retry
    return pyarrow.fs.S3FileSystem(
        access_key=frozen.access_key, secret_key=frozen.secret_key, session_token=frozen.token, region=region,
        connect_timeout=connect_timeout, request_timeout=read_timeout,
        retry_strategy=pyarrow.fs.AwsStandardS3RetryStrategy(max_attempts), **extra)


def _fetch_fs() -> Any | None:
    s = settings()
    if s.s3_fetch_client != "pyarrow":
        return None
    client = s3_client()
    with _clients_lock:
        return _arrow_s3(client.meta.endpoint_url, client.meta.region_name, s.aws_credentials_block,
                         (s.s3_max_attempts, s.s3_connect_timeout, s.s3_read_timeout))


def _block_storage(name: str, extra_prefix: str) -> S3Storage:
    from prefect_aws import S3Bucket

    block = S3Bucket.load(name)
    prefix = "/".join(p for p in (block.bucket_folder.strip("/"), extra_prefix.strip("/")) if p)
    return S3Storage(block.bucket_name, prefix, block.credentials.get_s3_client())


def open_storage(url: str | Path | None = None) -> Storage:
    """Open the storage at ``url`` (see the module docstring for the forms)."""
    url = str(url) if url else default_storage_url()
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError(f"storage address {url!r} has no bucket: use s3://bucket/prefix")
        return S3Storage(parsed.netloc, parsed.path, s3_client(), _fetch_fs)
    if parsed.scheme == "s3-block":
        return _block_storage(parsed.netloc, parsed.path)
    if parsed.scheme == "file":
        return LocalStorage(unquote(parsed.path))
    if parsed.scheme and len(parsed.scheme) > 1:  # "C:" style drive letters are paths
        raise ValueError(f"storage address {url!r}: unsupported scheme {parsed.scheme!r} (use a path, file://, s3://)")
    return LocalStorage(url)


def split_object_url(url: str | Path) -> tuple[Storage, str]:
    """A single object's address (a path, file://, s3://bucket/key) -> (its folder's storage, its name)."""
    url = str(url).rstrip("/")
    head, _, name = url.rpartition("/")
    if not name or (urlparse(url).scheme in ("s3", "s3-block") and head.endswith(":/")):
        raise ValueError(f"{url!r} does not name an object")
    return open_storage(head or "."), name
