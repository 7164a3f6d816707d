"""Principle files: SALMON's own and ours load; malformed files fail naming file, entry, field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from salmon_wf.data.principles import Principle, load_principles
from salmon_wf.errors import PrincipleError
from salmon_wf.stages.aggregate import DEFAULT_EXCLUDED

REPO = Path(__file__).resolve().parents[1]
OURS = REPO / "src/salmon_wf/resources/principles.json"
SALMON = REPO.parent / "shared/reference/salmon_principle_collection_rm.json"


def write(tmp_path: Path, value: object) -> Path:
    path = tmp_path / "principles.json"
    path.write_text(json.dumps(value), encoding="utf-8")
    return path


def entry(dimension: str = "Concise", **changes: object) -> dict[str, object]:
    base = {"dimension": dimension, "definition": "Be brief.", "negative_definition": "Ramble."}
    return base | changes


@pytest.mark.skipif(not SALMON.exists(), reason="/work/shared reference files are absent")
def test_salmon_principle_file_loads_unchanged() -> None:
    raw = json.loads(SALMON.read_text(encoding="utf-8"))
    principles = load_principles(SALMON)
    assert [vars(p) for p in principles] == raw
    assert len(principles) == 11
    assert set(DEFAULT_EXCLUDED) <= {p.dimension for p in principles}


def test_our_default_principles_are_valid_and_our_own() -> None:
    principles = load_principles(OURS)
    assert len(principles) == 11
    names = [p.dimension for p in principles]
    assert set(DEFAULT_EXCLUDED) <= set(names)
    assert len(names) - len(DEFAULT_EXCLUDED) == 8  # SALMON's default: 8 used dimensions
    if SALMON.exists():  # our wording, not a copy of the reference collection
        theirs = json.loads(SALMON.read_text(encoding="utf-8"))
        texts = {e[f] for e in theirs for f in ("definition", "negative_definition")}
        assert not texts & {t for p in principles for t in (p.definition, p.negative_definition)}


def test_principle_is_frozen_and_order_is_kept(tmp_path: Path) -> None:
    path = write(tmp_path, [entry("B"), entry("A"), entry("C", extra="ignored")])
    principles = load_principles(path)
    assert [p.dimension for p in principles] == ["B", "A", "C"]
    assert principles[0] == Principle("B", "Be brief.", "Ramble.")
    with pytest.raises(AttributeError):
        principles[0].dimension = "X"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"dimension": "x"}, "expected a JSON list of principles, got an object"),
        ([], "the principle list is empty"),
        ([entry(), "Concise"], "entry 1: expected an object, got a string"),
        ([entry(definition=None)], "entry 0: field 'definition' must be a string, got null"),
        ([{"dimension": "A", "definition": "d"}], "entry 0: field 'negative_definition' missing"),
        (
            [entry(), entry("B", negative_definition="  ")],
            "entry 1: field 'negative_definition' is",
        ),
        ([entry(dimension=3)], "entry 0: field 'dimension' must be a string, got a number"),
        (
            [entry("A"), entry("B"), entry("A")],
            "entry 2: field 'dimension': 'A' duplicates entry 0",
        ),
    ],
)
def test_bad_principle_files_name_file_entry_and_field(
    tmp_path: Path, value: object, message: str
) -> None:
    path = write(tmp_path, value)
    with pytest.raises(PrincipleError) as caught:
        load_principles(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)
    assert caught.value.file == str(path) and caught.value.line is None


def test_invalid_json_names_the_position(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('[\n  {"dimension": "A",\n', encoding="utf-8")
    with pytest.raises(
        PrincipleError, match=r"broken\.json line 3: invalid JSON at column 1"
    ) as caught:
        load_principles(path)
    assert (caught.value.file, caught.value.line, caught.value.field) == (str(path), 3, None)
