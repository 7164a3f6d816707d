"""Account for every OASST1 message and prompt: kept or dropped, and why, at every stage.

The ledger is read off what the stages already wrote (their summaries, and the id / status
fields of their outputs), so it adds no work to them and cannot disagree with them silently:
each stage's counts must add up (what came in = what was kept + each drop reason) and must
match the next stage's input. A count that does not close is a bug somewhere upstream; the
command then stops with one line naming every broken identity and writes nothing.

Per prompt (each id of prompts.jsonl) the ledger records its final fate; roots dropped by the
cleaning and replies no root reaches are counted only (their summary holds no ids).
docs/ledger.md lists the fields.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from typing import Any

from salmon_wf.data.jsonl import read_jsonl, read_utf8, write_json
from salmon_wf.data.principles import load_principles
from salmon_wf.errors import RecordError

# A prompt's final status: where it left the pipeline, or "example" when at least one
# preference example was written for it.
EXAMPLE = "example"
NO_EXAMPLE = "aggregate:no_example"  # judged, but every pass skipped it (or the join dropped it)
JUDGE_SKIPPED = "judge:skipped_too_long"


def read_object(path: Path) -> dict[str, Any]:
    """A stage summary: one JSON object."""
    try:
        value = json.loads(read_utf8(path))
    except json.JSONDecodeError as exc:
        raise RecordError(
            f"invalid JSON at column {exc.colno}", file=path, line=exc.lineno
        ) from exc
    if not isinstance(value, dict):
        raise RecordError("expected a JSON object (a stage summary)", file=path)
    return value


def sampling_counts(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """One run's counts (responses, skipped / truncated prompts, finish reasons) and each id's
    finish reason."""
    reasons: dict[str, str] = {}
    truncated = 0
    for record in read_jsonl(path, required=("id",)):
        reasons[record["id"]] = str(record.get("finish_reason"))
        truncated += bool(record.get("truncated"))
    finish = dict(sorted(Counter(reasons.values()).items()))
    counts = {
        "responses": len(reasons),
        "skipped_too_long": finish.get("skipped", 0),
        "truncated_prompts": truncated,
        "finish_reason": finish,
    }
    return counts, reasons


def judgment_counts(path: Path) -> dict[str, int]:
    """Judgment lines and how many are position-consistent (preference 1 or 2) or not (0)."""
    preference = Counter(int(r["preference"]) for r in read_jsonl(path, required=("preference",)))
    consistent = preference[1] + preference[2]
    return {
        "judgments": consistent + preference[0],
        "consistent": consistent,
        "inconsistent": preference[0],
    }


def identity(name: str, left: int, right: int) -> dict[str, Any]:
    return {"identity": name, "left": left, "right": right, "ok": left == right}


def build_ledger(
    prompts: Path,
    prompts_summary: Path,
    responses: list[Path],
    pairs: Path,
    pairs_summary: Path,
    judgments: Path,
    judgments_summary: Path,
    principles: Path,
    preferences: Path,
    stats_path: Path,
) -> dict[str, Any]:
    """The ledger: every stage's counts, the identities between them, each prompt's fate."""
    clean = read_object(prompts_summary)
    pair_summary = read_object(pairs_summary)
    judge = read_object(judgments_summary)
    stats = read_object(stats_path)
    prompt_ids = [r["id"] for r in read_jsonl(prompts, required=("id",))]
    pair_ids = [r["id"] for r in read_jsonl(pairs, required=("id",))]
    n_principles = len(load_principles(principles))
    examples_of = Counter(r["id"] for r in read_jsonl(preferences, required=("id",)))

    lost = clean["messages_dropped"]
    messages = {
        "in": clean["n_messages"],
        "roots": clean["n_roots"],
        "replies": clean["n_replies"],
        "dropped": dict(lost),
    }
    roots = {"in": clean["n_roots"], "prompts": clean["n_prompts"], "dropped": clean["dropped"]}
    checks = [
        identity(
            "messages in = roots + replies + replies dropped",
            messages["in"],
            messages["roots"] + messages["replies"] + sum(lost.values()),
        ),
        identity(
            "roots = prompts + roots dropped",
            roots["in"],
            roots["prompts"] + sum(roots["dropped"].values()),
        ),
        identity("prompts (summary) = prompts.jsonl lines", clean["n_prompts"], len(prompt_ids)),
    ]

    sampling: dict[str, Any] = {}
    finish: list[dict[str, str]] = []
    for path in responses:
        counts, reasons = sampling_counts(path)
        run = path.stem
        sampling[run] = {"prompts": len(prompt_ids)} | counts
        finish.append(reasons)
        checks.append(identity(f"{run}: prompts = responses", len(prompt_ids), len(reasons)))

    dropped_pairs = pair_summary["dropped"]
    pairing = {"prompts": len(prompt_ids), "pairs": pair_summary["pairs"], "dropped": dropped_pairs}
    checks += [
        identity(
            "prompts = pairs + pairs dropped",
            len(prompt_ids),
            pair_summary["pairs"] + sum(dropped_pairs.values()),
        ),
        identity("pairs (summary) = pairs.jsonl lines", pair_summary["pairs"], len(pair_ids)),
    ]

    judged = judge["judged_pairs"]
    skipped = judge["skipped_pairs"]
    lines = judgment_counts(judgments)
    judging = {
        "pairs": len(pair_ids),
        "judged": judged,
        "skipped_too_long": skipped,
        "principles": n_principles,
        **lines,
        "truncated_judgments": judge["truncated_judgments"],
        "truncated_prompts": judge["truncated_prompts"],
        "long_prompt_policy": judge["settings"]["long_prompt_policy"],
        "max_length": judge["settings"]["max_length"],
    }
    checks += [
        identity("pairs = judged + skipped", len(pair_ids), judged + skipped),
        identity("judged x principles = judgments", judged * n_principles, lines["judgments"]),
        identity(
            "judgments = consistent + inconsistent",
            lines["judgments"],
            lines["consistent"] + lines["inconsistent"],
        ),
        identity("skipped pairs = skipped ids", skipped, len(judge["skipped_ids"])),
    ]

    own = {k: v for k, v in stats["pairs_dropped"].items() if k not in dropped_pairs}
    passes = stats["parameters"]["passes"]
    flips = stats["noise_flips_by_decision"]
    aggregation = {
        "pairs": stats["pairs"],
        "judgments": stats["judgments"],
        "pairs_kept": stats["pairs_kept"],
        "pairs_dropped": own,
        "passes": passes,
        "candidates": stats["candidates"],
        "examples": stats["examples"],
        "skipped": stats["skipped"],
        "rule": stats["rule"],
        "noise_flips": stats["noise_flips"],
        "noise_flips_by_decision": flips,
        "examples_written": examples_of.total(),
    }
    checks += [
        identity("aggregation pairs = pairs.jsonl lines", stats["pairs"], len(pair_ids)),
        identity("aggregation judgments = judgments lines", stats["judgments"], lines["judgments"]),
        identity(
            "pairs = kept + aggregation drops",
            stats["pairs"],
            stats["pairs_kept"] + sum(own.values()),
        ),
        identity("skipped pairs = pairs without judgments", skipped, own.get("no_judgments", 0)),
        identity(
            "candidates = kept pairs x passes", stats["candidates"], stats["pairs_kept"] * passes
        ),
        identity(
            "candidates = examples + skips",
            stats["candidates"],
            stats["examples"] + sum(stats["skipped"].values()),
        ),
        identity(
            "examples = sum over rule decisions", stats["examples"], sum(stats["rule"].values())
        ),
        identity("noise flips = principle + rule flips", stats["noise_flips"], sum(flips.values())),
        identity("examples = preferences lines", stats["examples"], examples_of.total()),
    ]

    fates = prompt_fates(prompt_ids, set(pair_ids), finish, set(judge["skipped_ids"]), examples_of)
    by_status = dict(sorted(Counter(fates.values()).items()))
    for reason in dropped_pairs:
        checks.append(
            identity(
                f"prompts with pair:{reason} = pairs dropped ({reason})",
                by_status.get(f"pair:{reason}", 0),
                dropped_pairs[reason],
            )
        )
    checks += [
        identity(
            "prompts with judge:skipped = skipped pairs", by_status.get(JUDGE_SKIPPED, 0), skipped
        ),
        identity(
            "prompts with an example or none = kept-or-dropped judged pairs",
            by_status.get(EXAMPLE, 0) + by_status.get(NO_EXAMPLE, 0),
            judged,
        ),
        identity("statuses = prompts", sum(by_status.values()), len(prompt_ids)),
    ]
    return {
        "messages": messages,
        "roots": roots,
        "sampling": sampling,
        "pairing": pairing,
        "judging": judging,
        "aggregation": aggregation,
        "checks": checks,
        "ok": all(c["ok"] for c in checks),
        "prompt_status": by_status,
        "prompts": fates,
    }


def prompt_fates(
    prompt_ids: list[str],
    paired: set[str],
    finish: list[dict[str, str]],
    skipped: set[str],
    examples_of: Counter[str],
) -> dict[str, str]:
    """Each prompt id -> its final status, in prompts.jsonl order.

    A prompt not paired lost its pair to a skipped generation or, failing that, to a response
    under the length limit (pair.py's order); its counts are checked against pairs.summary.
    """
    fates = {}
    for key in prompt_ids:
        if key not in paired:
            if any(key not in run for run in finish):
                fates[key] = "pair:only_in_one_run"
            elif any(run[key] == "skipped" for run in finish):
                fates[key] = "pair:skipped_generation"
            else:
                fates[key] = "pair:too_short"
        elif key in skipped:
            fates[key] = JUDGE_SKIPPED
        elif examples_of[key]:
            fates[key] = EXAMPLE
        else:
            fates[key] = NO_EXAMPLE
    return fates


def add_arguments(parser: argparse.ArgumentParser) -> None:
    path = {"type": Path, "required": True}
    parser.add_argument("--prompts", **path, help="prompts.jsonl")
    parser.add_argument("--prompts-summary", **path, help="prompts.summary.json")
    parser.add_argument("--responses", **path, nargs="+", help="each run's responses/<run>.jsonl")
    parser.add_argument("--pairs", **path, help="pairs.jsonl")
    parser.add_argument("--pairs-summary", **path, help="pairs.summary.json")
    parser.add_argument("--judgments", **path, help="judgments.jsonl")
    parser.add_argument("--judgments-summary", **path, help="judgments.summary.json")
    parser.add_argument("--principles", **path, help="the principle file the judge used")
    parser.add_argument("--preferences", **path, help="preferences.jsonl")
    parser.add_argument("--stats", **path, help="preferences.stats.json")
    parser.add_argument("--output", **path, help="ledger.json to write")


def run(args: argparse.Namespace) -> int:
    ledger = build_ledger(
        args.prompts,
        args.prompts_summary,
        args.responses,
        args.pairs,
        args.pairs_summary,
        args.judgments,
        args.judgments_summary,
        args.principles,
        args.preferences,
        args.stats,
    )
    broken = [
        f"{c['identity']} ({c['left']} != {c['right']})" for c in ledger["checks"] if not c["ok"]
    ]
    if broken:
        raise RecordError(f"the counts do not add up: {'; '.join(broken)}")
    write_json(args.output, ledger)
    status = ", ".join(f"{k} {v}" for k, v in ledger["prompt_status"].items())
    print(f"ledger: {len(ledger['checks'])} identities hold; prompts: {status} -> {args.output}")
    return 0
