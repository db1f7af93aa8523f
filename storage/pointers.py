"""Pointers: small JSON objects that say which version of something is current (the champion model,
a gallery's enrolment) and that more than one writer may move. Every move is a compare-and-swap
against the version the writer read, so a writer that decided on a stale view (a nightly that beat
a champion rolled back since) is refused instead of overwriting what happened meanwhile."""
from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from storage.base import PreconditionFailedError, Storage


class PointerMovedError(PreconditionFailedError):
    """The pointer is no longer what the writer read or expected."""


def read_pointer(store: Storage, key: str) -> tuple[Any, str | None]:
    """(value, version token) of the pointer at ``key``; (None, None) when there is none yet."""
    data, token = store.read_versioned(key)
    return (json.loads(data) if data is not None else None), token


def swap_pointer(store: Storage, key: str, value: Any, expected: str | None) -> None:
    """Write ``value`` at ``key`` if the pointer is still at version ``expected`` (None: absent)."""
    try:
        store.write_if(key, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode(), expected)
    except PreconditionFailedError as err:
        raise PointerMovedError(f"{store.uri(key)} was moved by another writer since it was read; nothing was "
                                "written") from err


def update_pointer(store: Storage, key: str, change: Callable[[Any], Any], attempts: int = 5) -> Any:
    """Read the pointer, ``change(value)`` -> new value, swap; again from the new value when another
    writer won meanwhile (``change`` decides afresh each time and may raise to give up)."""
    for attempt in range(attempts):
        value, token = read_pointer(store, key)
        new = change(value)
        try:
            swap_pointer(store, key, new, token)
            return new
        except PointerMovedError:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")
