"""Checksums and manifests: how a stage proves its outputs are complete and what they were made from.

A stage writes its outputs, then a manifest naming the fingerprint of its inputs (written last,
so its presence means the outputs are complete). A re-run whose wanted inputs equal the
manifest's reuses the outputs instead of redoing the work.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

from storage.base import Storage, StorageError


class IntegrityError(StorageError):
    """Stored bytes do not match the checksum their manifest records."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def same_inputs(prior: dict | None, wanted: dict[str, Any]) -> bool:
    """True when ``prior`` records every value of ``wanted`` (compared in their JSON form)."""
    return bool(prior) and all(prior.get(k) == v for k, v in json.loads(json.dumps(wanted)).items())


def reusable_manifest(store: Storage, key: str, wanted: dict[str, Any], *outputs: str) -> dict | None:
    """The manifest at ``key`` if it was made from ``wanted`` and its ``outputs`` keys still exist."""
    prior = store.read_json_or_none(key)
    if same_inputs(prior, wanted) and all(store.exists(k) for k in outputs):
        return prior
    return None


def read_verified(store: Storage, key: str, sha256: str) -> bytes:
    """The bytes at ``key``, refused unless their sha256 is the one recorded for them."""
    data = store.read_bytes(key)
    got = sha256_bytes(data)
    if got != sha256:
        raise IntegrityError(f"{store.uri(key)}: sha256 {got} does not match the recorded {sha256}; "
                             "refusing to use it")
    return data
