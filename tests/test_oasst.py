"""OASST1 readers: the demo data converted to every layout reads back as the same messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from oasst_files import DEMO, demo_rows, nest, write_lines, write_parquet, write_trees

from salmon_wf.data.oasst import Message, detect_layout, read_messages
from salmon_wf.errors import OasstFormatError
from salmon_wf.stages.clean import clean_prompts


@pytest.fixture(scope="module")
def layouts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    """Each case: (path, the layout detect_layout must report)."""
    tmp = tmp_path_factory.mktemp("layouts")
    rows = demo_rows()
    folder = tmp / "parquet_dir"
    folder.mkdir()
    write_parquet(folder / "train.parquet", rows[:60])
    write_parquet(folder / "validation.parquet", rows[60:])
    return {
        "messages": (DEMO, "messages"),
        "messages_gz": (write_lines(tmp / "messages.jsonl.gz", rows[::-1]), "messages"),
        "gz_any_name": (write_lines(tmp / "a.gz", rows).rename(tmp / "plain.jsonl"), "messages"),
        "parquet": (write_parquet(tmp / "train.parquet", rows), "parquet"),
        "parquet_dir": (folder, "parquet"),
        "trees": (write_trees(tmp / "trees.jsonl", rows), "trees"),
        "trees_gz": (write_trees(tmp / "trees.jsonl.gz", rows), "trees"),
        "nested": (write_lines(tmp / "nested.jsonl", nest(rows)), "nested"),
    }


def by_id(messages: list[Message]) -> list[Message]:
    return sorted(messages, key=lambda m: m.message_id)


def test_demo_reads_every_field() -> None:
    rows = {r["message_id"]: r for r in demo_rows()}
    messages = list(read_messages(DEMO))
    assert len(messages) == len(rows) == 94
    for m in messages:
        row = rows[m.message_id]
        assert (m.parent_id, m.text, m.role, m.lang) == (
            row["parent_id"],
            row["text"],
            row["role"],
            row["lang"],
        )
        assert (m.deleted, m.review_result, m.message_tree_id, m.rank) == (
            row["deleted"],
            row["review_result"],
            row["message_tree_id"],
            row["rank"],
        )
    assert messages[4].source == f"{DEMO} line 5"


@pytest.mark.parametrize(
    "case",
    ["messages_gz", "gz_any_name", "parquet", "parquet_dir", "trees", "trees_gz", "nested"],
)
def test_every_layout_gives_the_same_messages_and_prompts(
    layouts: dict[str, tuple[Path, str]], case: str
) -> None:
    path, layout = layouts[case]
    assert detect_layout(path) == layout
    if "gz" in case:
        assert path.read_bytes()[:2] == b"\x1f\x8b"
    reference = by_id(list(read_messages(DEMO)))
    messages = by_id(list(read_messages(path)))
    assert messages == reference
    assert clean_prompts(messages) == clean_prompts(reference)
    assert list(read_messages(path, layout)) == list(read_messages(path))  # explicit override


def test_trees_infer_parent_and_tree_ids(layouts: dict[str, tuple[Path, str]]) -> None:
    path, _ = layouts["trees"]
    trees = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    first = next(t for t in trees if len(t["prompt"]["replies"]) > 1)
    assert "parent_id" not in first["prompt"] and "message_tree_id" not in first["prompt"]
    messages = {m.message_id: m for m in read_messages(path)}
    replies = first["prompt"]["replies"]
    assert len(replies) > 1 and "parent_id" not in replies[1]
    for reply in replies:
        assert "message_tree_id" not in reply
        assert messages[reply["message_id"]].parent_id == first["prompt"]["message_id"]
        assert messages[reply["message_id"]].message_tree_id == first["message_tree_id"]


def test_pandas_parquet_with_nan_ranks(tmp_path: Path) -> None:
    import pandas as pd

    rows = demo_rows()
    frame = pd.DataFrame(rows)[["message_id", "parent_id", "text", "role", "lang", "rank"]]
    frame["rank"] = frame["rank"].astype(float)  # what pandas makes of an int column with nulls
    frame.to_parquet(tmp_path / "f.parquet")
    messages = {m.message_id: m for m in read_messages(tmp_path / "f.parquet")}
    assert {k: m.rank for k, m in messages.items()} == {r["message_id"]: r["rank"] for r in rows}


def bad_line(tmp_path: Path, line: str, name: str = "data.jsonl") -> Path:
    good = DEMO.read_text(encoding="utf-8").splitlines()[:3]
    path = tmp_path / name
    path.write_text("\n".join([*good, "", line]) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"message_id": "x", "parent_id": null, "role": "prompter"}', "field 'text' missing"),
        ('{"message_id": "x", "text": "hi", "role": "prompter"}', "field 'parent_id' missing"),
        ('{"message_id": "x", "parent_id": null, "text": 5, "role": "prompter"}', "'text' must"),
        ('{"message_id": "x", "parent_id": null, "text": "a", "role": "bot"}', "field 'role'"),
        (
            '{"message_id": "x", "parent_id": null, "text": "a", "role": "prompter", "deleted": 0}',
            "field 'deleted' must be bool",
        ),
        ('{"message_id": "x", "parent_id": null, "text": "a", ', "line 5: invalid JSON"),
        ("[1, 2]", "line 5: expected a JSON object"),
    ],
)
def test_malformed_line_names_file_line_and_field(tmp_path: Path, line: str, expected: str) -> None:
    path = bad_line(tmp_path, line)
    with pytest.raises(OasstFormatError, match="line 5") as info:
        list(read_messages(path))
    assert str(info.value).startswith(f"{path} line 5")
    assert expected in str(info.value)


def test_nested_error_names_the_node(tmp_path: Path) -> None:
    trees = nest(demo_rows())
    del trees[1]["replies"][0]["text"]
    path = write_lines(tmp_path / "trees.jsonl", [{"prompt": t} for t in trees])
    with pytest.raises(OasstFormatError) as info:
        list(read_messages(path))
    assert str(info.value) == f"{path} line 2 (prompt.replies[0]): field 'text' missing"


def test_nested_parent_mismatch_and_tree_without_prompt(tmp_path: Path) -> None:
    trees = nest(demo_rows())
    trees[0]["replies"][0]["parent_id"] = "someone-else"
    path = write_lines(tmp_path / "nested.jsonl", trees)
    with pytest.raises(OasstFormatError, match=r"line 1 \(replies\[0\]\): field 'parent_id'"):
        list(read_messages(path))
    with pytest.raises(OasstFormatError, match=r"line 1: field 'prompt' missing"):
        list(read_messages(DEMO, "trees"))


def test_parquet_error_names_the_row(tmp_path: Path) -> None:
    rows = demo_rows()[:5]
    rows[3] = {**rows[3], "text": None}
    path = write_parquet(tmp_path / "bad.parquet", rows)
    with pytest.raises(OasstFormatError, match=r"bad\.parquet row 3: field 'text' missing"):
        list(read_messages(path))


def test_detection_errors(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("\n\n")
    (tmp_path / "other.jsonl").write_text('{"question": "hi"}\n')
    (tmp_path / "nothing").mkdir()
    with pytest.raises(OasstFormatError, match="empty file"):
        detect_layout(tmp_path / "empty.jsonl")
    with pytest.raises(OasstFormatError, match=r"other\.jsonl line 1: cannot detect layout"):
        detect_layout(tmp_path / "other.jsonl")
    with pytest.raises(OasstFormatError, match=r"no \*\.parquet files"):
        list(read_messages(tmp_path / "nothing"))
    with pytest.raises(OasstFormatError, match="no such file"):
        detect_layout(tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="unknown OASST1 layout"):
        read_messages(DEMO, "csv")
