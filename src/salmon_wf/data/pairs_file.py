"""pairs.arrow: the pair stage's pairs (id and the four texts) as Arrow columns.

Rule `pairs_table` writes it from pairs.jsonl while the judge jobs run, and the aggregation reads
it instead of parsing the JSONL. The aggregation is the step users rerun whenever they change one
of its settings, and parsing 770 MB of pairs (1M pairs of short responses) took it 2.1-2.3 s of
wall time and ~3.9 s of CPU on 2 cores (Intel(R) Xeon(R) Processor, amx_bf16 avx512_bf16); an
Arrow IPC file is memory-mapped and read without parsing. pairs.jsonl stays the pairs' record
(the judge's and every other reader's); this file holds the same columns and nothing else.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from salmon_wf.data.atomic import atomic_file
from salmon_wf.data.scores_file import read_checked_table
from salmon_wf.errors import RecordError

BATCH_ROWS = 1 << 16  # pairs per record batch (the renderer encodes a column batch by batch)


def write_pairs_file(path: Path, table: pa.Table) -> None:
    """`table` (tables.PAIR_SCHEMA's columns) as an Arrow IPC file, which appears whole."""
    with atomic_file(path) as handle, pa.ipc.new_file(handle, table.schema) as writer:
        writer.write_table(table, max_chunksize=BATCH_ROWS)


def read_pairs_file(path: Path, schema: pa.Schema) -> pa.Table:
    """The pairs file's table, checked against `schema` (tables.PAIR_SCHEMA).

    A file that is not Arrow, a missing column, a column of another type, a null or invalid
    UTF-8 names the file and the column (and the record, 1-based, for a null).
    """
    table = read_checked_table(path, schema, "pairs")
    for name in schema.names:
        try:
            for chunk in table.column(name).chunks:
                chunk.validate(full=True)
        except pa.ArrowInvalid as exc:
            raise RecordError(f"column {name!r}: {exc}", file=path) from None
    return table.select(schema.names)
