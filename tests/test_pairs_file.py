"""pairs.arrow: `salmon-wf pairs-table` writes the pairs as Arrow columns and the aggregation
reads them to the same bytes as from pairs.jsonl; a bad file names its column or line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from test_aggregate import DIMS, run_cli, write_inputs

from salmon_wf import cli
from salmon_wf.data import pairs_file
from salmon_wf.data.pairs_file import read_pairs_file
from salmon_wf.errors import RecordError
from salmon_wf.stages.aggregate.tables import PAIR_SCHEMA

ODD = ['quote " and \\ backslash', "lines\nand\ttabs\x00", "é 中文 \U0001f600", ""]


def _table(path: Path) -> Path:
    arrow = path.with_suffix(".arrow")
    assert cli.run_command(["pairs-table", "--pairs", str(path), "--output", str(arrow)]) == 0
    return arrow


def test_aggregate_reads_the_same_bytes_from_pairs_arrow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In several record batches, with odd texts and pairs dropped for want of judgments (the
    stage encodes every candidate's texts, then keeps the judged ones)."""
    rng = np.random.default_rng(8)
    pairs = [
        {
            "id": f"p{i}",
            "instruction": ODD[i % 4] + f" {i}?",
            "output_1": ODD[(i + 1) % 4] + " one",
            "output_2": ODD[(i + 2) % 4] + " two",
            "scores": {d: tuple(rng.normal(size=2)) for d in DIMS} if i % 5 else {},
        }
        for i in range(30)
    ]
    jsonl, summary, judgments = write_inputs(tmp_path, pairs)
    names = ("preferences.json", "preferences.jsonl", "stats.json")
    records, stats = run_cli(tmp_path, (jsonl, summary, judgments), "--seed", "2")
    from_jsonl = [(tmp_path / "out" / n).read_bytes() for n in names]
    assert stats["pairs_dropped"]["no_judgments"] == 6 and records
    monkeypatch.setattr(pairs_file, "BATCH_ROWS", 7)
    arrow = _table(jsonl)
    assert pa.ipc.open_file(str(arrow)).num_record_batches == 5
    assert read_pairs_file(arrow, PAIR_SCHEMA).to_pylist() == [
        json.loads(line) for line in jsonl.read_text("utf-8").splitlines()
    ]
    run_cli(tmp_path, (arrow, summary, judgments), "--seed", "2")
    assert [(tmp_path / "out" / n).read_bytes() for n in names] == from_jsonl


def test_pairs_table_names_the_bad_line(tmp_path: Path) -> None:
    jsonl = tmp_path / "pairs.jsonl"
    good = {"id": "a", "instruction": "q", "input": "", "output_1": "x", "output_2": "y"}
    jsonl.write_text(json.dumps(good) + "\n" + json.dumps(good | {"output_2": 3}) + "\n")
    with pytest.raises(RecordError, match="line 2: field 'output_2' must be a string"):
        _table(jsonl)
    assert not (tmp_path / "pairs.arrow").exists()


def _write(path: Path, table: pa.Table) -> Path:
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return path


def _pairs(**columns: pa.Array | None) -> pa.Table:
    texts = {name: pa.array(["t", "u"], pa.large_string()) for name in PAIR_SCHEMA.names[1:]}
    merged = {"id": pa.array(["a", "b"]), **texts, **columns}
    return pa.table({k: v for k, v in merged.items() if v is not None})


def _bad_utf8() -> pa.Array:
    data = pa.py_buffer(b"ok\xff")
    offsets = pa.py_buffer(np.array([0, 2, 3], np.int64).tobytes())
    return pa.Array.from_buffers(pa.large_string(), 2, [None, offsets, data])


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({"output_2": None}, "column 'output_2' missing"),
        ({"input": pa.array(["", ""])}, "column 'input' is string, expected large_string"),
        ({"instruction": pa.array(["q", None], pa.large_string())}, "record 2: column 'instr"),
        ({"output_1": _bad_utf8()}, "column 'output_1': .*UTF8"),
    ],
)
def test_a_bad_pairs_file_names_the_file_and_column(
    tmp_path: Path, columns: dict, message: str
) -> None:
    path = _write(tmp_path / "pairs.arrow", _pairs(**columns))
    with pytest.raises(RecordError, match=f"^{path}: {message}"):
        read_pairs_file(path, PAIR_SCHEMA)


def test_a_pairs_file_cut_short_is_named(tmp_path: Path) -> None:
    path = _write(tmp_path / "pairs.arrow", _pairs())
    assert read_pairs_file(path, PAIR_SCHEMA).column("id").to_pylist() == ["a", "b"]
    path.write_bytes(path.read_bytes()[:40])  # starts as Arrow, cut short
    with pytest.raises(RecordError, match=f"^{path}: not an Arrow IPC pairs file"):
        read_pairs_file(path, PAIR_SCHEMA)
