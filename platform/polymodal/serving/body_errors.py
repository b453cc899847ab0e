"""A request body that FastAPI could not read or pydantic refused, as the API's one message: the
field at fault by its path in the body as sent (input[0].data), and what it should be."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

# What a value of a pydantic type error's kind should have been, in JSON's words.
EXPECTED = {
    "string_type": "a string",
    "list_type": "a list",
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "dict_type": "a JSON object",
    "model_type": "a JSON object",
    "model_attributes_type": "a JSON object",
}


def json_kind(value: Any) -> str:
    """A JSON value's kind as a client would name it; a number as written (1.5, NaN): "not a
    number" would say nothing about why 1.5 is not an integer."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, int | float):  # a huge integer is named, not printed
        return json.dumps(value) if abs(value) < 1e15 or value != value else "a number"
    kinds = {str: "a string", list: "a list", dict: "an object"}
    return next((name for cls, name in kinds.items() if isinstance(value, cls)), "another value")


def not_json(problem: dict[str, Any], doc: Any) -> str:
    """FastAPI's json_invalid error → what the parser said and where (its loc holds the
    character offset, which no client counts in)."""
    reason = problem.get("ctx", {}).get("error", "malformed")
    loc = problem.get("loc", ())
    pos = loc[1] if len(loc) > 1 and isinstance(loc[1], int) else None
    if pos is None or not isinstance(doc, str):
        return f"the body is not valid JSON: {reason}"
    line = doc.count("\n", 0, pos) + 1
    column = pos - doc.rfind("\n", 0, pos)
    return f"the body is not valid JSON: {reason} at line {line} column {column}"


def field_path(problem: dict[str, Any], body: Any) -> str:
    """The error's location as the client wrote it. pydantic's loc also names union members
    ('str', 'list[union[str,TypedItem]]'); walking the body keeps only keys and indexes that
    are there (and a missing field's own name)."""
    loc: Sequence[Any] = problem.get("loc", ())[1:]  # loc[0] is "body"
    path, value = "", body
    for i, key in enumerate(loc):
        if isinstance(key, int) and isinstance(value, list) and 0 <= key < len(value):
            path, value = f"{path}[{key}]", value[key]
        elif isinstance(key, str) and isinstance(value, dict) and key in value:
            path, value = f"{path}.{key}" if path else key, value[key]
        elif problem.get("type") == "missing" and i == len(loc) - 1:
            path = f"{path}.{key}" if path else str(key)
    return path


def _what(problems: list[dict[str, Any]]) -> str:
    """What is wrong with one field, from its errors (several when it is a union's value)."""
    first = problems[0]
    kind, ctx = first.get("type", ""), first.get("ctx", {})
    if kind == "missing":
        return "missing; this field is required"
    if kind == "extra_forbidden":
        return "not a field of this request"
    if kind == "too_short" and ctx.get("actual_length") == 0:
        what = "object" if ctx.get("field_type") == "Dictionary" else "list"
        return f"the {what} is empty; send at least one item"
    if kind == "literal_error" and "[key]" in first.get("loc", ()):
        return f"not a valid key: should be {ctx.get('expected')}"
    if all(p.get("type") in EXPECTED for p in problems):
        wanted = dict.fromkeys(EXPECTED[p["type"]] for p in problems)
        return f"should be {' or '.join(wanted)}, not {json_kind(first.get('input'))}"
    message = str(first.get("msg", "invalid"))
    return message.removeprefix("Input ")


def explain(problems: list[dict[str, Any]], body: Any) -> tuple[str, str | None]:
    """pydantic's errors for a body → (message, param) about the first field at fault.
    A union reports a type error for every member the value is not; the member it does match
    (a list for a list) says what is really wrong, at the deepest path."""
    if not problems:
        return "the body is not a valid request", None
    if problems[0].get("type") == "json_invalid":
        return not_json(problems[0], body), None
    loc = problems[0].get("loc", ())
    field = [p for p in problems if p.get("loc", ())[1:2] == loc[1:2]]
    real = [p for p in field if p.get("type") not in EXPECTED] or field
    paths = [field_path(p, body) for p in real]
    path = max(paths, key=lambda p: p.count(".") + p.count("["))
    same = [p for p, at in zip(real, paths) if at == path]
    if not path:  # the body itself
        if same[0].get("type") == "missing":
            return "the body is empty; send a JSON object", None
        if isinstance(body, bytes):  # FastAPI parses JSON only when the request says it is
            return "the body is not JSON: send it with Content-Type: application/json", None
        return f"the body {_what(same)}", None
    return f"{path}: {_what(same)}", path
