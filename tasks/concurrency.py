"""Limits that hold across flows and deployments: Prefect global concurrency limits.

One training at a time on the whole Prefect server (the ``train``, ``nightly-retrain`` and ``main``
flows and any subflow that trains), and one enrolment per gallery at a time (two would race on its
embedding store). A limit that does not exist is created with one slot on first use, so the rule
holds without any set-up; an operator may raise it (``prefect gcl update siamese-training --limit 2``)
and the raised value is kept. Slots are leases the holder renews: a crashed process frees its slot
when the lease runs out.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

TRAINING = "siamese-training"


def enrolment_limit(gallery_id: str) -> str:
    """One limit per gallery, named by the id its embedding store is named by
    (``tasks.matching.gallery.gallery_id``: readable, with a hash of the address)."""
    return "siamese-enrol-" + gallery_id


def ensure_limit(name: str, slots: int = 1) -> None:
    """Create the global concurrency limit ``name`` with ``slots`` slots unless it exists."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=slots))
            except ObjectAlreadyExists:  # another run created it meanwhile
                pass


@contextlib.contextmanager
def hold(name: str, what: str, log=None) -> Iterator[None]:
    """Hold a slot of the limit ``name`` for ``what`` (waits for one; logs the wait)."""
    from prefect.concurrency.sync import concurrency

    ensure_limit(name)
    start = time.monotonic()
    if log:
        log(f"{what}: waiting for a slot of the concurrency limit {name}")
    # strict: a missing limit is an error, never a silent no-op; a failed lease renewal (an API blip)
    # must not end hours of training, so that alone does not raise
    with concurrency(name, occupy=1, strict=True, raise_on_lease_renewal_failure=False):
        if log:
            log(f"{what}: holds the slot of {name} (waited {time.monotonic() - start:.1f} s)")
        yield
