"""Command-line options made from a parameter model's fields, so each entry point's options, help
and validation are the model's own (the same checks the Prefect UI's form runs)."""
from __future__ import annotations

import argparse
import types
import typing
from typing import Literal, TypeVar

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)
_SCALARS = (int, float, str, bool)


def _flag_value(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _option_type(annotation) -> tuple[type, tuple | None] | None:
    """(scalar type, choices) for a field we can take from the command line; None otherwise."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        choices = typing.get_args(annotation)
        return type(choices[0]), choices
    if origin in (typing.Union, types.UnionType):
        options = [_option_type(a) for a in typing.get_args(annotation) if a is not type(None)]
        if None in options:
            return None
        # "accuracy" | 0.7: pass the text on and let the model's own validation decide what it is
        return options[0] if len(options) == 1 else (str, None)
    return (annotation, None) if annotation in _SCALARS else None


def add_model_arguments(ap: argparse.ArgumentParser, cls: type[BaseModel], prefix: str = "",
                        skip: tuple[str, ...] = ()) -> None:
    """One ``--<prefix><field>`` option per scalar field of ``cls`` (nested models are left out)."""
    group = ap.add_argument_group(f"{cls.__name__} ({cls.__module__})")
    for name, info in cls.model_fields.items():
        kind = _option_type(info.annotation)
        if name in skip or kind is None:
            continue
        scalar, choices = kind
        default = info.get_default(call_default_factory=True)
        group.add_argument(f"--{prefix}{name}".replace("_", "-"), dest=f"{prefix}{name}".replace("-", "_"),
                           type=_flag_value if scalar is bool else scalar, choices=choices, default=None,
                           help=f"{info.description or ''} (default: {default})".strip())


def model_from_arguments(ap: argparse.ArgumentParser, args: argparse.Namespace, cls: type[M], prefix: str = "",
                         **fixed) -> M:
    """``cls`` from the options given (the rest keep their defaults); a bad value is a usage error."""
    dest = prefix.replace("-", "_")
    values = {name: getattr(args, f"{dest}{name}") for name in cls.model_fields
              if getattr(args, f"{dest}{name}", None) is not None}
    try:
        return cls(**{**values, **fixed})
    except ValidationError as err:
        problems = "; ".join(f"--{prefix}{'.'.join(map(str, e['loc']))}".replace("_", "-") + f": {e['msg']}"
                             for e in err.errors())
        ap.error(problems)
