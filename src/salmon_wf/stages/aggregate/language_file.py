"""pairs.languages.jsonl: the language codes of every pair's texts, as a file between two jobs.

`salmon-wf languages` writes it (stages/languages.py) and the aggregation reads it instead of
identifying the languages itself. One line per pair, in pairs.jsonl order, keys in this order:

    {"id": "oasst-1", "instruction": "en", "output_1": "en", "output_2": null}

A code is data/langid.py's (a lowercase primary subtag) or null for a text without letters
(shown as "unknown" in the preferences). The reader takes the file only when its ids are the
pairs' ids in the same order: a file of other pairs (another run's, or of fewer or more pairs)
is a RecordError naming the file, the line and the field. What is checked is the ids, not the
texts: a file made from other texts under the same ids (a resample, by hand) is not detected.
In the workflow that cannot happen, because rule `languages` reruns whenever pairs.jsonl
changes. Every line must have all four keys (the writer always writes them): a key missing
from every line sends the file to the strict reader, which names the first such line.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.json as pj

from salmon_wf.data.atomic import atomic_file
from salmon_wf.data.jsonl import decoded_lines, parse_record
from salmon_wf.errors import RecordError
from salmon_wf.stages.aggregate.languages import PairLanguages

TEXTS = PairLanguages._fields  # instruction, output_1, output_2
SCHEMA = pa.schema([("id", pa.string()), *((name, pa.string()) for name in TEXTS)])
BLOCK = 4 << 20  # bytes of JSONL parsed at a time
CHUNK = 1 << 14  # lines formatted and written at a time


def write_language_file(path: Path, ids: Sequence[str], languages: PairLanguages) -> None:
    """The codes of the pairs `ids` (pairs.jsonl order), written atomically (data/atomic.py)."""
    coded: dict[str | None, str] = {None: "null"}

    def code(value: str | None) -> str:
        if value not in coded:
            coded[value] = json.dumps(value)
        return coded[value]

    rows = zip(ids, *languages, strict=True)
    with atomic_file(path, "w") as handle:
        while chunk := [row for _, row in zip(range(CHUNK), rows, strict=False)]:
            handle.write(
                "".join(
                    f'{{"id": {json.dumps(pair, ensure_ascii=False)}, "instruction": {code(a)}, '
                    f'"output_1": {code(b)}, "output_2": {code(c)}}}\n'
                    for pair, a, b, c in chunk
                )
            )


def read_language_file(path: Path, ids: pa.Array, pairs_file: Path) -> PairLanguages:
    """The codes of the pairs `ids` (read from `pairs_file`, in its order), from `path`.

    Arrow parses the file; when it cannot, or the ids are not exactly `ids` in order, the
    strict line reader names the first bad line and field.
    """
    check_readable(path)
    options = pj.ParseOptions(explicit_schema=SCHEMA, unexpected_field_behavior="ignore")
    try:
        with pj.open_json(path, pj.ReadOptions(block_size=BLOCK), options) as batches:
            table = pa.Table.from_batches(list(batches), SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return _read_strict(path, ids, pairs_file)
    found = table.column("id").combine_chunks()
    if table.num_rows != len(ids) or found.null_count or not found.equals(ids):
        return _read_strict(path, ids, pairs_file)
    if len(ids) and any(table.column(name).null_count == len(ids) for name in TEXTS):
        return _read_strict(path, ids, pairs_file)  # a key missing everywhere? (Arrow: null)
    return PairLanguages(*(table.column(name) for name in TEXTS))


def _read_strict(path: Path, ids: pa.Array, pairs_file: Path) -> PairLanguages:
    """The codes, read line by line; the first line that does not fit is a RecordError."""
    expected = ids.to_pylist()
    columns: dict[str, list[str | None]] = {name: [] for name in TEXTS}
    count = number = 0
    with path.open("rb") as handle:
        for number, line in decoded_lines(path, handle):
            if not line.strip():
                continue
            record = parse_record(path, number, line)
            pair = record.get("id")
            if count == len(expected):
                what = f"{pair!r}: more lines than the {count} pairs of {pairs_file}"
                raise RecordError(what, file=path, line=number, field="id")
            if pair != expected[count]:
                what = (
                    f"{pair!r} where pair {count + 1} of {pairs_file} is {expected[count]!r}: "
                    "not the languages of these pairs (rerun salmon-wf languages)"
                )
                raise RecordError(what, file=path, line=number, field="id")
            for name in TEXTS:
                if name not in record:
                    raise RecordError("missing", file=path, line=number, field=name)
                value = record[name]
                if value is not None and not isinstance(value, str):
                    what = "must be a language code or null"
                    raise RecordError(what, file=path, line=number, field=name)
                columns[name].append(value)
            count += 1
    if count < len(expected):
        what = (
            f"missing: the file ends after {count} pairs, {pairs_file} has {len(expected)} "
            f"(the next is {expected[count]!r})"
        )
        raise RecordError(what, file=path, line=number + 1, field="id")
    return PairLanguages(*(columns[name] for name in TEXTS))


def check_readable(path: Path) -> None:
    """A languages file that is not there (or is a folder) is one line naming it, up front."""
    if not path.is_file():
        what = "no such file" if not path.exists() else "not a file"
        raise RecordError(f"{what} (the languages file: salmon-wf languages writes it)", file=path)


class LanguageFileRead:
    """The file's codes where the aggregation would wait for its detection (same interface).

    `result()` reads them (checked against the pairs' ids); `cancel()` has nothing to stop.
    """

    def __init__(self, path: Path, ids: pa.Array, pairs_file: Path) -> None:
        self.path, self.ids, self.pairs_file = path, ids, pairs_file

    def result(self) -> PairLanguages:
        return read_language_file(self.path, self.ids, self.pairs_file)

    def cancel(self) -> None:
        """Nothing runs meanwhile."""
