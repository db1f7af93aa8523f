"""Helpers for Prefect artifacts that stand on their own in the UI."""
from __future__ import annotations

import base64
import re


def _short(part: str) -> str:
    """A folder dataset's address as a short part: its last folder and a hash of the whole address."""
    if "/" not in part and ":" not in part:
        return part
    import hashlib

    last = [p for p in part.replace(":", "/").split("/") if p][-1:] or ["folder"]
    return f"{last[0][:16]}-{hashlib.sha256(part.encode()).hexdigest()[:6]}"


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only (at most 60 used here)."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(map(_short, parts)).lower().replace("_", "-")).strip("-")[:60]


def png_markdown(alt: str, png: bytes) -> str:
    """A PNG inlined as a data URI: the Prefect UI renders it without access to our storage."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"
