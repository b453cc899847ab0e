"""ConfigError and the messages it carries: every problem of a config at once, each naming its
dotted key first and, where one is close, the key or choice that was probably meant."""

from __future__ import annotations

import difflib
import typing
from typing import Any

from pydantic import BaseModel


class ConfigError(ValueError):
    """A configuration problem; `problems` holds each one, each naming the offending key."""

    def __init__(self, problems: str | list[str], where: str = ""):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.where = where
        prefix = f"{where}: " if where else ""
        if len(self.problems) == 1:
            super().__init__(f"{prefix}{self.problems[0]}")
        else:
            lines = "\n".join(f"  - {p}" for p in self.problems)
            super().__init__(f"{prefix}{len(self.problems)} config errors:\n{lines}")

    def located(self, where: str) -> ConfigError:
        """The same problems, said to be in `where` (a config file)."""
        return ConfigError(self.problems, where)


def suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(valid)}"


def did_you_mean(value: Any, choices: list[str]) -> str:
    lower = {c.lower(): c for c in choices}  # `pack` means PACK
    close = difflib.get_close_matches(str(value).lower(), list(lower), n=1, cutoff=0.5)
    return f"; did you mean '{lower[close[0]]}'?" if close else ""


def dotted(loc: tuple) -> str:
    path = ""
    for i, part in enumerate(loc):
        if part == "[key]":  # the error is about the dict key just named
            continue
        if isinstance(part, int) and loc[i + 1 : i + 2] != ("[key]",):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def annotation(root: type[BaseModel], loc: tuple) -> Any:
    """The declared type at loc (a path of field names from root), None past a model."""
    tp: Any = root
    for part in loc:
        if isinstance(part, int) and typing.get_origin(tp) in (list, tuple):
            tp = typing.get_args(tp)[0]  # an item of a list, e.g. train.tracking[0]
            continue
        if not (isinstance(tp, type) and issubclass(tp, BaseModel)) or part not in tp.model_fields:
            return None
        tp = tp.model_fields[part].annotation
    return tp


TYPE_NAMES = {"int_type": "int", "bool_type": "bool", "float_type": "float", "string_type": "str"}
BOUNDS = {
    "greater_than": ">",
    "greater_than_equal": ">=",
    "less_than": "<",
    "less_than_equal": "<=",
}


def error_message(root: type[BaseModel], error: Any) -> str:
    """One pydantic error as a problem line: the dotted key first, then the fix."""
    loc, value, kind = tuple(error["loc"]), error["input"], error["type"]
    path = dotted(loc)
    if kind == "extra_forbidden":
        parent = annotation(root, loc[:-1])
        prefix = dotted(loc[:-1])
        valid = [f"{prefix}.{n}" if prefix else n for n in parent.model_fields]
        return f"unknown config key '{path}'{suggest(path, valid)}"
    if kind == "literal_error":
        choices = [str(c) for c in typing.get_args(annotation(root, loc))]
        return (
            f"'{path}' must be one of {', '.join(choices)}, "
            f"got {value!r}{did_you_mean(value, choices)}"
        )
    if kind in TYPE_NAMES:
        return f"'{path}' must be {TYPE_NAMES[kind]}, got {value!r} ({type(value).__name__})"
    if kind in BOUNDS:
        ((_, bound),) = error["ctx"].items()
        return f"'{path}' must be {BOUNDS[kind]} {bound}, got {value!r}"
    if kind == "list_type":
        return f"'{path}' must be a list, got {value!r}"
    if kind in ("dict_type", "model_type"):
        return f"'{path}' must be a mapping, got {value!r} ({type(value).__name__})"
    return f"'{path}': {error['msg']}, got {value!r}"
