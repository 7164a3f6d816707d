"""judgments.scores.arrow: the judgments' (id, dimension, s12, s21) as Arrow columns.

The gather writes it beside judgments.jsonl from the records it already holds; the aggregation
reads it instead of parsing the JSONL again. The aggregation is the step users rerun whenever
they change one of its settings, and parsing 2.65 GB of judgments (1M pairs x 11 principles)
took it ~8 s of its ~31 s (docs/benchmarks.md), most of that fields it does not use (the logits,
`truncated`). An Arrow IPC file is memory-mapped and read without parsing.

judgments.jsonl stays SALMON's record (and every other reader's); this file holds nothing else.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from salmon_wf.data.atomic import atomic_file
from salmon_wf.errors import RecordError

BATCH_ROWS = 1 << 20  # records per batch the gather writes (a string column's offsets are 32-bit)
SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("dimension", pa.dictionary(pa.int32(), pa.string())),
        ("s12", pa.float64()),
        ("s21", pa.float64()),
    ]
)


ScoresBatch = Callable[[Sequence[str], np.ndarray, np.ndarray, np.ndarray], None]


@contextlib.contextmanager
def open_scores_file(path: Path, dimensions: Sequence[str]) -> Iterator[ScoresBatch]:
    """A function appending batches (ids, dimension indices into `dimensions`, s12, s21) to
    the scores file at `path`, which appears whole when the block ends (data/atomic.py).

    `dimensions` is the dimension column's one dictionary: an IPC file cannot replace it
    between batches.
    """
    dictionary = pa.array(list(dimensions), pa.string())
    with atomic_file(path) as handle, pa.ipc.new_file(handle, SCHEMA) as writer:

        def write(
            ids: Sequence[str], dimension: np.ndarray, s12: np.ndarray, s21: np.ndarray
        ) -> None:
            indices = pa.array(np.asarray(dimension, dtype=np.int32))
            columns = [
                pa.array(ids, pa.string()),
                pa.DictionaryArray.from_arrays(indices, dictionary),
                pa.array(np.asarray(s12, dtype=np.float64)),
                pa.array(np.asarray(s21, dtype=np.float64)),
            ]
            writer.write_batch(pa.record_batch(columns, schema=SCHEMA))

        yield write


def write_scores_file(path: Path, records: Sequence[dict[str, Any]]) -> None:
    """The records' id, dimension and relative_score [s12, s21], in their order, written whole."""
    dimensions = list(dict.fromkeys(r["dimension"] for r in records))
    index = {d: i for i, d in enumerate(dimensions)}
    scores = np.array([r["relative_score"] for r in records], dtype=np.float64).reshape(-1, 2)
    with open_scores_file(path, dimensions) as write:
        for start in range(0, len(records), BATCH_ROWS):  # ids under 2 GiB per batch
            chunk = records[start : start + BATCH_ROWS]
            dims = np.array([index[r["dimension"]] for r in chunk], dtype=np.int32)
            part = scores[start : start + BATCH_ROWS]
            write([r["id"] for r in chunk], dims, part[:, 0], part[:, 1])


def read_scores_file(path: Path) -> tuple[pa.ChunkedArray, pa.ChunkedArray, np.ndarray]:
    """ids, dimensions (dictionary-encoded strings) and the (N, 2) scores of a scores file.

    A file that is not Arrow, a missing column, a column of another type or a null names the
    file and the column (and the record, 1-based, for a null).
    """
    table = read_checked_table(path, SCHEMA, "scores")
    dimensions = table.column("dimension")  # dictionary-encoded: 11M strings cost ~1 s to cast
    scores = np.column_stack([table.column(name).to_numpy() for name in ("s12", "s21")]).astype(
        np.float64, copy=False
    )
    return table.column("id"), dimensions, scores


def read_checked_table(path: Path, schema: pa.Schema, kind: str) -> pa.Table:
    """An Arrow IPC file's table (memory-mapped), with `schema`'s columns checked: a file that
    is not Arrow, a missing column, a column of another type or a null names the file and the
    column (and the record, 1-based, for a null). `kind` names the file in the first error."""
    try:
        with pa.memory_map(str(path)) as source:
            table = pa.ipc.open_file(source).read_all()
    except FileNotFoundError:
        raise RecordError("file not found", file=path) from None
    except (pa.ArrowInvalid, OSError) as exc:
        raise RecordError(f"not an Arrow IPC {kind} file ({exc})", file=path) from None
    for field in schema:
        if field.name not in table.column_names:
            raise RecordError(f"column {field.name!r} missing", file=path)
        column = table.column(field.name)
        if column.type != field.type:
            raise RecordError(
                f"column {field.name!r} is {column.type}, expected {field.type}", file=path
            )
        if column.null_count:
            row = int(np.flatnonzero(~column.is_valid().to_numpy(zero_copy_only=False))[0])
            raise RecordError(f"record {row + 1}: column {field.name!r} is null", file=path)
    return table


MAGIC = b"ARROW1"  # how an Arrow IPC file starts


def is_arrow_file(path: Path) -> bool:
    """Whether `path` is an Arrow IPC file (by its first bytes, whatever its name): the
    aggregation reads its judgments (and pairs, data/pairs_file.py) as Arrow, else as JSONL."""
    try:
        with path.open("rb") as handle:
            return handle.read(len(MAGIC)) == MAGIC
    except OSError:  # missing or unreadable: the JSONL reader names the problem
        return False
