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


def _option_type(annotation) -> tuple[type, tuple | None, str | None] | None:
    """(scalar type, choices, nargs) for a field we can take from the command line; None otherwise."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _option_type(typing.get_args(annotation)[0])
    if origin is tuple:  # tuple[int, ...]: one or more values
        args = typing.get_args(annotation)
        item = _option_type(args[0]) if len(args) == 2 and args[1] is Ellipsis else None
        return (item[0], item[1], "+") if item and item[2] is None else None
    if origin is Literal:
        choices = typing.get_args(annotation)
        return type(choices[0]), choices, None
    if origin in (typing.Union, types.UnionType):
        options = [_option_type(a) for a in typing.get_args(annotation) if a is not type(None)]
        if None in options:
            return None
        # "accuracy" | 0.7: pass the text on and let the model's own validation decide what it is
        return options[0] if len(options) == 1 else (str, None, None)
    return (annotation, None, None) if annotation in _SCALARS else None


def add_model_arguments(ap: argparse.ArgumentParser, cls: type[BaseModel], prefix: str = "",
                        skip: tuple[str, ...] = ()) -> None:
    """One ``--<prefix><field>`` option per scalar field of ``cls`` (nested models are left out)."""
    group = ap.add_argument_group(f"{cls.__name__} ({cls.__module__})")
    for name, info in cls.model_fields.items():
        kind = _option_type(info.annotation)
        if name in skip or kind is None:
            continue
        scalar, choices, nargs = kind
        given = "required" if info.is_required() else f"default: {info.get_default(call_default_factory=True)}"
        group.add_argument(f"--{prefix}{name}".replace("_", "-"), dest=f"{prefix}{name}".replace("-", "_"),
                           type=_flag_value if scalar is bool else scalar, choices=choices, nargs=nargs,
                           default=None, help=f"{info.description or ''} ({given})".strip())


def validation_message(err: ValidationError, prefix: str = "--") -> str:
    """A pydantic error as one line naming each field the way the user gave it: ``--top-k`` for an
    option, ``train.time_budget_minutes`` for a key of a parameters file."""
    def name(loc) -> str:
        path = ".".join(map(str, loc))
        return prefix + (path.replace("_", "-") if prefix.startswith("--") else path)

    return "; ".join(f"{name(e['loc'])}: {e['msg']}" for e in err.errors())


def given_arguments(args: argparse.Namespace, cls: type[BaseModel], prefix: str = "") -> dict:
    """The fields of ``cls`` given as ``--<prefix><field>`` options, by field name."""
    dest = prefix.replace("-", "_")
    return {name: getattr(args, f"{dest}{name}") for name in cls.model_fields
            if getattr(args, f"{dest}{name}", None) is not None}


def model_from_arguments(ap: argparse.ArgumentParser, args: argparse.Namespace, cls: type[M], prefix: str = "",
                         **fixed) -> M:
    """``cls`` from the options given (the rest keep their defaults); a bad value is a usage error."""
    try:
        return cls(**{**given_arguments(args, cls, prefix), **fixed})
    except ValidationError as err:
        ap.error(validation_message(err, f"--{prefix}"))
