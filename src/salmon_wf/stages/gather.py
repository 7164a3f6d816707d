"""Gather shard outputs into one file in prompt order (then principle order for judgments).

The gathered bytes do not depend on the shard count or on the order in which prompts finished.
Responses must cover every prompt exactly once; a duplicate record is an error naming its file.
Shard summaries (the judge's counts of judged, skipped and truncated work) are merged into one.
A judgment must hold two finite scores and the preference they give: a NaN or a missing score
would later read as "not judged", so it stops the gather naming its shard and line.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

from salmon_wf.data.jsonl import read_jsonl, read_utf8, write_json, write_jsonl
from salmon_wf.data.scores_file import write_scores_file
from salmon_wf.errors import ConfigError, RecordError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompts", required=True, type=Path, help="prompts.jsonl (the order)")
    parser.add_argument("--shards", nargs="+", required=True, type=Path)
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument(
        "--principles", type=Path, help="principle file: judgments are sorted in its order"
    )
    parser.add_argument(
        "--scores",
        type=Path,
        help="with --principles: also write the judgments' id, dimension and scores as an Arrow "
        "file (judgments.scores.arrow, which the aggregation reads without parsing JSON)",
    )
    parser.add_argument("--summaries", nargs="+", type=Path, help="shard summaries to merge")
    parser.add_argument("--summary", type=Path, help="merged summary (with --summaries)")


def merge_summaries(paths: list[Path]) -> dict[str, Any]:
    """Counts summed, lists joined in shard order; other values (settings) must agree."""
    merged: dict[str, Any] = {"shards": len(paths)}
    for path in paths:
        for key, value in read_summary(path).items():
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


def read_summary(path: Path) -> dict[str, Any]:
    """One shard's summary: a JSON object."""
    try:
        value = json.loads(read_utf8(path))
    except json.JSONDecodeError as exc:
        what = f"invalid JSON at column {exc.colno} ({exc.msg})"
        raise RecordError(what, file=path, line=exc.lineno) from exc
    if not isinstance(value, dict):
        raise RecordError("expected a JSON object (a shard summary)", file=path)
    return value


def judgment_problem(record: dict[str, Any]) -> str | None:
    """What is wrong with a judgment's relative_score and preference, or None."""
    scores = record.get("relative_score")
    numbers = isinstance(scores, list) and all(
        isinstance(s, int | float) and not isinstance(s, bool) for s in scores
    )
    if not numbers or len(scores) != 2:
        return f"field 'relative_score' must be a list of two numbers [s12, s21], got {scores!r}"
    if not all(math.isfinite(s) for s in scores):
        return f"field 'relative_score' must be finite, got {scores!r}"
    s12, s21 = scores
    expected = 1 if s12 > 0 and s21 > 0 else 2 if s12 < 0 and s21 < 0 else 0
    if record.get("preference") != expected or isinstance(record.get("preference"), bool):
        return f"field 'preference' is {record.get('preference')!r}, the scores give {expected}"
    return None


def prompt_order(prompts: Path) -> dict[str, int]:
    """Each prompt id's position in prompts.jsonl: the order every gathered file follows."""
    order = {}
    for i, record in enumerate(read_jsonl(prompts, required=("id",))):
        if not isinstance(record["id"], str):
            raise RecordError(f"record {i + 1}: field 'id' must be a string", file=prompts)
        order[record["id"]] = i
    return order


def read_shards(
    shards: list[Path],
    prompts: Path,
    order: dict[str, int],
    required: tuple[str, ...],
    key: Callable[[dict], Hashable],
    problem: Callable[[dict], str | None] = lambda record: None,
) -> tuple[list[dict], set[Hashable]]:
    """The shards' records and their keys; an unknown id, a repeated key or a `problem` names
    its shard."""
    seen: dict[Hashable, Path] = {}
    records = []
    for shard in shards:
        for record in read_jsonl(shard, required=required):
            if not isinstance(record["id"], str) or record["id"] not in order:
                raise RecordError(f"{shard}: id {record['id']!r} is not in {prompts}")
            if (what := problem(record)) is not None:
                raise RecordError(f"{shard}: {what}")
            k = key(record)
            if k in seen:
                raise RecordError(f"{shard}: duplicate record {k!r} (also in {seen[k]})")
            seen[k] = shard
            records.append(record)
    return records, set(seen)


def gather_responses(prompts: Path, shards: list[Path]) -> list[dict]:
    """One sampling run's responses in prompt order: every prompt exactly once."""
    order = prompt_order(prompts)
    records, seen = read_shards(shards, prompts, order, ("id",), lambda r: r["id"])
    missing = [k for k in order if k not in seen]
    if missing:
        raise RecordError(
            f"{len(missing)} prompt(s) have no response in {len(shards)} shard(s), "
            f"e.g. {missing[:3]}",
            file=prompts,
        )
    records.sort(key=lambda r: order[r["id"]])
    return records


def gather_judgments(prompts: Path, shards: list[Path], principles: Path) -> list[dict]:
    """Judgments in prompt order, then principle order; a skipped pair has none (no error)."""
    from salmon_wf.data.principles import load_principles

    order = prompt_order(prompts)
    dims = {p.dimension: i for i, p in enumerate(load_principles(principles))}

    def unknown_dimension(record: dict) -> str | None:
        dimension = record["dimension"]
        if not isinstance(dimension, str) or dimension not in dims:
            return f"dimension {dimension!r} not in {principles}"
        return judgment_problem(record)

    records, _ = read_shards(
        shards,
        prompts,
        order,
        ("id", "dimension"),
        lambda r: (r["id"], r["dimension"]),
        unknown_dimension,
    )
    records.sort(key=lambda r: (order[r["id"]], dims[r["dimension"]]))
    return records


def run(args: argparse.Namespace) -> int:
    if args.scores is not None and args.principles is None:
        raise ConfigError("needs --principles (scores are written for judgments)", field="--scores")
    if args.principles is None:
        records = gather_responses(args.prompts, args.shards)
    else:
        records = gather_judgments(args.prompts, args.shards, args.principles)
    count = write_jsonl(args.output, records)
    print(f"gathered {count} records from {len(args.shards)} shard(s) into {args.output}")
    if args.scores is not None:
        write_scores_file(args.scores, records)
        print(f"scores of {count} judgments -> {args.scores}")
    if args.summaries:
        if args.summary is None:
            raise ConfigError("needs --summary", field="--summaries")
        merged = merge_summaries(args.summaries)
        write_json(args.summary, merged)
        print(f"summary: {merged} -> {args.summary}")
    return 0
