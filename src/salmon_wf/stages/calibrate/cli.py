"""Calibrate the judge against OASST1's human rankings: pairs, summary, figures.

`pairs` writes sibling assistant replies with different human ranks as judge input
(pairs.jsonl form); the judge stage (`salmon-wf judge`) judges them in both orders and `gather`
gathers the shards; `summary` scores the judgments against the ranks (calibration.json);
`figures` draws calibration.json. `snakemake calibrate` runs all of it; docs/calibration.md
tells how to read the result.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import asdict
from pathlib import Path

from salmon_wf.config import add_list_option, command_defaults
from salmon_wf.data.jsonl import write_json, write_jsonl
from salmon_wf.errors import ConfigError, OasstFormatError
from salmon_wf.stages import clean
from salmon_wf.stages.aggregate.settings import Settings
from salmon_wf.stages.calibrate.pairs import Selection, select_pairs
from salmon_wf.stages.gather import read_summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="calibrate_command", required=True, metavar="STEP")
    add_pairs_arguments(sub.add_parser("pairs", help="ranked sibling pairs as judge input"))
    add_summary_arguments(sub.add_parser("summary", help="judgments against the ranks"))
    figures = sub.add_parser("figures", help="draw calibration.json")
    figures.add_argument("--calibration", required=True, type=Path, help="calibration.json")
    figures.add_argument("--output", required=True, type=Path, help="folder for the figures")


def add_pairs_arguments(parser: argparse.ArgumentParser) -> None:
    """clean-prompts' flags (--input, --output, --summary, the reading and the prompt filters,
    which choose the trees), then the choice of pairs."""
    clean.add_arguments(parser)
    helps = {"output": "calibration pairs.jsonl", "summary": "JSON counts, kept and left out"}
    for action in parser._actions:
        action.help = helps.get(action.dest, action.help)
    d = command_defaults("calibrate-pairs")  # the schema's calibrate section
    toggle = argparse.BooleanOptionalAction
    parser.add_argument("--seed", type=int, default=d["seed"], help="seed of the pair choice")
    parser.add_argument(
        "--first-turn-only",
        action=toggle,
        default=d["first_turn_only"],
        help="only replies to root prompts",
    )
    parser.add_argument(
        "--pairs-per-prompt",
        type=int,
        default=d["pairs_per_prompt"],
        help="pairs kept per prompter message (0: all)",
    )
    parser.add_argument(
        "--max-pairs", type=int, default=d["max_pairs"], help="pairs written at most"
    )


def add_summary_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pairs", required=True, type=Path, help="the calibration pairs.jsonl")
    parser.add_argument("--pairs-summary", type=Path, help="its summary (copied in)")
    parser.add_argument("--judgments", required=True, type=Path, help="gathered judgments")
    parser.add_argument("--judgments-summary", type=Path, help="their summary (copied in)")
    parser.add_argument("--principles", required=True, type=Path)
    parser.add_argument("--output", required=True, type=Path, help="calibration.json")
    parser.add_argument("--template", type=Path, help="the judging template (recorded, hashed)")
    parser.add_argument("--model", help="the judge's model directory (recorded)")
    d = Settings()  # the aggregation's settings (the schema's aggregate section)
    parser.add_argument("--seed", type=int, default=d.seed, help="the aggregation's seed")
    add_list_option(
        parser,
        "dimensions",
        None if d.dimensions is None else list(d.dimensions),
        "principles of the aggregated decision (default: the aggregation's)",
    )
    parser.add_argument("--geometric-p", type=float, default=d.geometric_p)
    parser.add_argument("--max-principles", type=int, default=d.max_principles)


def selection_from(args: argparse.Namespace) -> Selection:
    if args.pairs_per_prompt < 0:
        raise ConfigError(f"must be >= 0, got {args.pairs_per_prompt}", field="--pairs-per-prompt")
    if args.max_pairs < 1:
        raise ConfigError(f"must be >= 1, got {args.max_pairs}", field="--max-pairs")
    return Selection(
        seed=args.seed,
        first_turn_only=args.first_turn_only,
        pairs_per_prompt=args.pairs_per_prompt,
        max_pairs=args.max_pairs,
    )


def run_pairs(args: argparse.Namespace) -> int:
    selection = selection_from(args)
    prompts = clean.options_from_args(args)
    layout, split, messages = clean.read_input(args)
    records, counts = select_pairs(messages, selection, prompts)
    if not records:
        raise OasstFormatError(
            f"no pair of sibling replies with different ranks ({json.dumps(counts)})",
            file=args.input,
        )
    write_jsonl(args.output, records)
    if args.summary is not None:
        settings = {"input": str(args.input), "layout": layout, "split": split.summary()}
        settings["selection"] = asdict(selection)
        settings["prompt_filter"] = asdict(prompts)
        write_json(args.summary, counts | settings)
    line = f"{counts['pairs']} pairs of {counts['prompts']} prompts -> {args.output}"
    print(f"calibrate pairs: {line} ({counts})", flush=True)
    return 0


def read_object(path: Path | None) -> dict | None:
    """A summary file's JSON object (None when not given); as gather reads shard summaries."""
    return None if path is None else read_summary(path)


def setup(args: argparse.Namespace) -> dict[str, str]:
    """What judged: the model, and the template and principle files with their content hashes,
    so calibration files of two templates (or models) can be told apart and compared."""
    out = {"model": args.model or ""}
    for key in ("template", "principles"):
        path = getattr(args, key)
        if path is not None:
            out[key] = str(path)
            out[f"{key}_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def run_summary(args: argparse.Namespace) -> int:
    from salmon_wf.stages.calibrate.summary import summarise

    settings = Settings(
        seed=args.seed,
        dimensions=None if args.dimensions is None else tuple(args.dimensions),
        geometric_p=args.geometric_p,
        max_principles=args.max_principles,
    )
    settings.check()
    result = summarise(
        args.pairs,
        args.judgments,
        args.principles,
        settings,
        read_object(args.pairs_summary),
        read_object(args.judgments_summary),
    )
    result["setup"] = setup(args)
    write_json(args.output, result)
    for name, stats in result["principles"].items():
        agreement = stats["agreement"]
        share = "n/a" if agreement["share"] is None else f"{agreement['share']:.3f}"
        consistent = stats["consistent_share"]
        print(
            f"calibrate summary: {name}: {stats['pairs']} pairs, consistent "
            f"{'n/a' if consistent is None else f'{consistent:.3f}'}, agreement {share} "
            f"of {agreement['n']}",
            flush=True,
        )
    return 0


def run(args: argparse.Namespace) -> int:
    if args.calibrate_command == "pairs":
        return run_pairs(args)
    if args.calibrate_command == "summary":
        return run_summary(args)
    from salmon_wf.report.calibration import write_figures

    for path in write_figures(read_summary(args.calibration), args.output, args.calibration):
        print(path)
    return 0
