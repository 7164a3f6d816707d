"""Progress of a running or stopped workflow, read from its results folder alone.

Per sampling run and for the judge: each shard `shard-<i>-of-<n>` is done (its output exists),
partial (`<output>.partial` holds complete records of a running or killed job) or not started.
A shard's total is its slice of prompts.jsonl (sampling) or pairs.jsonl (judging: pairs, the
partial file's distinct ids); the calibration's judge shards likewise, once results/calibration
exists. The rate of a partial shard is its records over the time between
its stamp (`.partial.json`, written when the job started) and its last write, so the ETA is the
remaining records at that rate (records a resumed job kept count as written then: an upper
bound on the rate). No job, scheduler or config is needed.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

SHARD = re.compile(r"^shard-(\d+)-of-(\d+)\.jsonl$")
PARTIAL = re.compile(r"^shard-(\d+)-of-(\d+)\.jsonl\.partial$")


@dataclass
class Shard:
    """One shard's state: `done`, `partial` or `not started`; counts in prompts or pairs."""

    name: str
    state: str
    records: int
    total: int | None
    rate: float | None = None  # records per second while it ran
    idle_s: float | None = None  # seconds since its last write

    @property
    def eta_s(self) -> float | None:
        if self.rate is None or self.total is None or self.rate <= 0:
            return None
        return max(self.total - self.records, 0) / self.rate


def count_lines(path: Path) -> int:
    """Complete lines (ending in a newline) of a file: a torn last line is not a record."""
    with path.open("rb") as handle:
        return sum(1 for line in handle if line.endswith(b"\n"))


def distinct_ids(path: Path) -> int:
    """Distinct `id`s among the complete lines of a judge shard's file (one pair: n lines)."""
    ids = set()
    with path.open("rb") as handle:
        for line in handle:
            if not line.endswith(b"\n"):
                break
            try:
                ids.add(json.loads(line)["id"])
            except (ValueError, KeyError, TypeError):
                break
    return len(ids)


def slice_size(total: int | None, i: int, n: int) -> int | None:
    """Items in `items[i::n]` of `total` items."""
    return None if total is None else len(range(i, total, n))


def shard_states(
    folder: Path, total: int | None, count: Callable[[Path], int], now: float
) -> list[Shard]:
    """Every shard of a folder of `shard-<i>-of-<n>.jsonl` files (n from their names)."""
    if not folder.is_dir():
        return []
    found: dict[tuple[int, int], str] = {}
    for path in folder.iterdir():
        for pattern, state in ((SHARD, "done"), (PARTIAL, "partial")):
            match = pattern.match(path.name)
            if match:
                key = (int(match[1]), int(match[2]))
                if state == "done" or key not in found:
                    found[key] = state
    counts = {n for _, n in found}
    shards = []
    for n in sorted(counts):
        for i in range(n):
            name = f"shard-{i}-of-{n}"
            output = folder / f"{name}.jsonl"
            size = slice_size(total, i, n)
            state = found.get((i, n), "not started")
            if state == "done":
                shards.append(Shard(name, state, count(output), size))
            elif state == "partial":
                partial = folder / f"{name}.jsonl.partial"
                records = count(partial)
                stamp = partial.with_name(partial.name + ".json")
                written = partial.stat().st_mtime
                rate = None
                if stamp.exists() and records and written > stamp.stat().st_mtime:
                    rate = records / (written - stamp.stat().st_mtime)
                shards.append(Shard(name, state, records, size, rate, now - written))
            else:
                shards.append(Shard(name, state, 0, size))
    return shards


def duration(seconds: float) -> str:
    """`42s`, `3m05s`, `2h07m`."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def shard_line(shard: Shard, unit: str) -> str:
    """`  shard-1-of-2  partial  5/21 prompts  (0.50/s, eta 32s, last write 3s ago)`."""
    total = "?" if shard.total is None else str(shard.total)
    line = f"  {shard.name}  {shard.state:<11}  {shard.records}/{total} {unit}"
    if shard.state == "partial":
        parts = []
        if shard.rate is not None:
            parts.append(f"{shard.rate:.2f}/s")
        if shard.eta_s is not None:
            parts.append(f"eta {duration(shard.eta_s)}")
        if shard.idle_s is not None:
            parts.append(f"last write {duration(shard.idle_s)} ago")
        line += f"  ({', '.join(parts)})" if parts else ""
    return line.rstrip()


def stage_lines(title: str, shards: list[Shard], unit: str, gathered: bool) -> list[str]:
    """A stage's header (states counted, records of the whole stage) and one line per shard."""
    if not shards:
        return [f"{title}: not started"]
    states = {s: sum(1 for x in shards if x.state == s) for s in ("done", "partial", "not started")}
    records = sum(s.records for s in shards)
    totals = [s.total for s in shards]
    total = "?" if None in totals else str(sum(t for t in totals if t is not None))
    head = f"{title}: {len(shards)} shards: " + ", ".join(f"{v} {k}" for k, v in states.items())
    head += f"; {records}/{total} {unit}" + ("; gathered" if gathered else "")
    return [head] + [shard_line(s, unit) for s in shards]


def status_lines(results: Path, now: float | None = None) -> list[str]:
    """The whole report for a results folder."""
    now = time.time() if now is None else now
    if not results.is_dir():
        return [f"{results}: no results folder (the workflow has not started)"]
    lines = [f"results: {results}"]
    prompts = results / "prompts.jsonl"
    n_prompts = count_lines(prompts) if prompts.exists() else None
    lines.append(f"prompts: {n_prompts if n_prompts is not None else 'not yet cleaned'}")
    responses = results / "responses"
    runs = sorted(p.name for p in responses.iterdir() if p.is_dir()) if responses.is_dir() else []
    if not runs:
        lines.append("sample: not started")
    for run in runs:
        shards = shard_states(responses / run, n_prompts, count_lines, now)
        gathered = (responses / f"{run}.jsonl").exists()
        lines += stage_lines(f"sample {run}", shards, "prompts", gathered)
    pairs = results / "pairs.jsonl"
    n_pairs = count_lines(pairs) if pairs.exists() else None
    shards = shard_states(results / "judgments", n_pairs, distinct_ids, now)
    lines += stage_lines("judge", shards, "pairs", (results / "judgments.jsonl").exists())
    for stage, output in (
        ("languages", "pairs.languages.jsonl"),
        ("aggregate", "preferences.json"),
    ):
        done = (results / output).exists()
        lines.append(f"{stage}: {'done' if done else 'not started'}")
    calibration = results / "calibration"
    if calibration.is_dir():  # only once asked for: `snakemake calibrate` is not in rule all
        lines += calibration_lines(results, calibration, now)
    return lines


def calibration_lines(results: Path, calibration: Path, now: float) -> list[str]:
    """The calibration's judge shards (over calibration/pairs.jsonl) and whether it is done."""
    pairs = calibration / "pairs.jsonl"
    n_pairs = count_lines(pairs) if pairs.exists() else None
    shards = shard_states(calibration / "judgments", n_pairs, distinct_ids, now)
    gathered = (calibration / "judgments.jsonl").exists()
    lines = stage_lines("calibrate judge", shards, "pairs", gathered)
    done = (results / "calibration.json").exists()
    return [*lines, f"calibrate: {'done' if done else 'not finished'}"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", type=Path, default=Path("results"), help="results_dir")


def run(args: argparse.Namespace) -> int:
    print("\n".join(status_lines(args.results)))
    return 0
