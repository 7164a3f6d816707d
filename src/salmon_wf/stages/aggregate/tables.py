"""Reading the aggregation's tables: pairs.jsonl, pairs.summary.json and the judgments, joined.

The judgments are judgments.jsonl or the gather's Arrow copy of their scores (scores_file.py);
the pairs, pairs.jsonl or rule pairs_table's Arrow copy of it (pairs_file.py).

Arrow parses the JSONL (fast, multi-threaded, streamed); a file Arrow rejects goes to a strict
line reader that builds the same table or names the bad line and field. The judgments join the
pairs by id (never by text or position), and the pairs the pair stage dropped before judging
are counted under its own reasons.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from salmon_wf.data.jsonl import decoded_lines, parse_record
from salmon_wf.data.pairs_file import read_pairs_file
from salmon_wf.data.scores_file import is_arrow_file, read_scores_file
from salmon_wf.errors import RecordError

BLOCK = 4 << 20  # bytes of JSONL parsed at a time

_TEXT = ("id", "instruction", "input", "output_1", "output_2")
TEXT_COLUMNS = _TEXT[1:]  # a Candidates' texts, in record order
# pairs.jsonl. Texts as large_string: a column over 2 GiB (1M pairs of ~2 KB responses) cannot
# be taken or concatenated with 32-bit offsets.
PAIR_SCHEMA = pa.schema(
    [("id", pa.string()), *((name, pa.large_string()) for name in _TEXT if name != "id")]
)
JUDGMENT_SCHEMA = pa.schema(
    [("id", pa.string()), ("dimension", pa.string()), ("relative_score", pa.list_(pa.float64()))]
)
_OPTIONAL = {"input"}  # a missing or null input is ""


def read_table(path: Path, schema: pa.Schema) -> pa.Table:
    """The schema's columns of a JSONL file, read by Arrow (fast, multi-threaded).

    Anything Arrow rejects, or a null where a value is required, goes to the strict line
    reader instead, which builds the same table or raises an error naming line and field.
    """
    options = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    try:
        # Streamed in 4 MB blocks: the whole-file reader holds 3x the table in parse buffers
        # (2.0 GB peak for a 0.58 GB table from 2.6 GB of judgments; streamed: 0.94 GB).
        # A line longer than a block is an Arrow error, so it goes to the strict reader.
        with pj.open_json(path, pj.ReadOptions(block_size=BLOCK), options) as batches:
            table = pa.Table.from_batches(list(batches), schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return _read_strict(path, schema)
    for name in schema.names:
        column = table.column(name)
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            try:  # Arrow's JSON reader copies string bytes unchecked
                for chunk in column.chunks:
                    chunk.validate(full=True)
            except pa.ArrowInvalid:  # invalid UTF-8: the strict reader names the line
                return _read_strict(path, schema)
        if name in _OPTIONAL:
            table = table.set_column(table.schema.get_field_index(name), name, column.fill_null(""))
        elif column.null_count:
            return _read_strict(path, schema)
        elif pa.types.is_list(column.type):
            flat = pc.list_flatten(column)
            if flat.null_count or pc.any(pc.not_equal(pc.list_value_length(column), 2)).as_py():
                return _read_strict(path, schema)
    return table


def _read_strict(path: Path, schema: pa.Schema) -> pa.Table:
    columns: dict[str, list[Any]] = {name: [] for name in schema.names}
    with path.open("rb") as handle:  # invalid UTF-8 names its line
        for number, line in decoded_lines(path, handle):
            if not line.strip():
                continue
            where = f"{path} line {number}"
            record = parse_record(path, number, line)
            for name in schema.names:
                value = record.get(name)
                if name in _OPTIONAL and value is None:
                    value = ""
                columns[name].append(_checked(where, name, value, schema.field(name).type))
    return pa.table(columns, schema=schema)


def _checked(where: str, name: str, value: Any, kind: pa.DataType) -> Any:
    if value is None:
        raise RecordError(f"{where}: field '{name}' missing")
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        if not isinstance(value, str):
            raise RecordError(f"{where}: field '{name}' must be a string")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate escape such as "\ud800"
            raise RecordError(
                f"{where}: field '{name}' holds a lone surrogate escape (\\ud800-\\udfff "
                "without its pair): not writable as UTF-8"
            ) from None
        return value
    numbers = isinstance(value, list) and all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in value
    )
    if not numbers or len(value) != 2:
        raise RecordError(f"{where}: field '{name}' must be a list of two numbers [s12, s21]")
    return [float(v) for v in value]


def _first_duplicate(ids: pa.Array) -> str | None:
    # unique() over count_distinct(): 0.21 against 0.35 s on 1M ids (Intel Xeon, 2 cores)
    if len(pc.unique(ids)) == len(ids):
        return None
    counts = pc.value_counts(ids)
    repeated = counts.filter(pc.greater(counts.field("counts"), 1))
    return repeated.field("values")[0].as_py()


@dataclass
class Candidates:
    """The pair stage's pairs (pairs.jsonl) in file order; the texts as Arrow arrays.

    `instruction`, `output_1` and `output_2` give a text column as Python strings, made on
    first use (for the language identification); the rendering reads the Arrow columns.
    """

    ids: pa.Array
    texts: dict[str, pa.ChunkedArray]  # instruction, input, output_1, output_2
    counts: dict[str, Any]
    _lists: dict[str, list[str]] = field(default_factory=dict, repr=False)

    def column(self, name: str) -> list[str]:
        if name not in self._lists:
            self._lists[name] = self.texts[name].to_pylist()
        return self._lists[name]

    @property
    def instruction(self) -> list[str]:
        return self.column("instruction")

    @property
    def output_1(self) -> list[str]:
        return self.column("output_1")

    @property
    def output_2(self) -> list[str]:
        return self.column("output_2")


def read_candidates(pairs: Path, summary: Path | None) -> Candidates:
    """pairs.jsonl (or its Arrow copy, pairs.arrow), and from pairs.summary.json the pairs
    dropped before judging, by reason.

    The summary's "dropped" counts (too short, skipped generation, id in one run only, ...) are
    the pair stage's own reasons; its "pairs" must be the number of lines of `pairs` (a
    summary from another pairing is an error, not a silent mix).
    """
    if is_arrow_file(pairs):  # rule pairs_table's pairs.arrow: the same columns, not parsed
        table = read_pairs_file(pairs, PAIR_SCHEMA)
    else:
        table = read_table(pairs, PAIR_SCHEMA)
    duplicate = _first_duplicate(table.column("id").combine_chunks())
    if duplicate is not None:
        raise RecordError(f"{pairs}: duplicate id {duplicate!r}")
    before: dict[str, int] = {}
    if summary is not None:
        before = pairing_drops(summary, table.num_rows, pairs)
    ids = table.column("id").combine_chunks()
    texts = {name: table.column(name) for name in _TEXT[1:]}  # as parsed: copied once, later
    return Candidates(ids, texts, counts={"pairs": len(ids), "dropped_before_judging": before})


def pairing_drops(summary: Path, n_pairs: int, pairs: Path) -> dict[str, int]:
    """The pair stage's {reason: count} of pairs it dropped, checked against pairs.jsonl."""
    try:
        data = json.loads(summary.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise RecordError(f"{summary}: cannot read the pair summary ({error})") from None
    dropped = data.get("dropped") if isinstance(data, dict) else None
    if not isinstance(dropped, dict) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in dropped.values()
    ):
        raise RecordError(f"{summary}: no 'dropped' counts by reason (rerun the pair stage)")
    if data.get("pairs") != n_pairs:
        raise RecordError(
            f"{summary} counts {data.get('pairs')} pairs but {pairs} has {n_pairs}: "
            "not the summary of these pairs"
        )
    return {str(reason): count for reason, count in dropped.items()}


@dataclass
class Scores:
    """(s12, s21) per candidate pair and used dimension; `kept` marks the usable pairs."""

    s12: np.ndarray  # (N, D) float64, NaN where a judgment is missing
    s21: np.ndarray
    kept: np.ndarray  # (N,) bool
    counts: dict[str, Any]


def read_scores(
    judgments: Path, ids: pa.Array, dimensions: Sequence[str], known: Sequence[str]
) -> Scores:
    """The judgments of the pairs `ids`, by id and dimension; `known`: the principle file's.

    `judgments` is judgments.jsonl, or the gather's judgments.scores.arrow (data/scores_file.py:
    the same columns without parsing JSON).
    """
    n_pairs = len(ids)
    judgment_ids, judged_dims, all_scores = _judgment_columns(judgments)
    dim_of = _dimension_index(judged_dims, known)
    if (dim_of < 0).any():
        row = int(np.flatnonzero(dim_of < 0)[0])
        bad = judged_dims[row].as_py()
        raise RecordError(f"{judgments} record {row + 1}: dimension {bad!r} is not a principle")
    pair_of = pc.index_in(judgment_ids, value_set=ids)
    matched = pair_of.is_valid().to_numpy(zero_copy_only=False)
    pair = pair_of.fill_null(0).to_numpy().astype(np.int64)
    dim, scores = dim_of, all_scores
    if not matched.all():  # (a mask over 11M (s12, s21) rows took 0.44 s)
        pair, dim, scores = pair[matched], dim[matched], scores[matched]
    n_judgments = len(judgment_ids)
    del judgment_ids, judged_dims, all_scores, dim_of, pair_of
    pa.default_memory_pool().release_unused()

    n_known = len(known)
    key = pair * n_known + dim
    seen = np.bincount(key, minlength=n_pairs * n_known)
    if seen.size and seen.max() > 1:
        first = int(np.flatnonzero(seen > 1)[0])
        bad_id = ids[first // n_known].as_py()
        raise RecordError(
            f"{judgments}: duplicate judgment for id {bad_id!r}, "
            f"dimension {known[first % n_known]!r}"
        )
    have = (seen > 0).reshape(n_pairs, n_known)
    # By flat key: one column of 11M judgments 0.05 s, against 0.55 s by (pair, dim) pairs.
    s12 = np.full(n_pairs * n_known, np.nan)
    s21 = np.full(n_pairs * n_known, np.nan)
    s12[key], s21[key] = scores[:, 0], scores[:, 1]
    s12, s21 = s12.reshape(n_pairs, n_known), s21.reshape(n_pairs, n_known)
    used = [list(known).index(d) for d in dimensions]
    s12, s21 = s12[:, used], s21[:, used]

    joined = have.any(axis=1)
    complete = have[:, used].all(axis=1)
    finite = np.isfinite(s12).all(axis=1) & np.isfinite(s21).all(axis=1)
    kept = joined & complete & finite
    counts = {
        "judgments": n_judgments,
        "judgments_without_pair": int((~matched).sum()),
        "pairs_judged": int(joined.sum()),
        "pairs_kept": int(kept.sum()),
        "pairs_dropped": {
            "no_judgments": int((~joined).sum()),
            "missing_dimension": int((joined & ~complete).sum()),
            "non_finite_score": int((joined & complete & ~finite).sum()),
        },
    }
    return Scores(s12, s21, kept, counts)


def _dimension_index(dimensions: pa.ChunkedArray, known: Sequence[str]) -> np.ndarray:
    """Each judgment's index in `known`, -1 for a name not there; a dictionary-encoded column
    (the scores file's) is looked up once per dictionary entry, not once per judgment."""
    value_set = pa.array(list(known), pa.string())
    parts = [np.empty(0, np.int64)]
    for chunk in dimensions.chunks:
        encoded = pa.types.is_dictionary(chunk.type)
        names = chunk.dictionary if encoded else chunk
        found = pc.index_in(names, value_set=value_set).fill_null(-1).to_numpy().astype(np.int64)
        parts.append(found[chunk.indices.to_numpy()] if encoded else found)
    return np.concatenate(parts)


def _judgment_columns(path: Path) -> tuple[pa.ChunkedArray, pa.ChunkedArray, np.ndarray]:
    """ids, dimensions and (N, 2) scores of a judgments file, JSONL or Arrow scores file."""
    if is_arrow_file(path):
        return read_scores_file(path)
    table = read_table(path, JUDGMENT_SCHEMA)
    scores = pc.list_flatten(table.column("relative_score")).to_numpy().reshape(-1, 2)
    return table.column("id"), table.column("dimension"), scores


@dataclass
class Pairs:
    """Kept pairs in pairs.jsonl order, with their (s12, s21) per used dimension.

    The texts are Arrow string arrays (or lists of str: the renderer takes either).
    """

    ids: pa.Array | pa.ChunkedArray | list[str]
    instruction: pa.Array | pa.ChunkedArray | list[str]
    input: pa.Array | pa.ChunkedArray | list[str]
    output_1: pa.Array | pa.ChunkedArray | list[str]
    output_2: pa.Array | pa.ChunkedArray | list[str]
    s12: np.ndarray  # (N, D) float64
    s21: np.ndarray
    counts: dict[str, Any] = field(default_factory=dict)


def kept_counts(runs: Candidates, scores: Scores) -> dict[str, Any]:
    """Every count of reading and joining, in the order the stats report them.

    `pairs_dropped` holds the pair stage's reasons (pairs never judged) and then the
    aggregation's own (judged pairs it cannot use).
    """
    before = runs.counts["dropped_before_judging"]
    clash = sorted(set(before) & set(scores.counts["pairs_dropped"]))
    if clash:
        raise RecordError(f"pair summary reason(s) {clash} clash with the aggregation's own")
    counts = {"pairs": runs.counts["pairs"]} | scores.counts
    counts["pairs_dropped"] = before | scores.counts["pairs_dropped"]
    return counts
