"""judgments.scores.arrow: the gather writes the judgments' scores as Arrow columns and the
aggregation reads them to the same bytes as from judgments.jsonl; a bad file names its column."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from test_aggregate import DIMS, USED, principles_file, run_cli, write_inputs

from salmon_wf import cli
from salmon_wf.data import scores_file
from salmon_wf.data.scores_file import (
    SCHEMA,
    open_scores_file,
    read_scores_file,
    write_scores_file,
)
from salmon_wf.errors import ConfigError, RecordError


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


def test_gather_writes_the_jsonl_scores_as_arrow(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": i}) + "\n" for i in ("c", "a", "b")))
    principles = principles_file(tmp_path, ["Y", "X"])
    judged = [("b", "X", [0.25, -1e-300]), ("c", "X", [-1.5, -0.1]), ("c", "Y", [3.0, 2.5])]
    shard = tmp_path / "shard.jsonl"
    shard.write_text(
        "".join(
            json.dumps({"id": i, "dimension": d, "relative_score": s, "preference": p}) + "\n"
            for (i, d, s), p in zip(judged, (0, 2, 1), strict=True)
        )
    )
    out, scores = tmp_path / "judgments.jsonl", tmp_path / "judgments.scores.arrow"
    argv = ["gather", "--prompts", str(prompts), "--principles", str(principles)]
    assert cli.run_command([*argv, "--shards", str(shard), "--output", str(out)]) == 0
    assert not scores.exists()  # only when asked for
    argv += ["--shards", str(shard), "--output", str(out), "--scores", str(scores)]
    assert cli.run_command(argv) == 0
    ids, dims, values = read_scores_file(scores)
    gathered = _records(out)  # prompt order, then principle order: c/Y, c/X, b/X
    assert ids.to_pylist() == [r["id"] for r in gathered] == ["c", "c", "b"]
    assert dims.to_pylist() == [r["dimension"] for r in gathered] == ["Y", "X", "X"]
    assert values.tolist() == [r["relative_score"] for r in gathered]  # every bit
    responses = ["gather", "--prompts", str(prompts), "--shards", str(shard)]
    responses += ["--output", str(tmp_path / "r.jsonl"), "--scores", str(tmp_path / "r.arrow")]
    with pytest.raises(ConfigError, match="needs --principles"):
        cli.run_command(responses)


def test_aggregate_reads_the_same_bytes_from_either_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever the scores file is named (it is known by its first bytes) or how many batches
    the gather wrote it in."""
    rng = np.random.default_rng(3)
    pairs = [
        {"id": f"s{i}", "scores": {d: tuple(rng.normal(size=2)) for d in DIMS}} for i in range(25)
    ]
    pairs[4]["scores"][USED[0]] = (float("nan"), 1.0)  # dropped as non-finite, either way
    pairs_file, summary, judgments = write_inputs(tmp_path, pairs)
    names = ("preferences.json", "preferences.jsonl", "stats.json")
    _, stats = run_cli(tmp_path, (pairs_file, summary, judgments), "--seed", "4")
    from_jsonl = [(tmp_path / "out" / n).read_bytes() for n in names]
    assert stats["pairs_dropped"]["non_finite_score"] == 1
    arrow = tmp_path / "scores.bin"
    monkeypatch.setattr(scores_file, "BATCH_ROWS", 7)  # 125 judgments in 18 batches
    write_scores_file(arrow, _records(judgments))
    assert pa.ipc.open_file(str(arrow)).num_record_batches == 18
    run_cli(tmp_path, (pairs_file, summary, arrow), "--seed", "4")
    assert [(tmp_path / "out" / n).read_bytes() for n in names] == from_jsonl


def _table(**columns: pa.Array) -> pa.Table:
    base = {
        "id": pa.array(["a", "b"]),
        "dimension": pa.array(["X", "X"]).dictionary_encode(),
        "s12": pa.array([1.0, 2.0]),
        "s21": pa.array([1.0, 2.0]),
    }
    merged = {**base, **columns}
    return pa.table({k: v for k, v in merged.items() if v is not None})


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({"s21": None}, "column 's21' missing"),
        ({"s12": pa.array([1, 2], pa.int64())}, "column 's12' is int64, expected double"),
        ({"dimension": pa.array(["X", "X"])}, "column 'dimension' is string, expected dict"),
        ({"id": pa.array(["a", None])}, "record 2: column 'id' is null"),
    ],
)
def test_a_bad_scores_file_names_the_file_and_column(
    tmp_path: Path, columns: dict, message: str
) -> None:
    path = tmp_path / "judgments.scores.arrow"
    table = _table(**columns)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    with pytest.raises(RecordError, match=f"^{path}: {message}"):
        read_scores_file(path)


def test_a_file_that_is_not_arrow_is_named(tmp_path: Path) -> None:
    path = tmp_path / "judgments.scores.arrow"
    path.write_text('{"id": "a"}\n')
    with pytest.raises(RecordError, match=f"^{path}: not an Arrow IPC scores file"):
        read_scores_file(path)
    with pytest.raises(RecordError, match="file not found"):
        read_scores_file(tmp_path / "missing.arrow")
    assert SCHEMA.names == ["id", "dimension", "s12", "s21"]


def test_batches_share_one_dimension_dictionary_and_empty_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "s.arrow"
    with open_scores_file(path, ["X", "Y"]) as write:
        write(["a", "a"], np.array([0, 1]), np.array([1.0, 2.0]), np.array([3.0, 4.0]))
        write(["b"], np.array([1]), np.array([-1.0]), np.array([-2.0]))
    ids, dims, scores = read_scores_file(path)
    assert ids.to_pylist() == ["a", "a", "b"] and dims.to_pylist() == ["X", "Y", "Y"]
    assert scores.tolist() == [[1.0, 3.0], [2.0, 4.0], [-1.0, -2.0]]
    write_scores_file(path, [])
    ids, dims, scores = read_scores_file(path)
    assert len(ids) == len(dims) == 0 and scores.shape == (0, 2)


def test_an_unknown_dimension_in_a_scores_file_names_its_record(tmp_path: Path) -> None:
    pairs_file, summary, judgments = write_inputs(
        tmp_path, [{"id": "a", "scores": {d: (1.0, 1.0) for d in DIMS}}]
    )
    records = _records(judgments)
    records[3]["dimension"] = "Nope"
    arrow = tmp_path / "judgments.scores.arrow"
    write_scores_file(arrow, records)
    with pytest.raises(RecordError, match=f"^{arrow} record 4: dimension 'Nope' is not a"):
        run_cli(tmp_path, (pairs_file, summary, arrow))
