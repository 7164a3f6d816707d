"""Write the pairs' Arrow copy (pairs.arrow) from pairs.jsonl, for the aggregation to read.

The workflow runs this as its own job (rule `pairs_table`): it needs only pairs.jsonl, so it runs
while the judge jobs do, and every aggregation run after it reads the pairs without parsing JSON
(data/pairs_file.py). The JSONL is read by the aggregation's own reader (stages/aggregate/
tables.py), so a bad line is named here, by line and field, as the aggregation would name it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from salmon_wf.data.pairs_file import write_pairs_file
from salmon_wf.stages.aggregate.tables import PAIR_SCHEMA, read_table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pairs", required=True, type=Path, help="pairs.jsonl (pair stage)")
    parser.add_argument(
        "--output", required=True, type=Path, help="pairs.arrow: the same pairs as Arrow columns"
    )


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    table = read_table(args.pairs, PAIR_SCHEMA)
    write_pairs_file(args.output, table)
    print(
        f"pairs-table: {table.num_rows} pairs written to {args.output} "
        f"({time.perf_counter() - start:.1f} s)",
        flush=True,
    )
    return 0
