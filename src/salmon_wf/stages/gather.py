"""Gather shard outputs into one file in prompt order (then principle order for judgments).

The gathered bytes do not depend on the shard count or on the order in which prompts finished.
Responses must cover every prompt exactly once; a duplicate record is an error naming its file.
Shard summaries (the judge's counts of judged, skipped and truncated work) are merged into one.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from salmon_wf.data.jsonl import read_jsonl, write_json, write_jsonl
from salmon_wf.errors import ConfigError, RecordError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompts", required=True, type=Path, help="prompts.jsonl (the order)")
    parser.add_argument("--shards", nargs="+", required=True, type=Path)
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument(
        "--principles", type=Path, help="principle file: judgments are sorted in its order"
    )
    parser.add_argument("--summaries", nargs="+", type=Path, help="shard summaries to merge")
    parser.add_argument("--summary", type=Path, help="merged summary (with --summaries)")


def merge_summaries(paths: list[Path]) -> dict[str, Any]:
    """Counts summed, lists joined in shard order; other values (settings) must agree."""
    merged: dict[str, Any] = {"shards": len(paths)}
    for path in paths:
        for key, value in json.loads(path.read_text(encoding="utf-8")).items():
            if key not in merged:
                merged[key] = value
            elif isinstance(value, bool) or not isinstance(value, int | list):
                if merged[key] != value:
                    raise RecordError(
                        f"{path}: {key} is {value!r}, another shard's {merged[key]!r}"
                    )
            else:
                merged[key] = merged[key] + value
    return merged


def gather(prompts: Path, shards: list[Path], principles: Path | None = None) -> list[dict]:
    order = {r["id"]: i for i, r in enumerate(read_jsonl(prompts, required=("id",)))}
    dims: dict[str, int] = {}
    if principles is not None:
        from salmon_wf.data.principles import load_principles

        dims = {p.dimension: i for i, p in enumerate(load_principles(principles))}
    seen: dict[tuple[str, str], Path] = {}
    records = []
    for shard in shards:
        required = ("id", "dimension") if principles else ("id",)
        for record in read_jsonl(shard, required=required):
            key = (record["id"], record.get("dimension", ""))
            if record["id"] not in order:
                raise RecordError(f"{shard}: id {record['id']!r} is not in {prompts}")
            if key in seen:
                raise RecordError(f"{shard}: duplicate record {key} (also in {seen[key]})")
            if principles is not None and record["dimension"] not in dims:
                raise RecordError(f"{shard}: dimension {record['dimension']!r} not in {principles}")
            seen[key] = shard
            records.append(record)
    if principles is None:
        missing = [k for k in order if (k, "") not in seen]
        if missing:
            raise RecordError(f"{len(missing)} prompt(s) have no response, e.g. {missing[:3]}")
    records.sort(key=lambda r: (order[r["id"]], dims.get(r.get("dimension", ""), 0)))
    return records


def run(args: argparse.Namespace) -> int:
    records = gather(args.prompts, args.shards, args.principles)
    count = write_jsonl(args.output, records)
    print(f"gathered {count} records from {len(args.shards)} shard(s) into {args.output}")
    if args.summaries:
        if args.summary is None:
            raise ConfigError("needs --summary", field="--summaries")
        merged = merge_summaries(args.summaries)
        write_json(args.summary, merged)
        print(f"summary: {merged} -> {args.summary}")
    return 0
