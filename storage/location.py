"""Turn a storage address into a Storage: the only place that knows local vs S3.

Addresses:
  (nothing)                 $SIAMESE_STORAGE, else the directory $SIAMESE_HOME/store (./var/store)
  /some/dir, ./dir          a local directory
  file:///some/dir          a local directory
  s3://bucket/prefix        S3 through boto3; endpoint from $SIAMESE_S3_ENDPOINT_URL or
                            $AWS_ENDPOINT_URL, credentials from the usual AWS chain, or from the
                            prefect-aws AwsCredentials block named in $SIAMESE_AWS_CREDENTIALS_BLOCK
  s3-block://name[/prefix]  the prefect-aws S3Bucket block ``name`` (bucket, folder, credentials)
"""
from __future__ import annotations

import os
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from storage.base import Storage
from storage.local import LocalStorage
from storage.s3 import S3Storage

_clients_lock = threading.Lock()


def siamese_home() -> Path:
    return Path(os.environ.get("SIAMESE_HOME", "var")).expanduser().resolve()


def default_storage_url() -> str:
    return os.environ.get("SIAMESE_STORAGE") or str(siamese_home() / "store")


def _botocore_config() -> Any:
    from botocore.config import Config

    # Standard retry mode backs off on throttling, 5xx and connection errors.
    return Config(
        retries={"max_attempts": int(os.environ.get("SIAMESE_S3_MAX_ATTEMPTS", "8")), "mode": "standard"},
        connect_timeout=float(os.environ.get("SIAMESE_S3_CONNECT_TIMEOUT", "5")),
        read_timeout=float(os.environ.get("SIAMESE_S3_READ_TIMEOUT", "60")),
        max_pool_connections=64,  # several shards x 16 fetch threads share one client
    )


@lru_cache(maxsize=8)
def _env_s3_client(endpoint_url: str | None, region: str | None, credentials_block: str | None) -> Any:
    """One boto3 client per process and configuration (boto3 clients are thread-safe)."""
    import boto3

    if credentials_block:
        from prefect_aws import AwsCredentials

        session = AwsCredentials.load(credentials_block).get_boto3_session()
    else:
        session = boto3.session.Session()
    return session.client(
        "s3", endpoint_url=endpoint_url, region_name=region or session.region_name or "us-east-1",
        config=_botocore_config(),
    )


def s3_client() -> Any:
    endpoint = os.environ.get("SIAMESE_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL") or None
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None
    block = os.environ.get("SIAMESE_AWS_CREDENTIALS_BLOCK") or None
    with _clients_lock:
        return _env_s3_client(endpoint, region, block)


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
        return S3Storage(parsed.netloc, parsed.path, s3_client())
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
