"""The two gathers: a run's responses (every prompt once) and judgments (prompt, then principle)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from salmon_wf.errors import RecordError
from salmon_wf.stages.gather import gather_judgments, gather_responses


def write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    return write(tmp_path / "prompts.jsonl", [{"id": i} for i in ("c", "a", "b")])


@pytest.fixture
def principles(tmp_path: Path) -> Path:
    entries = [{"dimension": d, "definition": "x", "negative_definition": "y"} for d in "YX"]
    path = tmp_path / "principles.json"
    path.write_text(json.dumps(entries))
    return path


def test_responses_follow_prompt_order_and_cover_every_prompt(
    prompts: Path, tmp_path: Path
) -> None:
    one = write(tmp_path / "s0.jsonl", [{"id": "b", "n": 1}, {"id": "c", "n": 2}])
    two = write(tmp_path / "s1.jsonl", [{"id": "a", "n": 3}])
    assert [r["id"] for r in gather_responses(prompts, [one, two])] == ["c", "a", "b"]
    with pytest.raises(
        RecordError,
        match=rf"^{prompts}: 1 prompt\(s\) have no response in 1 shard\(s\), e.g. \['a'\]$",
    ):
        gather_responses(prompts, [one])
    again = write(tmp_path / "s2.jsonl", [{"id": "a"}])
    with pytest.raises(RecordError, match=f"^{again}: duplicate record 'a' \\(also in {two}\\)$"):
        gather_responses(prompts, [one, two, again])


SCORED = {"relative_score": [1.5, 0.5], "preference": 1}


def test_judgments_follow_prompt_then_principle_order(
    prompts: Path, principles: Path, tmp_path: Path
) -> None:
    shard = write(
        tmp_path / "j0.jsonl",
        [
            {"id": "b", "dimension": "X", **SCORED},
            {"id": "c", "dimension": "X", **SCORED},
            {"id": "c", "dimension": "Y", **SCORED},
        ],
    )
    gathered = gather_judgments(prompts, [shard], principles)  # "a" skipped: no error
    assert [(r["id"], r["dimension"]) for r in gathered] == [("c", "Y"), ("c", "X"), ("b", "X")]
    bad = write(tmp_path / "j1.jsonl", [{"id": "a", "dimension": "Z", **SCORED}])
    with pytest.raises(RecordError, match=f"^{bad}: dimension 'Z' not in {principles}$"):
        gather_judgments(prompts, [shard, bad], principles)
    twice = write(tmp_path / "j2.jsonl", [{"id": "b", "dimension": "X", **SCORED}])
    with pytest.raises(RecordError, match=rf"^{twice}: duplicate record \('b', 'X'\)"):
        gather_judgments(prompts, [shard, twice], principles)
    unknown = write(tmp_path / "j3.jsonl", [{"id": "zz", "dimension": "X", **SCORED}])
    with pytest.raises(RecordError, match=f"^{unknown}: id 'zz' is not in {prompts}$"):
        gather_judgments(prompts, [unknown], principles)
