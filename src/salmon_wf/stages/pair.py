"""Pair the two sampling runs by prompt id, once, for every judge shard to read.

A pair joins run 0's and run 1's record of the same prompt id (never their text), in run 0's
order. It is dropped, and counted, when the id is in one run only, when either generation was
skipped (prompt too long), or when either text is shorter than --min-chars: the cleaned
response (--min-chars-of clean) or, as SALMON does, the raw generation (--min-chars-of raw).
Judge shards take pairs[i::n] of this file, so every shard agrees on the pairs and their order.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from pathlib import Path

from salmon_wf.config import command_defaults
from salmon_wf.data.jsonl import read_jsonl, write_json, write_jsonl

RESPONSE_FIELDS = ("id", "instruction", "response")


@dataclass(frozen=True)
class Pair:
    id: str
    instruction: str
    input: str
    output_1: str
    output_2: str


MIN_CHARS_OF = {"clean": "response", "raw": "generation"}


def make_pairs(
    run0: Path, run1: Path, min_chars: int, of: str = "clean"
) -> tuple[list[Pair], dict[str, int]]:
    """Pairs in run 0's order, joined by id; counts of what was dropped and why."""
    field = MIN_CHARS_OF[of]
    required = (*RESPONSE_FIELDS, field)
    first = {r["id"]: r for r in read_jsonl(run0, required=required)}
    second = {r["id"]: r for r in read_jsonl(run1, required=required)}
    counts = {"pairs": 0, "only_in_one_run": len(first.keys() ^ second.keys())}
    counts |= {"skipped_generation": 0, "too_short": 0}
    pairs = []
    for key, a in first.items():
        b = second.get(key)
        if b is None:
            continue
        if "skipped" in (a.get("finish_reason"), b.get("finish_reason")):
            counts["skipped_generation"] += 1
        elif min(len(a[field]), len(b[field])) < min_chars:
            counts["too_short"] += 1
        else:
            pairs.append(
                Pair(key, a["instruction"], a.get("input", ""), a["response"], b["response"])
            )
    counts["pairs"] = len(pairs)
    return pairs, counts


def read_pairs(path: Path) -> list[Pair]:
    fields = tuple(Pair.__dataclass_fields__)
    return [Pair(**{k: r[k] for k in fields}) for r in read_jsonl(path, required=fields)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--responses", nargs=2, required=True, type=Path, metavar=("RUN0", "RUN1"))
    d = command_defaults("pair")  # the schema's judge.min_chars, judge.min_chars_of
    parser.add_argument(
        "--min-chars", type=int, default=d["min_chars"], help="shorter responses: pair dropped"
    )
    parser.add_argument(
        "--min-chars-of",
        choices=sorted(MIN_CHARS_OF),
        default=d["min_chars_of"],
        help="what --min-chars measures: the cleaned response or the raw generation (SALMON)",
    )
    parser.add_argument("--output", required=True, type=Path, help="pairs.jsonl")
    parser.add_argument("--summary", type=Path, help="JSON file of the counts")


def run(args: argparse.Namespace) -> int:
    pairs, counts = make_pairs(
        args.responses[0], args.responses[1], args.min_chars, args.min_chars_of
    )
    write_jsonl(args.output, (asdict(p) for p in pairs))
    if args.summary is not None:
        # "dropped": every count but "pairs" is a reason a pair was dropped before judging
        # (the aggregation reports them under these names).
        dropped = {reason: n for reason, n in counts.items() if reason != "pairs"}
        settings = {"min_chars": args.min_chars, "min_chars_of": args.min_chars_of}
        write_json(args.summary, counts | {"dropped": dropped} | settings)
    print(f"pair: {counts} -> {args.output}", flush=True)
    return 0
