"""Broken input ends a command with one line naming file, line or record, and field (issue 14).

Each case below is a broken input a user can hand a reader, with the exact line the command ends
with (or the counted drop it is). Outputs already there are left in place. A representative set
runs the installed command (a subprocess) to prove the one-line format on stderr; the rest call
the command in-process (cli.run_command) and render the line as cli.main would.
"""

from __future__ import annotations

import gzip
import json
import math
import pickle
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from oasst_files import DEMO, demo_rows, nest, write_lines, write_parquet

from salmon_wf import cli
from salmon_wf.config import validate
from salmon_wf.errors import SalmonError

SALMON_WF = [sys.executable, "-m", "salmon_wf.cli"]
RESOURCES = Path(__file__).parents[1] / "src" / "salmon_wf" / "resources"
PREVIOUS = '{"id": "kept from an earlier run"}\n'


def command_line(argv: list[str]) -> str | None:
    """The error line `salmon-wf` would end `argv` with, or None when it succeeds.

    Only a SalmonError (or a missing input) is a user error: anything else fails the test.
    """
    try:
        cli.run_command(argv)
    except (SalmonError, *cli.FILE_ERRORS) as exc:
        return cli.error_line(argv[0], exc)
    return None


def subprocess_line(argv: list[str]) -> str:
    """stderr of the installed command, which must fail with exit 1 and print exactly one line."""
    done = subprocess.run([*SALMON_WF, *argv], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, (done.returncode, done.stderr[-3000:])
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr[-3000:]
    return lines[0]


# --- OASST1 -------------------------------------------------------------------------------


def clean_argv(tmp: Path, path: Path, *flags: str) -> list[str]:
    out = tmp / "out"
    out.mkdir(exist_ok=True)
    argv = ["clean-prompts", "--input", str(path), "--output", str(out / "prompts.jsonl")]
    return [*argv, "--summary", str(out / "summary.json"), "--split", "all", *flags]


def clean(tmp: Path, path: Path, *flags: str) -> tuple[str | None, dict[str, Any] | None]:
    """(error line, None) or (None, summary); a failed run leaves the earlier prompts alone."""
    argv = clean_argv(tmp, path, *flags)
    prompts = tmp / "out" / "prompts.jsonl"
    prompts.write_text(PREVIOUS, encoding="utf-8")
    line = command_line(argv)
    if line is not None:
        assert prompts.read_text(encoding="utf-8") == PREVIOUS  # nothing lost
        assert not (tmp / "out" / "summary.json").exists()
        return line, None
    return None, json.loads((tmp / "out" / "summary.json").read_text(encoding="utf-8"))


def rows() -> list[dict[str, Any]]:
    return demo_rows()


def with_row(index: int, **changes: Any) -> list[dict[str, Any]]:
    """The demo rows with row `index` changed (a None value removes the key)."""
    out = rows()
    row = dict(out[index])
    for key, value in changes.items():
        if value is None:
            row.pop(key, None)
        else:
            row[key] = value
    out[index] = row
    return out


def raw_lines(path: Path, lines: list[bytes]) -> Path:
    data = b"".join(line + b"\n" for line in lines)
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def demo_bytes() -> list[bytes]:
    return DEMO.read_bytes().splitlines()


def bad_utf8(path: Path) -> Path:
    lines = demo_bytes()
    lines[2] = lines[2].replace(b'"text": "', b'"text": "\xff', 1)
    return raw_lines(path, lines)


def truncated_gzip(path: Path) -> Path:
    data = gzip.compress(DEMO.read_bytes())
    path.write_bytes(data[: len(data) // 2])
    return path


def truncated_parquet(path: Path) -> Path:
    write_parquet(path, rows())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def cycle_rows() -> list[dict[str, Any]]:
    """Two messages whose parents are each other: no root reaches them."""
    base = {k: v for k, v in rows()[1].items() if k != "message_tree_id"}
    first = {**base, "message_id": "loop-a", "parent_id": "loop-b", "role": "prompter"}
    return [first, {**base, "message_id": "loop-b", "parent_id": "loop-a"}]


def trees_with(tmp: Path, change: Callable[[list[dict[str, Any]]], None]) -> Path:
    trees = [{"message_tree_id": t["message_id"], "prompt": t} for t in nest(rows())]
    change(trees)
    return write_lines(tmp / "trees.jsonl", trees)


def first_reply(trees: list[dict[str, Any]]) -> dict[str, Any]:
    return next(t for t in trees if t["prompt"]["replies"])["prompt"]["replies"][0]


def tree_line(trees_path: Path) -> int:
    """The line of the first tree with a reply (where first_reply sits)."""
    for number, line in enumerate(trees_path.read_text(encoding="utf-8").splitlines(), 1):
        if json.loads(line)["prompt"]["replies"]:
            return number
    raise AssertionError("no tree with a reply")


ID1 = demo_rows()[1]["message_id"]
# (case, build(tmp) -> (input, extra flags), the error line's text after "salmon-wf
# clean-prompts: error: " with {path} for the input)
OASST_ERRORS: list[tuple[str, Callable[[Path], tuple[Path, list[str]]], str]] = [
    (
        "jsonl truncated mid-record",
        lambda t: (_cut(t / "m.jsonl"), []),
        "{path} line 6: invalid JSON (Unterminated string starting at)",  # a copy cut short
    ),
    (
        "jsonl.gz truncated",
        lambda t: (truncated_gzip(t / "m.jsonl.gz"), []),
        "{path} line {n}: unreadable after line {m} (Compressed file ended before the "
        "end-of-stream marker was reached)",
    ),
    (
        "parquet truncated",
        lambda t: (truncated_parquet(t / "m.parquet"), []),
        "{path}: not a readable parquet file (Parquet magic bytes not found in footer. Either "
        "the file is corrupted or this is not a parquet file.)",
    ),
    (
        "jsonl invalid UTF-8",
        lambda t: (bad_utf8(t / "m.jsonl"), []),
        "{path} line 3: invalid UTF-8 at byte 213 of the line (invalid start byte)",
    ),
    (
        "jsonl.gz invalid UTF-8",
        lambda t: (bad_utf8(t / "m.jsonl.gz"), []),
        "{path} line 3: invalid UTF-8 at byte 213 of the line (invalid start byte)",
    ),
    (
        "jsonl invalid UTF-8 on the first line (layout detection)",
        lambda t: (raw_lines(t / "m.jsonl", [b"\xfe\xff{}"]), []),
        "{path} line 1: invalid UTF-8 at byte 0 of the line (invalid start byte)",
    ),
    (
        "jsonl missing text",
        lambda t: (write_lines(t / "m.jsonl", with_row(3, text=None)), []),
        "{path} line 4: field 'text' missing",
    ),
    (
        "jsonl missing parent_id",
        lambda t: (write_lines(t / "m.jsonl", with_row(3, parent_id=None)), []),
        "{path} line 4: field 'parent_id' missing (null marks a root)",
    ),
    (
        "jsonl text is a number",
        lambda t: (write_lines(t / "m.jsonl", with_row(3, text=7)), []),
        "{path} line 4: field 'text' must be a string",
    ),
    (
        "jsonl deleted is a string",
        lambda t: (write_lines(t / "m.jsonl", with_row(3, deleted="no")), []),
        "{path} line 4: field 'deleted' must be bool",
    ),
    (
        "jsonl rank 1.5",
        lambda t: (write_lines(t / "m.jsonl", with_row(1, rank=1.5)), []),
        "{path} line 2: field 'rank' must be an integer or null, got 1.5",
    ),
    (
        "jsonl rank Infinity",
        lambda t: (
            raw_lines(
                t / "m.jsonl",
                [
                    b'{"message_id": "x", "parent_id": null, '
                    b'"text": "t", "role": "prompter", '
                    b'"rank": Infinity}'
                ],
            ),
            [],
        ),
        "{path} line 1: field 'rank' must be an integer or null, got inf",
    ),
    (
        "jsonl lone surrogate in text",
        lambda t: (
            raw_lines(
                t / "m.jsonl",
                [
                    b'{"message_id": "x", "parent_id": null, '
                    b'"text": "a\\ud800b", "role": "prompter"}'
                ],
            ),
            [],
        ),
        "{path} line 1: field 'text' holds a lone surrogate at character 1",
    ),
    (
        "jsonl unknown role",
        lambda t: (write_lines(t / "m.jsonl", with_row(2, role="system")), []),
        "{path} line 3: field 'role' is 'system', not one of ('prompter', 'assistant')",
    ),
    (
        "jsonl duplicate id",
        lambda t: (write_lines(t / "m.jsonl", [*rows(), rows()[1]]), []),
        "{path} line 95: message_id " + repr(ID1) + " repeats (first at {path} line 2)",
    ),
    (
        "jsonl empty file",
        lambda t: (raw_lines(t / "m.jsonl", []), []),
        "{path}: empty file, no records",
    ),
    (
        "jsonl blank lines only, layout given",
        lambda t: (raw_lines(t / "m.jsonl", [b"", b"  "]), ["--format", "messages"]),
        "{path}: no prompts left (0 roots (0 messages); dropped: none; replies no root "
        "reaches: none)",
    ),
    (
        "jsonl.gz empty",
        lambda t: (raw_lines(t / "m.jsonl.gz", []), []),
        "{path}: empty file, no records",
    ),
    (
        "a JSON array on one line",
        lambda t: (t.joinpath("m.json").write_text(json.dumps(rows())) and t / "m.json", []),
        "{path} line 1: expected a JSON object, got a list (JSON lines hold one object per "
        "line, not a JSON array)",
    ),
    (
        "a pretty-printed JSON array",
        lambda t: (
            t.joinpath("m.json").write_text(json.dumps(rows(), indent=1)) and t / "m.json",
            [],
        ),
        "{path} line 1: invalid JSON (Expecting value)",
    ),
    (
        "a null record",
        lambda t: (raw_lines(t / "m.jsonl", [*demo_bytes()[:4], b"null"]), []),
        "{path} line 5: expected a JSON object, got null",
    ),
    (
        "a null reply in a tree",
        lambda t: (trees_with(t, lambda trees: trees[0]["prompt"]["replies"].append(None)), []),
        "{path} line 1 (prompt.replies[{r}]): expected a message object",
    ),
    (
        "a JSON line nested too deeply",
        lambda t: (raw_lines(t / "m.jsonl", [b'{"message_id": ' + b"[" * 100000]), []),
        "{path} line 1: invalid JSON (nested too deeply)",
    ),
    (
        "trees unknown role",
        lambda t: (trees_with(t, lambda trees: first_reply(trees).update(role="bot")), []),
        "{path} line {tree} (prompt.replies[0]): field 'role' is 'bot', not one of "
        "('prompter', 'assistant')",
    ),
    (
        "trees missing message_id",
        lambda t: (trees_with(t, lambda trees: first_reply(trees).pop("message_id")), []),
        "{path} line {tree} (prompt.replies[0]): field 'message_id' missing",
    ),
    (
        "trees replies not a list",
        lambda t: (trees_with(t, lambda trees: trees[0]["prompt"].update(replies="none")), []),
        "{path} line 1 (prompt): field 'replies' must be a list",
    ),
    (
        "trees duplicate id",
        lambda t: (trees_with(t, lambda trees: trees.append(trees[0])), []),
        "{path} line {last} (prompt): message_id {root!r} repeats (first at {path} line 1 "
        "(prompt))",
    ),
    (
        "trees invalid UTF-8",
        lambda t: (raw_lines(t / "t.jsonl", [b'{"prompt": {"text": "\xc3"}}']), []),
        "{path} line 1: invalid UTF-8 at byte 21 of the line (invalid continuation byte)",
    ),
    (
        "only a cycle: nothing left",
        lambda t: (write_lines(t / "m.jsonl", cycle_rows()), []),
        "{path}: no prompts left (0 roots (2 messages); dropped: none; replies no root "
        "reaches: unreachable 2)",
    ),
    (
        "only orphans: nothing left",
        lambda t: (write_lines(t / "m.jsonl", [r for r in rows() if r["parent_id"]]), []),
        "{path}: no prompts left (0 roots (50 messages); dropped: none; replies no root "
        "reaches: orphan 50)",
    ),
    (
        "parquet missing column text",
        lambda t: (write_parquet(t / "m.parquet", [{**r, "text": None} for r in rows()]), []),
        "{path} row 0: field 'text' missing",
    ),
    (
        "parquet without parent_id column",
        lambda t: (
            write_parquet(
                t / "m.parquet", [{k: v for k, v in r.items() if k != "parent_id"} for r in rows()]
            ),
            [],
        ),
        "{path} row 0: field 'parent_id' missing (null marks a root)",
    ),
    (
        "parquet text column of numbers",
        lambda t: (write_parquet(t / "m.parquet", [{**r, "text": 1} for r in rows()]), []),
        "{path} row 0: field 'text' must be a string",
    ),
    (
        "parquet deleted as float 0.5",
        lambda t: (write_parquet(t / "m.parquet", [{**r, "deleted": 0.5} for r in rows()]), []),
        "{path} row 0: field 'deleted' must be bool",
    ),
    (
        "parquet duplicate id",
        lambda t: (write_parquet(t / "m.parquet", [*rows(), rows()[1]]), []),
        "{path} row 94: message_id " + repr(ID1) + " repeats (first at {path} row 1)",
    ),
    (
        "parquet with no rows",
        lambda t: (
            write_parquet(t / "m.parquet", rows()[:0] or [rows()[0]])
            and _empty_parquet(t / "m.parquet"),
            [],
        ),
        "{path}: no prompts left (0 roots (0 messages); dropped: none; replies no root "
        "reaches: none)",
    ),
    (
        "HF folder without parquet files",
        lambda t: (_mkdir(t / "hf"), []),
        "{path}: folder holds no *.parquet files",
    ),
    (
        "HF folder with a bad row",
        lambda t: (_hf_folder(t, with_row(70, role="system")), []),
        "{path}/validation-00000-of-00001.parquet row 10: field 'role' is 'system', not one "
        "of ('prompter', 'assistant')",
    ),
    (
        "HF folder without the requested split",
        lambda t: (_hf_folder(t, rows(), splits=("validation",)), ["--split", "train"]),
        "{path}: no parquet file of split 'train' (files: validation-00000-of-00001.parquet "
        "(validation))",
    ),
    (
        "a CSV file",
        lambda t: (t.joinpath("m.csv").write_text("message_id,text\nx,hi\n") and t / "m.csv", []),
        "{path} line 1: invalid JSON (Expecting value)",
    ),
    (
        "JSON lines of another dataset",
        lambda t: (t.joinpath("m.jsonl").write_text('{"question": "hi"}\n') and t / "m.jsonl", []),
        "{path} line 1: cannot detect layout: no field 'prompt' (trees) or 'message_id' (messages)",
    ),
    (
        "a missing input",
        lambda t: (t / "nowhere.jsonl", []),
        "{path}: no such file or folder",
    ),
]


def _cut(path: Path) -> Path:
    """The demo file cut inside the text of its sixth line (a copy that stopped)."""
    data = DEMO.read_bytes()
    sixth = data.index(b'"text": "', sum(len(x) + 1 for x in demo_bytes()[:5])) + 12
    path.write_bytes(data[:sixth])
    return path


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def _empty_parquet(path: Path) -> Path:
    table = pq.read_table(path)
    pq.write_table(table.slice(0, 0), path)
    return path


def _hf_folder(tmp: Path, all_rows: list[dict[str, Any]], splits: tuple[str, ...] = ()) -> Path:
    """An HF dataset folder: data/train-....parquet (rows[:60]) and validation (the rest)."""
    folder = tmp / "hf"
    (folder / "data").mkdir(parents=True)
    parts = {"train": all_rows[:60], "validation": all_rows[60:]}
    for split in splits or parts:
        write_parquet(folder / "data" / f"{split}-00000-of-00001.parquet", parts[split])
    return folder


def _expected(template: str, tmp: Path, path: Path) -> str:
    values: dict[str, Any] = {"path": path}
    if "{tree}" in template or "{last}" in template or "{r}" in template:
        trees = path.read_text(encoding="utf-8").splitlines()
        values["tree"] = tree_line(path)
        values["last"] = len(trees)
        values["root"] = json.loads(trees[0])["prompt"]["message_id"]
        values["r"] = len(json.loads(trees[0])["prompt"]["replies"]) - 1
    if path.name == "hf" and "row 10" in template:
        values["path"] = path / "data"
    return template.format(**values)


@pytest.mark.parametrize(("case", "build", "what"), OASST_ERRORS, ids=[c[0] for c in OASST_ERRORS])
def test_broken_oasst_ends_in_one_line(
    tmp_path: Path, case: str, build: Callable, what: str
) -> None:
    path, flags = build(tmp_path)
    line, _ = clean(tmp_path, path, *flags)
    assert line is not None, case
    head = "salmon-wf clean-prompts: error: "
    assert line.startswith(head) and "\n" not in line
    if "{n}" in what:  # a truncated gzip: the line after the last whole one
        m = int(line.split("unreadable after line ")[1].split(" ")[0])
        assert line == head + what.format(path=path, n=m + 1, m=m)
        assert 0 < m < 94
    else:
        assert line == head + _expected(what, tmp_path, path)


SUBPROCESS_OASST = [
    "jsonl.gz invalid UTF-8",
    "jsonl.gz truncated",
    "only a cycle: nothing left",
    "a JSON array on one line",
    "parquet without parent_id column",
    "HF folder with a bad row",
]


@pytest.mark.parametrize("case", SUBPROCESS_OASST)
def test_the_installed_command_prints_the_same_one_line(tmp_path: Path, case: str) -> None:
    _, build, _ = next(c for c in OASST_ERRORS if c[0] == case)
    path, flags = build(tmp_path)
    expected, _ = clean(tmp_path, path, *flags)
    assert subprocess_line(clean_argv(tmp_path, path, *flags)) == expected


def demo_summary(tmp: Path) -> dict[str, Any]:
    error, summary = clean(tmp, DEMO)
    assert error is None and summary is not None
    return summary


def prompts_of(tmp: Path) -> list[dict[str, Any]]:
    text = (tmp / "out" / "prompts.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


def accounted(summary: dict[str, Any]) -> None:
    """Every message is a root, a reply a root reaches, or a counted drop; every root a
    prompt or a counted drop."""
    lost = sum(summary["messages_dropped"].values())
    assert summary["n_messages"] == summary["n_roots"] + summary["n_replies"] + lost
    assert summary["n_roots"] == summary["n_prompts"] + sum(summary["dropped"].values())


def test_orphans_and_a_cycle_are_counted_drops(tmp_path: Path) -> None:
    reference = demo_summary(tmp_path)
    expected = prompts_of(tmp_path)
    orphans = [
        {**r, "message_id": f"orphan-{i}", "parent_id": "gone"} for i, r in enumerate(rows()[1:4])
    ]
    orphans.append({**rows()[1], "message_id": "orphan-child", "parent_id": "orphan-0"})
    path = write_lines(tmp_path / "m.jsonl", [*rows(), *orphans, *cycle_rows()])
    error, summary = clean(tmp_path, path)
    assert error is None and summary is not None
    assert summary["messages_dropped"] == {"orphan": 4, "unreachable": 2}
    assert summary["n_messages"] == reference["n_messages"] + 6
    assert summary["n_replies"] == reference["n_replies"] == 50
    assert summary["dropped"] == reference["dropped"]
    assert prompts_of(tmp_path) == expected
    accounted(summary)
    accounted(reference)


def test_a_huge_root_text_is_a_counted_drop(tmp_path: Path) -> None:
    reference = demo_summary(tmp_path)
    kept = {p["message_id"] for p in prompts_of(tmp_path)}
    index = next(i for i, r in enumerate(rows()) if r["message_id"] in kept)
    huge = with_row(index, text="long words " * 400_000)  # 4.4 MB in one line
    error, summary = clean(tmp_path, write_lines(tmp_path / "m.jsonl", huge))
    assert error is None and summary is not None
    assert summary["dropped"]["too_long"] == reference["dropped"]["too_long"] + 1
    assert summary["n_prompts"] == reference["n_prompts"] - 1
    accounted(summary)


def test_parquet_with_extra_columns_gives_the_same_prompts(tmp_path: Path) -> None:
    demo_summary(tmp_path)
    expected = prompts_of(tmp_path)
    extra = [{**r, "my_note": "x", "score": 1.5} for r in rows()]
    error, _ = clean(tmp_path, write_parquet(tmp_path / "m.parquet", extra))
    assert error is None and prompts_of(tmp_path) == expected


def test_a_pandas_parquet_gives_the_arrow_parquets_prompts(tmp_path: Path) -> None:
    """pandas stores a nullable boolean column as float (1.0, 0.0, NaN): not bad input."""
    import pandas as pd

    data = rows()
    for i, row in enumerate(data):
        if i % 5 == 1 and row["review_result"]:
            row["review_result"] = None  # as in OASST1 (unreviewed messages)
    write_lines(tmp_path / "m.jsonl", data)
    frame = pd.read_json(tmp_path / "m.jsonl", lines=True)
    for column in ("review_result", "deleted", "synthetic"):
        frame[column] = frame[column].astype(float)  # what pandas makes of bools with nulls
    frame.to_parquet(tmp_path / "pandas.parquet")
    kinds = pq.read_schema(tmp_path / "pandas.parquet")
    assert kinds.field("review_result").type == pa.float64()
    values = pq.read_table(tmp_path / "pandas.parquet")["review_result"].to_pylist()
    assert {v for v in values if v is not None} == {0.0, 1.0} and values[1] is None  # NaN
    error, arrow = clean(tmp_path, write_parquet(tmp_path / "arrow.parquet", data))
    assert error is None and arrow is not None
    expected = prompts_of(tmp_path)
    error, summary = clean(tmp_path, tmp_path / "pandas.parquet")
    assert error is None and summary is not None
    assert prompts_of(tmp_path) == expected
    assert summary["dropped"] == arrow["dropped"] and summary["dropped"]["review_failed"] > 0


def test_a_layout_or_split_no_reader_knows_is_one_line() -> None:
    from salmon_wf.data.oasst import choose_split, read_messages

    with pytest.raises(SalmonError) as info:
        read_messages(DEMO, "csv")
    assert str(info.value) == (
        "--format: unknown OASST1 layout 'csv'; expected auto or one of ('parquet', "
        "'messages', 'nested', 'trees')"
    )
    with pytest.raises(SalmonError) as info:
        choose_split(DEMO, "messages", "test")
    assert str(info.value) == "--split: unknown split 'test'; expected all or one of " + (
        "('train', 'validation')"
    )


# --- principle files, templates, JSONL shards and judgments, settings ---------------------

ENTRY = {"dimension": "Honest", "definition": "tells the truth", "negative_definition": "lies"}


def write_file(path: Path, data: str | bytes) -> Path:
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data, encoding="utf-8")
    return path


def load_principles_line(path: Path) -> str | None:
    from salmon_wf.data.principles import load_principles

    try:
        load_principles(path)
    except SalmonError as exc:
        return cli.error_line("judge", exc)
    return None


# (case, the file's content, the line's text after "salmon-wf judge: error: {path}")
PRINCIPLE_ERRORS: list[tuple[str, str | bytes, str]] = [
    ("not JSON", '[{"dimension": ', " line 1: invalid JSON at column 16 (Expecting value)"),
    ("empty file", "", " line 1: invalid JSON at column 1 (Expecting value)"),
    ("empty list", "[]", ": the principle list is empty"),
    (
        "an object, not a list",
        json.dumps(ENTRY),
        ": expected a JSON list of principles, got an object",
    ),
    ("entry not an object", '["Honest"]', ": entry 0: expected an object, got a string"),
    (
        "missing key",
        json.dumps([{k: v for k, v in ENTRY.items() if k != "negative_definition"}]),
        ": entry 0: field 'negative_definition' missing",
    ),
    (
        "wrong type",
        json.dumps([{**ENTRY, "dimension": 5}]),
        ": entry 0: field 'dimension' must be a string, got a number",
    ),
    (
        "empty definition",
        json.dumps([{**ENTRY, "definition": "  "}]),
        ": entry 0: field 'definition' is empty",
    ),
    (
        "duplicate dimension",
        json.dumps([ENTRY, {**ENTRY, "definition": "other"}]),
        ": entry 1: field 'dimension': 'Honest' duplicates entry 0",
    ),
    (
        "invalid UTF-8",
        b'[{"dimension": "Hon\xe9st"}]',
        " line 1: invalid UTF-8 at byte 19 of the line (invalid continuation byte)",
    ),
]


@pytest.mark.parametrize(
    ("case", "content", "what"), PRINCIPLE_ERRORS, ids=[c[0] for c in PRINCIPLE_ERRORS]
)
def test_broken_principle_file_is_one_line(
    tmp_path: Path, case: str, content: str | bytes, what: str
) -> None:
    path = write_file(tmp_path / "principles.json", content)
    assert load_principles_line(path) == f"salmon-wf judge: error: {path}{what}", case


TEMPLATE = (RESOURCES / "judge_template.txt").read_text(encoding="utf-8")
KNOWN = "UserInstruction, OutputA, OutputB, Dimension, Definition"
TEMPLATE_ERRORS: list[tuple[str, str | bytes, str]] = [
    ("missing placeholder", TEMPLATE.replace("{OutputB}", "B"), ": lacks placeholder(s) OutputB"),
    (
        "unknown placeholder",
        TEMPLATE.replace("{Definition}", "{Defintion}"),
        f": unknown placeholder(s) {{Defintion}} (known: {KNOWN})",
    ),
    ("wrong ending", TEMPLATE.rstrip("\n") + " Answer:", ": must end with 'Output ('"),
    ("empty", "\n\n", ": the template is empty"),
    (
        "invalid UTF-8",
        TEMPLATE.encode("utf-8").replace(b"{OutputA}", b"{OutputA}\x80", 1),
        " line 7: invalid UTF-8 at byte 9 of the line (invalid start byte)",
    ),
]


@pytest.mark.parametrize(
    ("case", "content", "what"), TEMPLATE_ERRORS, ids=[c[0] for c in TEMPLATE_ERRORS]
)
def test_broken_template_is_one_line(
    tmp_path: Path, case: str, content: str | bytes, what: str
) -> None:
    from salmon_wf.stages.judge import load_template

    path = write_file(tmp_path / "template.txt", content)
    with pytest.raises(SalmonError) as info:
        load_template(path, "Output (")
    assert cli.error_line("judge", info.value) == f"salmon-wf judge: error: {path}{what}", case


PROMPTS = [{"id": "a"}, {"id": "b"}]
RESPONSE = {"instruction": "q", "input": "", "response": "r"}


def gather_argv(tmp: Path, shards: list[Path], principles: bool = False) -> list[str]:
    prompts = write_lines(tmp / "prompts.jsonl", PROMPTS)
    argv = ["gather", "--prompts", str(prompts), "--shards", *map(str, shards)]
    if principles:
        principle_file = write_file(tmp / "principles.json", json.dumps([ENTRY]))
        argv += ["--principles", str(principle_file)]
    return [*argv, "--output", str(tmp / "out.jsonl")]


def gathered_line(tmp: Path, shards: list[Path], principles: bool = False) -> str | None:
    """The gather's error line; out.jsonl from an earlier run is left as it was."""
    (tmp / "out.jsonl").write_text(PREVIOUS, encoding="utf-8")
    line = command_line(gather_argv(tmp, shards, principles))
    assert (tmp / "out.jsonl").read_text(encoding="utf-8") == PREVIOUS
    return line


def good(i: str) -> bytes:
    return json.dumps({"id": i, **RESPONSE}).encode()


SHARD_ERRORS: list[tuple[str, list[bytes], str]] = [
    (
        "invalid JSON",
        [good("a"), b'{"id": "b", '],
        " line 2: invalid JSON (Expecting property name enclosed in double quotes)",
    ),
    (
        "torn last line",
        [good("a"), good("b")[:20]],
        " line 2: invalid JSON (Unterminated string starting at)",
    ),
    ("missing id", [good("a"), b'{"response": "r"}'], " line 2: field 'id' missing"),
    ("id a number", [good("a"), b'{"id": 7}'], ": id 7 is not in {prompts}"),
    ("id a list", [good("a"), b'{"id": ["b"]}'], ": id ['b'] is not in {prompts}"),
    ("unknown id", [good("a"), good("zz")], ": id 'zz' is not in {prompts}"),
    ("duplicate", [good("a"), good("a")], ": duplicate record 'a' (also in {shard})"),
    (
        "invalid UTF-8",
        [good("a"), b'{"id": "b\xff"}'],
        " line 2: invalid UTF-8 at byte 9 of the line (invalid start byte)",
    ),
    ("null record", [good("a"), b"null"], " line 2: expected a JSON object, got null"),
    (
        "a prompt missing",
        [good("a")],
        "{prompts}: 1 prompt(s) have no response in 1 shard(s), e.g. ['b']",
    ),
]


@pytest.mark.parametrize(("case", "lines", "what"), SHARD_ERRORS, ids=[c[0] for c in SHARD_ERRORS])
def test_broken_response_shard_is_one_line(
    tmp_path: Path, case: str, lines: list[bytes], what: str
) -> None:
    shard = raw_lines(tmp_path / "shard-0-of-1.jsonl", lines)
    if case == "torn last line":
        shard.write_bytes(shard.read_bytes().rstrip(b"\n"))
    line = gathered_line(tmp_path, [shard])
    prompts = tmp_path / "prompts.jsonl"
    where = "" if case == "a prompt missing" else str(shard)
    expected = what.format(prompts=prompts, shard=shard)
    assert line == f"salmon-wf gather: error: {where}{expected}", case


def judgment(i: str, scores: Any, preference: Any = 1, dimension: str = "Honest") -> bytes:
    record = {"id": i, "dimension": dimension, "relative_score": scores, "preference": preference}
    return json.dumps(record).encode()


JUDGMENT_ERRORS: list[tuple[str, bytes, str]] = [
    (
        "score NaN",
        judgment("a", [1.0, math.nan]),
        "field 'relative_score' must be finite, got [1.0, nan]",
    ),
    (
        "score Infinity",
        judgment("a", [math.inf, 1.0]),
        "field 'relative_score' must be finite, got [inf, 1.0]",
    ),
    (
        "one score",
        judgment("a", [1.0]),
        "field 'relative_score' must be a list of two numbers [s12, s21], got [1.0]",
    ),
    (
        "three scores",
        judgment("a", [1.0, 2.0, 3.0]),
        "field 'relative_score' must be a list of two numbers [s12, s21], got [1.0, 2.0, 3.0]",
    ),
    (
        "string scores",
        judgment("a", ["1", "2"]),
        "field 'relative_score' must be a list of two numbers [s12, s21], got ['1', '2']",
    ),
    (
        "boolean scores",
        judgment("a", [True, True]),
        "field 'relative_score' must be a list of two numbers [s12, s21], got [True, True]",
    ),
    (
        "no scores",
        b'{"id": "a", "dimension": "Honest", "preference": 1}',
        "field 'relative_score' must be a list of two numbers [s12, s21], got None",
    ),
    (
        "preference the scores do not give",
        judgment("a", [1.0, -1.0], 1),
        "field 'preference' is 1, the scores give 0",
    ),
    (
        "preference a boolean",
        judgment("a", [1.0, 1.0], True),
        "field 'preference' is True, the scores give 1",
    ),
    (
        "unknown dimension",
        judgment("a", [1.0, 1.0], 1, "Kind"),
        "dimension 'Kind' not in {principles}",
    ),
]


@pytest.mark.parametrize(
    ("case", "record", "what"), JUDGMENT_ERRORS, ids=[c[0] for c in JUDGMENT_ERRORS]
)
def test_broken_judgment_is_one_line(tmp_path: Path, case: str, record: bytes, what: str) -> None:
    shard = raw_lines(tmp_path / "shard-0-of-1.jsonl", [judgment("b", [2.0, 1.0]), record])
    line = gathered_line(tmp_path, [shard], principles=True)
    expected = what.format(principles=tmp_path / "principles.json")
    assert line == f"salmon-wf gather: error: {shard}: {expected}", case


def test_a_nan_judgment_through_the_installed_command(tmp_path: Path) -> None:
    shard = raw_lines(tmp_path / "shard.jsonl", [judgment("a", [math.nan, 1.0])])
    assert subprocess_line(gather_argv(tmp_path, [shard], principles=True)) == (
        f"salmon-wf gather: error: {shard}: field 'relative_score' must be finite, got [nan, 1.0]"
    )


def test_a_broken_shard_summary_is_one_line(tmp_path: Path) -> None:
    shard = raw_lines(tmp_path / "shard.jsonl", [judgment("a", [1.0, 1.0])])
    summary = write_file(tmp_path / "summary.json", '{"pairs": 1,')
    argv = gather_argv(tmp_path, [shard], principles=True)
    argv += ["--summaries", str(summary), "--summary", str(tmp_path / "merged.json")]
    assert command_line(argv) == (
        f"salmon-wf gather: error: {summary} line 1: invalid JSON at column 13 (Expecting "
        "property name enclosed in double quotes)"
    )
    write_file(summary, "[1]")
    assert command_line(argv) == (
        f"salmon-wf gather: error: {summary}: expected a JSON object (a shard summary)"
    )


CONFIG_ERRORS: list[tuple[dict[str, Any], str]] = [
    ({"judge": {"shards": 0}}, "config judge.shards: 0 is less than the minimum of 1"),
    ({"model": {"mp": -1}}, "config model.mp: -1 is less than the minimum of 1"),
    (
        {"sampling": {"defaults": {"temperature": "hot"}}},
        "config sampling.defaults.temperature: 'hot' is not of type 'number'",
    ),
    ({"aggregate": {"seed": 1.5}}, "config aggregate.seed: 1.5 is not of type 'integer'"),
]


@pytest.mark.parametrize(("config", "line"), CONFIG_ERRORS, ids=[c[1] for c in CONFIG_ERRORS])
def test_a_setting_outside_the_schema_is_one_line(config: dict[str, Any], line: str) -> None:
    with pytest.raises(SalmonError) as info:
        validate(config)
    assert str(info.value) == line


# --- checkpoints --------------------------------------------------------------------------


class Payload:
    """Pickles as a call to print: harmless, and visible on stdout if it ever ran."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (print, ("THE PAYLOAD RAN",))


def pickle_payload(model: Path) -> Path:
    """Shard 0 holding a pickled call next to a tensor: weights_only must refuse it."""
    shard = model / "consolidated.00.pth"
    torch.save({"tok_embeddings.weight": torch.zeros(2), "x": Payload()}, shard)
    assert b"print" in shard.read_bytes() and pickle.DEFAULT_PROTOCOL >= 2
    return shard


def model_copy(source: Path, tmp: Path) -> Path:
    copy = tmp / "model"
    shutil.copytree(source, copy)
    return copy


def test_a_pickle_payload_is_refused_in_one_line(tiny_dir: Path, tmp_path: Path) -> None:
    model = model_copy(tiny_dir, tmp_path)
    shard = pickle_payload(model)
    done = subprocess.run(
        [*SALMON_WF, "generate", "--model", str(model), "--prompt", "hi"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1 and "THE PAYLOAD RAN" not in done.stdout + done.stderr
    assert done.stderr.splitlines() == [
        f"salmon-wf generate: error: {shard}: refused by torch.load(weights_only=True): it holds "
        "a pickled object, not only tensors (print is not an allowed global)"
    ]


def edit_params(model: Path, **changes: Any) -> None:
    path = model / "params.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


def cut_in_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


LOAD = "cannot load with torch.load(weights_only=True, mmap=True)"
MMAP = (
    "(mmap can only be used with files saved with `torch.save(_use_new_zipfile_serialization="
    "True), please torch.save your checkpoint with this option in order to use mmap.)"
)
# (case, mp of the model, change(model), the line's text after "salmon-wf generate: error: ",
# with {m} for the model folder)
CHECKPOINT_ERRORS: list[tuple[str, int, Callable[[Path], Any], str]] = [
    (
        "missing shard of an MP-2 model",
        2,
        lambda m: (m / "consolidated.01.pth").unlink(),
        "{m}: weight 'tok_embeddings.weight' has shape (512, 32) across 1 file(s), params.json "
        "implies (512, 64)",
    ),
    (
        "an extra shard (MP 3 files of an MP-2 model)",
        2,
        lambda m: shutil.copy(m / "consolidated.01.pth", m / "consolidated.02.pth"),
        "{m}: weight 'tok_embeddings.weight' has shape (512, 96) across 3 file(s), params.json "
        "implies (512, 64)",
    ),
    (
        "no shard at all",
        1,
        lambda m: (m / "consolidated.00.pth").unlink(),
        "{m}: no consolidated.NN.pth checkpoint files",
    ),
    (
        "corrupt shard (random bytes)",
        1,
        lambda m: (m / "consolidated.00.pth").write_bytes(b"\x00garbage" * 100),
        "{m}/consolidated.00.pth: " + LOAD + " " + MMAP,
    ),
    (
        "empty shard",
        1,
        lambda m: (m / "consolidated.00.pth").write_bytes(b""),
        "{m}/consolidated.00.pth: " + LOAD + " " + MMAP,
    ),
    (
        "truncated shard",
        1,
        lambda m: cut_in_half(m / "consolidated.00.pth"),
        "{m}/consolidated.00.pth: " + LOAD + " (PytorchStreamReader failed reading zip archive: "
        "failed finding central directory. This is an internal miniz error. If you are seeing "
        "this error, there is a high likelihood that your checkpoint file is corrupted. This can "
        "happen if the checkpoint was not saved properly, was transferred incorrectly, or the "
        "file was modified after saving.)",
    ),
    (
        "a shard holding a list",
        1,
        lambda m: torch.save([torch.zeros(2)], m / "consolidated.00.pth"),
        "{m}/consolidated.00.pth: expected a dict of name -> tensor",
    ),
    (
        "params dim does not match the weights",
        1,
        lambda m: edit_params(m, dim=32),
        "{m}: weight 'tok_embeddings.weight' has shape (512, 64) across 1 file(s), params.json "
        "implies (512, 32)",
    ),
    (
        "params with more layers than the weights",
        1,
        lambda m: edit_params(m, n_layers=3),
        "{m}/consolidated.00.pth: missing weight 'layers.2.attention.wk.weight'",
    ),
    (
        "params.json not UTF-8",
        1,
        lambda m: (m / "params.json").write_bytes(b"{\xff"),
        "{m}/params.json: not valid JSON ('utf-8' codec can't decode byte 0xff in position 1: "
        "invalid start byte)",
    ),
    (
        "tokenizer larger than the embedding",
        1,
        lambda m: edit_params(m, vocab_size=100),
        "{m}/tokenizer.model: tokenizer has 512 tokens but the model's embedding has 100 rows "
        "({m}/params.json)",
    ),
    (
        "tokenizer not a sentencepiece model",
        1,
        lambda m: (m / "tokenizer.model").write_bytes(b"not a model"),
        "{m}/tokenizer.model: not a sentencepiece model (INTERNAL: could not parse ModelProto "
        "from {m}/tokenizer.model)",
    ),
]


@pytest.mark.parametrize(
    ("case", "mp", "change", "what"), CHECKPOINT_ERRORS, ids=[c[0] for c in CHECKPOINT_ERRORS]
)
def test_a_broken_checkpoint_is_one_line(
    request: pytest.FixtureRequest,
    single_rank: Any,
    tmp_path: Path,
    case: str,
    mp: int,
    change: Callable[[Path], Any],
    what: str,
) -> None:
    from salmon_wf.model.loader import load_model

    source = request.getfixturevalue("tiny_dir" if mp == 1 else "tiny_dir_mp2")
    model = model_copy(source, tmp_path)
    change(model)
    with pytest.raises(SalmonError) as info:
        load_model(model, single_rank)
    line = cli.error_line("generate", info.value)
    assert line == "salmon-wf generate: error: " + what.format(m=model), case


def test_the_aggregations_judgment_reader_names_a_bad_utf8_line(tmp_path: Path) -> None:
    from salmon_wf.stages.aggregate.tables import JUDGMENT_SCHEMA, read_table

    path = raw_lines(
        tmp_path / "judgments.jsonl",
        [judgment("a", [1.0, 1.0]), b'{"id": "b", "dimension": "H\xff", "relative_score": [1]}'],
    )
    with pytest.raises(SalmonError) as info:
        read_table(path, JUDGMENT_SCHEMA)
    assert (
        str(info.value)
        == f"{path} line 2: invalid UTF-8 at byte 27 of the line (invalid start byte)"
    )
