"""Helpers for Prefect artifacts that stand on their own in the UI."""
from __future__ import annotations

import base64


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only (at most 60 used here)."""
    return "-".join(parts).lower().replace("_", "-")[:60]


def png_markdown(alt: str, png: bytes) -> str:
    """A PNG inlined as a data URI: the Prefect UI renders it without access to our storage."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"
