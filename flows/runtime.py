"""Run-time settings of deployed flows: read when a run starts, never frozen at ``prefect deploy``.

For storage, gallery and mirror a run takes, in order: its own parameter; the environment of the
process that runs it (``SIAMESE_STORAGE`` / ``SIAMESE_GALLERY`` / ``SIAMESE_MIRROR``, set on the
worker or in the work pool's job variables, ``env``); the Prefect Variable ``siamese_storage`` /
``siamese_gallery`` / ``siamese_mirror`` (editable in the UI). Storage falls back to ./var/store;
a gallery that a run needs and cannot find is an error naming all three places. Each must lie
under an allowed storage root (``storage.location.check_allowed``), checked before it is read.
"""
from __future__ import annotations

import os
from typing import Literal

from settings import settings
from storage.location import check_allowed, redact_url

Name = Literal["storage", "gallery", "mirror"]


def variable_name(name: Name) -> str:
    return f"siamese_{name}"


def _variable(name: Name) -> str | None:
    from prefect.variables import Variable

    value = Variable.get(variable_name(name), default=None)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"the Prefect Variable {variable_name(name)} must hold a string (an address), "
                         f"not {type(value).__name__}")
    return value or None


def run_setting(name: Name, given: str | None) -> tuple[str | None, str]:
    """(value, where it came from) for ``name``: the parameter, the environment, the Prefect Variable."""
    if given:
        return given, "the run's parameter"
    env = getattr(settings(), name)
    if env:
        return env, f"SIAMESE_{name.upper()} where the run runs"
    value = _variable(name)
    if value:
        return value, f"the Prefect Variable {variable_name(name)}"
    return None, "nowhere"


def run_storage(given: str | None) -> str:
    """The storage address this run writes to, logged with where it came from."""
    from prefect import get_run_logger

    from storage.location import default_storage_url

    value, source = run_setting("storage", given)
    if value is None:
        value, source = default_storage_url(), "the default (SIAMESE_HOME/store)"
    check_allowed("storage", value)
    get_run_logger().info("storage %s (from %s)", redact_url(value), source)
    return value


def run_gallery(given: str | None, why: str) -> str:
    """The gallery this run needs (``why`` says for what); an error naming every place it was looked for."""
    from prefect import get_run_logger

    value, source = run_setting("gallery", given)
    if value is None:
        raise ValueError(f"{why} needs a gallery and none is set: pass the gallery parameter, set SIAMESE_GALLERY "
                         f"where the flow runs (the work pool's job variables: env), or the Prefect Variable "
                         f"{variable_name('gallery')}")
    check_allowed("gallery", value)
    get_run_logger().info("gallery %s (from %s)", redact_url(value), source)
    return value


def run_mirror(given: str | None) -> str | None:
    """Where datasets download from; None: the official sources. A parameter that is the redacted
    form of SIAMESE_MIRROR (see ``mirror_parameter``) downloads from SIAMESE_MIRROR itself."""
    value = run_setting("mirror", given)[0]
    env = settings().mirror
    if value and env and value == redact_url(env):
        value = env
    check_allowed("mirror", value)
    return value


def mirror_parameter(value: str | None) -> str | None:
    """A mirror as a flow parameter: one carrying credentials (user:pass@, a query) becomes its
    redacted form, the real address kept in this process's SIAMESE_MIRROR for ``run_mirror``."""
    if not value or redact_url(value) == value:
        return value
    os.environ["SIAMESE_MIRROR"] = value
    return redact_url(value)
