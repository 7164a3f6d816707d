"""Principle files in SALMON's schema: a JSON list of {dimension, definition, negative_definition}.

The judge stage puts `dimension` and `definition` into every judging prompt and the reward-model
trainer shows `negative_definition` for a negated principle, so an empty or missing field would
silently degrade the data. Loading is therefore strict and every error names the file, the entry
index and the field. Extra keys are ignored so richer files still load.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from salmon_wf.data.jsonl import read_utf8
from salmon_wf.errors import PrincipleError

FIELDS = ("dimension", "definition", "negative_definition")


@dataclass(frozen=True)
class Principle:
    dimension: str
    definition: str
    negative_definition: str


def load_principles(path: str | Path) -> list[Principle]:
    """The principles of `path`, in file order (the order judging and gathering use)."""
    path = Path(path)
    try:
        data = json.loads(read_utf8(path, PrincipleError))
    except json.JSONDecodeError as exc:
        raise PrincipleError(
            f"invalid JSON at column {exc.colno} ({exc.msg})", file=path, line=exc.lineno
        ) from exc
    if not isinstance(data, list):
        raise PrincipleError(
            f"expected a JSON list of principles, got {type_name(data)}", file=path
        )
    if not data:
        raise PrincipleError("the principle list is empty", file=path)
    principles: list[Principle] = []
    first_seen: dict[str, int] = {}
    for index, entry in enumerate(data):
        where = {"file": path, "field": f"entry {index}"}  # the entry's place in the list
        if not isinstance(entry, dict):
            raise PrincipleError(f"expected an object, got {type_name(entry)}", **where)
        values = []
        for field in FIELDS:
            if field not in entry:
                raise PrincipleError(f"field '{field}' missing", **where)
            value = entry[field]
            if not isinstance(value, str):
                raise PrincipleError(
                    f"field '{field}' must be a string, got {type_name(value)}", **where
                )
            if not value.strip():
                raise PrincipleError(f"field '{field}' is empty", **where)
            values.append(value)
        principle = Principle(*values)
        if principle.dimension in first_seen:
            raise PrincipleError(
                f"field 'dimension': {principle.dimension!r} duplicates entry "
                f"{first_seen[principle.dimension]}",
                **where,
            )
        first_seen[principle.dimension] = index
        principles.append(principle)
    return principles


def type_name(value: object) -> str:
    """JSON's name for a decoded value's type, for error messages."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    names |= {int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)
