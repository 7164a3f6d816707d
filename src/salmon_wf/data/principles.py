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
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise PrincipleError(
            f"{path}: invalid JSON at line {exc.lineno} column {exc.colno} ({exc.msg})"
        ) from exc
    if not isinstance(data, list):
        raise PrincipleError(f"{path}: expected a JSON list of principles, got {type_name(data)}")
    if not data:
        raise PrincipleError(f"{path}: the principle list is empty")
    principles: list[Principle] = []
    first_seen: dict[str, int] = {}
    for index, entry in enumerate(data):
        where = f"{path}: entry {index}"
        if not isinstance(entry, dict):
            raise PrincipleError(f"{where}: expected an object, got {type_name(entry)}")
        values = []
        for field in FIELDS:
            if field not in entry:
                raise PrincipleError(f"{where}: field '{field}' missing")
            value = entry[field]
            if not isinstance(value, str):
                raise PrincipleError(
                    f"{where}: field '{field}' must be a string, got {type_name(value)}"
                )
            if not value.strip():
                raise PrincipleError(f"{where}: field '{field}' is empty")
            values.append(value)
        principle = Principle(*values)
        if principle.dimension in first_seen:
            raise PrincipleError(
                f"{where}: field 'dimension': {principle.dimension!r} duplicates entry "
                f"{first_seen[principle.dimension]}"
            )
        first_seen[principle.dimension] = index
        principles.append(principle)
    return principles


def type_name(value: object) -> str:
    """JSON's name for a decoded value's type, for error messages."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    names |= {int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)
