"""Environment settings and process defaults: the one module that reads the environment.

Every entry point imports it first (``flows/__init__.py`` does, so ``python -m flows.<x>`` and
Prefect's loading of ``flows/<x>.py`` both do), so the process defaults below are in place
before Prefect or TensorFlow read them. Values already in the environment win.

Settings (environment variables):
  SIAMESE_HOME                  local working directory: download cache, extracted images, runs (./var)
  SIAMESE_STORAGE               where outputs go (a directory, file://, s3://, s3-block://); default HOME/store
  SIAMESE_MIRROR                where datasets download from; default: the official sources
  SIAMESE_DATASET               the main job's command-line default dataset (lfw)
  SIAMESE_GALLERY               the gallery a match or enrol run uses when it names none
  SIAMESE_ALLOWED_ROOTS         comma-separated directories and s3://bucket/prefix roots that location parameters
                                may name (see storage/location.py); default: the working directory and temp dir,
                                any S3 bucket; HOME, storage, gallery, mirror and the command line's own always
  SIAMESE_S3_ENDPOINT_URL       S3 endpoint (MinIO, SeaweedFS, moto); AWS_ENDPOINT_URL also works
  AWS_REGION                    or AWS_DEFAULT_REGION
  SIAMESE_AWS_CREDENTIALS_BLOCK a prefect-aws AwsCredentials block to take S3 credentials from
  SIAMESE_S3_MAX_ATTEMPTS, SIAMESE_S3_CONNECT_TIMEOUT, SIAMESE_S3_READ_TIMEOUT  S3 retries/timeouts
  SIAMESE_S3_FETCH_CLIENT       pyarrow (default: its C++ client fetches probes and gallery images 2.6-2.9x
                                faster than boto3 here) or boto3
  SIAMESE_TIME_LIMITS           JSON minutes per flow over the defaults in flows/time_limits.py, e.g.
                                {"nightly-retrain": 300}; read when a run's process starts
  SIAMESE_NATIVE_LOGS           1: show TensorFlow's C++ start-up lines and info/warning logs
  SIAMESE_PRECISION             auto (bfloat16 compute where the GPU or CPU runs it natively, else float32),
                                float32 or bfloat16
Credentials themselves are never settings here: boto3 reads them from its usual chain.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import AliasChoices, BaseModel, ConfigDict, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PROCESS_DEFAULTS = {
    # Offline-friendly Prefect: no analytics calls; a fresh PREFECT_HOME's ephemeral API needs
    # more than the default 20 s to migrate its database on 2 cores.
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    # oneDNN is off by default on this CPU and ~1.5x faster on conv/matmul; TensorFlow reads it once.
    "TF_ENABLE_ONEDNN_OPTS": "1",
    # TensorFlow's C++ info and warning lines; its errors still show (the cuInit error of a machine
    # without a GPU comes while model/__init__.py looks for GPUs, inside quiet_native_stderr).
    "TF_CPP_MIN_LOG_LEVEL": "2",
}
for _name, _value in PROCESS_DEFAULTS.items():
    if not (_name == "TF_CPP_MIN_LOG_LEVEL" and os.environ.get("SIAMESE_NATIVE_LOGS", "") not in ("", "0")):
        os.environ.setdefault(_name, _value)


class Settings(BaseSettings):
    """Read from the environment each time :func:`settings` is called (tests and workers change it)."""

    model_config = SettingsConfigDict(env_prefix="SIAMESE_", env_ignore_empty=True, extra="ignore")

    home: Path = Path("var")
    storage: str | None = None
    mirror: str | None = None
    dataset: str = "lfw"
    gallery: str | None = None
    allowed_roots: str | None = None
    s3_endpoint_url: str | None = Field(
        None, validation_alias=AliasChoices("SIAMESE_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL"))
    aws_region: str | None = Field(None, validation_alias=AliasChoices("AWS_REGION", "AWS_DEFAULT_REGION"))
    aws_credentials_block: str | None = None
    s3_max_attempts: int = Field(8, ge=1)
    s3_connect_timeout: float = Field(5.0, gt=0)
    s3_read_timeout: float = Field(60.0, gt=0)
    s3_fetch_client: Literal["pyarrow", "boto3"] = "pyarrow"
    time_limits: dict[str, float] = {}
    native_logs: bool = False
    precision: Literal["auto", "float32", "bfloat16"] = "auto"


def settings() -> Settings:
    return Settings()


def siamese_home() -> Path:
    return settings().home.expanduser().resolve()


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Hold back what is written to file descriptor 2 during a block: TensorFlow prints its
    start-up lines (oneDNN, CUDA stubs, CPU features, a failed cuInit without a GPU) from C++
    before its log level applies. If the block raises, what was held back is written out first,
    so a failing import still explains itself (a hard crash: run with SIAMESE_NATIVE_LOGS=1)."""
    if settings().native_logs:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException:
            sys.stderr.flush()
            os.dup2(saved, 2)
            held.seek(0)
            sys.stderr.write(held.read().decode("utf-8", "replace"))
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


class Params(BaseModel):
    """The one kind of configuration: frozen, validated pydantic models. Flow parameters built on it
    render as forms in the Prefect UI, and a bad value fails at submission with the field named."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def key(self, length: int = 12) -> str:
        """A short stable hash of the values: names runs, caches and versions."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:length]

    def replace(self, **changes: Any) -> Self:
        """A copy with ``changes``, validated like a fresh instance (``model_copy`` would not validate)."""
        return type(self).model_validate({**self.model_dump(), **changes})
