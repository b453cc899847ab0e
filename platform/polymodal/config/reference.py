"""docs/config.md, generated from the assembled Config's field descriptions (the one place each
key is documented): `python -m polymodal.config.reference docs/config.md` (make config-docs)."""

from __future__ import annotations

import json
import sys
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from polymodal.config.assemble import config_class

HEADER = """# Config reference

Generated from the config's field descriptions by `make config-docs` (a test checks it is
current); do not edit by hand. Every key can be set in a YAML config or as a `key=value`
override, and `polymodal validate CONFIG [key=value ...]` checks a config without training.
The model and data sections gain keys from the registered modalities (`model.<modality>`,
`data.*`), the objective from the registered terms (`objective.weights.<term>`,
`objective.<term>`).
"""


def type_name(tp: Any) -> str:
    """A field's type as a reader would write it in YAML terms."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return " \\| ".join(str(a) for a in args)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin in (list, tuple):
        return f"list of {type_name(args[0])}" if args else "list"
    if origin is dict:
        return "mapping" if not args or args[1] is Any else f"mapping to {type_name(args[1])}"
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " or ".join(type_name(a) for a in args if a is not type(None))
    return getattr(tp, "__name__", str(tp))


def default_of(info: Any) -> str:
    if info.default_factory is not None:
        value = info.default_factory()
    elif info.default is PydanticUndefined:
        return "(required)"
    else:
        value = info.default
    if isinstance(value, BaseModel):
        return ""
    return f"`{json.dumps(value)}`"


def _section(model: type[BaseModel], prefix: str, out: list[str]) -> None:
    rows, nested = [], []
    for name, info in model.model_fields.items():
        key = f"{prefix}.{name}" if prefix else name
        tp = info.annotation
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            nested.append((key, tp))
            continue
        description = " ".join((info.description or "").split()).replace("|", "\\|")
        rows.append(f"| `{key}` | {type_name(tp)} | {default_of(info)} | {description} |")
    if rows:
        doc = " ".join((model.__doc__ or "").split())
        out += [f"## `{prefix}`", "", doc, ""] if doc else [f"## `{prefix}`", ""]
        out += ["| key | type | default | description |", "|---|---|---|---|", *rows, ""]
    for key, tp in nested:
        _section(tp, key, out)


def reference() -> str:
    out = [HEADER]
    _section(config_class(), "", out)
    return "\n".join(out).rstrip() + "\n"


def missing_descriptions() -> list[str]:
    """Keys whose field has no description (a test keeps this empty)."""
    missing: list[str] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, info in model.model_fields.items():
            key = f"{prefix}.{name}" if prefix else name
            if not (info.description or "").strip():
                missing.append(key)
            if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
                walk(info.annotation, key)

    walk(config_class(), "")
    return missing


if __name__ == "__main__":
    Path(sys.argv[1]).write_text(reference())
