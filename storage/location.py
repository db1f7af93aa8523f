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

A location that a flow takes as a parameter must lie under an allowed root (``check_allowed``):
SIAMESE_ALLOWED_ROOTS, else the working directory (unless it is / or holds the home directory), the
temp directory and every S3 bucket or block; always SIAMESE_HOME, the storage, SIAMESE_GALLERY,
SIAMESE_MIRROR and what this process's command line named (``allow_command_line``).
"""
from __future__ import annotations

import tempfile
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse, urlunparse

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


def _session_and_params(credentials: Any) -> tuple[Any, dict]:
    """A boto3 session and the client parameters (endpoint, region, botocore settings, TLS) of a
    prefect-aws credentials block (AwsCredentials or MinIOCredentials), or of the usual AWS chain."""
    import boto3

    if credentials is None:
        return boto3.session.Session(), {}
    params = credentials.aws_client_parameters.get_params_override()
    if getattr(credentials, "region_name", None):
        params["region_name"] = credentials.region_name
    return credentials.get_boto3_session(), params


def _make_client(credentials: Any, endpoint_url: str | None, region: str | None,
                 retry: tuple[int, float, float]) -> tuple[Any, Any, dict]:
    """(client, session, the block's parameters): one botocore configuration on every path, the
    project's retries and timeouts under whatever the block sets itself; the block's endpoint and
    region before the environment's (naming a block is choosing its configuration)."""
    session, params = _session_and_params(credentials)  # a fresh dict: popped below
    config = _botocore_config(*retry)
    block_config = params.pop("config", None)
    if block_config is not None:
        config = config.merge(block_config)
        block_retries = (credentials.aws_client_parameters.config or {}).get("retries")
        if block_retries:  # merge replaces the whole dict: keep our retry mode unless the block sets one
            config = config.merge(type(config)(retries={"mode": "standard", **block_retries}))
    endpoint_url = params.pop("endpoint_url", None) or endpoint_url
    region = params.pop("region_name", None) or region or session.region_name or "us-east-1"
    client = session.client("s3", endpoint_url=endpoint_url, region_name=region, config=config, **params)
    return client, session, params


def _load_credentials_block(name: str) -> Any:
    from prefect_aws import AwsCredentials

    return AwsCredentials.load(name)


@lru_cache(maxsize=8)
def _s3_client(endpoint_url: str | None, region: str | None, credentials_block: str | None,
               retry: tuple[int, float, float]) -> tuple[Any, Any, dict]:
    """One boto3 client per process and configuration (boto3 clients are thread-safe)."""
    credentials = _load_credentials_block(credentials_block) if credentials_block else None
    return _make_client(credentials, endpoint_url, region, retry)


def _retry_settings() -> tuple[int, float, float]:
    s = settings()
    return s.s3_max_attempts, s.s3_connect_timeout, s.s3_read_timeout


def _configured_client() -> tuple[Any, Any, dict]:
    s = settings()
    with _clients_lock:
        return _s3_client(s.s3_endpoint_url, s.aws_region, s.aws_credentials_block, _retry_settings())


def s3_client() -> Any:
    """The process's boto3 client for the current settings (boto3 clients are thread-safe)."""
    return _configured_client()[0]


def _arrow_s3(client: Any, session: Any, params: dict, retry: tuple[int, float, float]) -> Any | None:
    """pyarrow's S3 filesystem for the endpoint and region the boto3 client resolved (settings, a
    block's, AWS_ENDPOINT_URL_S3, a profile's), the same timeouts and credentials; None where a copy
    would not behave like boto3: credentials that refresh themselves (an assumed role, instance
    metadata), which boto3 keeps current, or a block's own TLS settings. Bulk reads then stay on boto3."""
    import pyarrow.fs
    from botocore.credentials import RefreshableCredentials

    if params.get("verify") not in (None, True) or params.get("use_ssl") is False:
        return None
    credentials = session.get_credentials()
    if credentials is None or isinstance(credentials, RefreshableCredentials):
        return None
    frozen = credentials.get_frozen_credentials()
    parsed = urlparse(client.meta.endpoint_url)
    extra: dict[str, Any] = {}
    if not parsed.netloc.endswith(".amazonaws.com"):  # AWS itself: pyarrow's own addressing
        extra = {"endpoint_override": parsed.netloc + parsed.path.rstrip("/"), "scheme": parsed.scheme or "https"}
    max_attempts, connect_timeout, read_timeout = retry
    return pyarrow.fs.S3FileSystem(
        access_key=frozen.access_key, secret_key=frozen.secret_key, session_token=frozen.token,
        region=client.meta.region_name, connect_timeout=connect_timeout, request_timeout=read_timeout,
        retry_strategy=pyarrow.fs.AwsStandardS3RetryStrategy(max_attempts), **extra)


def _fetch_fs_for(made: tuple[Any, Any, dict]):
    """``fetch_fs`` for S3Storage: pyarrow's filesystem for this client, made on first use."""
    def fetch_fs() -> Any | None:
        if settings().s3_fetch_client != "pyarrow":
            return None
        key = (made[0], _retry_settings())  # one filesystem per client and settings in a process
        with _clients_lock:
            if key not in _arrow_filesystems:
                _arrow_filesystems[key] = _arrow_s3(*made, key[1])
            return _arrow_filesystems[key]
    return fetch_fs


_arrow_filesystems: dict[tuple, Any] = {}


@lru_cache(maxsize=8)
def _bucket_block(name: str, retry: tuple[int, float, float]) -> tuple[str, str, tuple[Any, Any, dict]]:
    """(bucket, folder, client) of a prefect-aws S3Bucket block, the client made like every other."""
    from prefect_aws import S3Bucket

    block = S3Bucket.load(name)
    return block.bucket_name, block.bucket_folder, _make_client(block.credentials, settings().s3_endpoint_url,
                                                                settings().aws_region, retry)


def _block_storage(name: str, extra_prefix: str) -> S3Storage:
    with _clients_lock:
        bucket, folder, made = _bucket_block(name, _retry_settings())
    prefix = "/".join(p for p in (folder.strip("/"), extra_prefix.strip("/")) if p)
    return S3Storage(bucket, prefix, made[0], _fetch_fs_for(made))


def open_storage(url: str | Path | None = None) -> Storage:
    """Open the storage at ``url`` (see the module docstring for the forms)."""
    url = str(url) if url else default_storage_url()
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError(f"storage address {url!r} has no bucket: use s3://bucket/prefix")
        made = _configured_client()
        return S3Storage(parsed.netloc, parsed.path, made[0], _fetch_fs_for(made))
    if parsed.scheme == "s3-block":
        return _block_storage(parsed.netloc, parsed.path)
    if parsed.scheme == "file":
        return LocalStorage(unquote(parsed.path))
    if parsed.scheme and len(parsed.scheme) > 1:  # "C:" style drive letters are paths
        raise ValueError(f"storage address {url!r}: unsupported scheme {parsed.scheme!r} (use a path, file://, s3://)")
    return LocalStorage(url)


def redact_url(url: str) -> str:
    """Drop user:password@ and the query (presigned URLs carry credentials there)."""
    p = urlparse(url)
    netloc = p.hostname or ""
    if p.port:
        netloc += f":{p.port}"
    return urlunparse((p.scheme, netloc, p.path, "", "", ""))


class NotAllowedError(ValueError):
    """A location parameter lies outside the allowed storage roots; nothing was read from it."""


_command_line: list[str] = []


def allow_command_line(*urls: str | Path | None) -> None:
    """Locations typed on this process's command line are the operator's own: allowed in this process."""
    _command_line.extend(str(u) for u in urls if u)


def _parts(url: str | Path) -> tuple[str, tuple[str, ...]] | None:
    """(kind, parts) of a storage location, symbolic links and .. resolved; None for http(s)."""
    url = str(url)
    p = urlparse(url)
    if p.scheme in ("s3", "s3-block"):
        return p.scheme, tuple(x for x in (p.netloc, *p.path.split("/")) if x)
    if p.scheme and len(p.scheme) > 1 and p.scheme != "file":
        return None
    path = unquote(p.path) if p.scheme == "file" else url
    return "file", Path(path).expanduser().resolve().parts


def _default_roots() -> list[str]:
    cwd, home = Path.cwd().resolve(), Path.home().resolve()
    roots = [tempfile.gettempdir(), "s3://", "s3-block://"]
    if cwd != Path(cwd.anchor) and not home.is_relative_to(cwd):
        roots.append(str(cwd))
    return roots


def allowed_roots() -> list[str]:
    s = settings()
    given = [r.strip() for r in (s.allowed_roots or "").split(",") if r.strip()]
    own = [str(siamese_home()), default_storage_url(), s.gallery, s.mirror, *_command_line]
    return [r for r in [*(given or _default_roots()), *own] if r and _parts(r)]


def check_allowed(name: str, url: str | Path | None) -> None:
    """Refuse the parameter ``name`` unless its location lies under an allowed root (http(s) is no
    storage location: not checked). The message names the parameter and the roots, never content."""
    where = _parts(url) if url else None
    if where is None:
        return
    roots = allowed_roots()
    for root in roots:
        kind, parts = _parts(root)
        if kind == where[0] and where[1][:len(parts)] == parts:
            return
    shown = ", ".join(r if r.endswith("://") else redact_url(r) for r in roots)
    raise NotAllowedError(f"{name} {redact_url(str(url))} is outside the allowed storage roots "
                          f"({shown}): refused, nothing was read; an operator "
                          "allows more with SIAMESE_ALLOWED_ROOTS")


def split_object_url(url: str | Path) -> tuple[Storage, str]:
    """A single object's address (a path, file://, s3://bucket/key) -> (its folder's storage, its name)."""
    url = str(url).rstrip("/")
    head, _, name = url.rpartition("/")
    if not name or (urlparse(url).scheme in ("s3", "s3-block") and head.endswith(":/")):
        raise ValueError(f"{url!r} does not name an object")
    return open_storage(head or "."), name
