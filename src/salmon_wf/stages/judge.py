"""Judge response pairs under every principle, in both orders, for one shard (resumable).

The pairs come from `salmon-wf pair` (joined by prompt id, short ones dropped). For each pair,
principle and order the judging prompt is built from the template, and the model's next-token
logits for "a" and "b" after "Output (" give SALMON's relative scores:
s12 = logit(a) - logit(b) with A = output_1, s21 = logit(b) - logit(a) with A = output_2;
preference 1 if both > 0, 2 if both < 0, else 0 (position-inconsistent).

Judging prompts have their own limit (--max-length; SALMON: 1536 tokens, left truncation, so a
long prompt loses its head, BOS included). A pair with a prompt that does not fit under
--long-prompt-policy skip is not judged; each record says which of its two prompts were
truncated, and --summary counts both, so nothing is dropped or cut silently.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

from salmon_wf.config import add_list_option, command_defaults
from salmon_wf.data.jsonl import read_utf8, write_json
from salmon_wf.data.principles import Principle, load_principles
from salmon_wf.engine.context import fit_prompt
from salmon_wf.engine.scorer import PrefixScorer
from salmon_wf.errors import ConfigError, TemplateError
from salmon_wf.killpoint import kill_point
from salmon_wf.model.tokenizer import Tokenizer
from salmon_wf.progress import Progress
from salmon_wf.stages.common import (
    Termination,
    add_model_arguments,
    add_shard_arguments,
    resume,
    shard_items,
    start_rank,
)
from salmon_wf.stages.pair import Pair, read_pairs

PLACEHOLDERS = ("UserInstruction", "OutputA", "OutputB", "Dimension", "Definition")
_PLACEHOLDER = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")
_ANY_PLACEHOLDER = re.compile(r"\{([A-Za-z_]\w*)\}")  # what str.format (SALMON's) would fill


def load_template(path: Path, answer_context: str) -> str:
    """The judging template; it must end with the answer context (e.g. "Output (").

    Every {Name} must be one of PLACEHOLDERS: a misspelt one would reach the model as text.
    """
    template = read_utf8(path, TemplateError).rstrip("\n")
    if not template.strip():
        raise TemplateError("the template is empty", file=path)
    unknown = sorted({m for m in _ANY_PLACEHOLDER.findall(template) if m not in PLACEHOLDERS})
    if unknown:
        names = ", ".join("{" + name + "}" for name in unknown)
        raise TemplateError(
            f"unknown placeholder(s) {names} (known: {', '.join(PLACEHOLDERS)})", file=path
        )
    missing = [p for p in ("OutputA", "OutputB") if "{" + p + "}" not in template]
    if missing:
        raise TemplateError(f"lacks placeholder(s) {', '.join(missing)}", file=path)
    if not template.endswith(answer_context):
        raise TemplateError(f"must end with {answer_context!r}", file=path)
    return template


def render(template: str, values: dict[str, str]) -> str:
    """Single-pass substitution: text inserted for one placeholder is never scanned again."""
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def pair_prompts(pair: Pair, principles: list[Principle], template: str) -> list[str]:
    """2 x len(principles) prompts: order (1, 2) for every principle, then order (2, 1)."""
    instruction = pair.instruction if not pair.input else f"{pair.instruction}\n\n{pair.input}"
    texts = []
    for a, b in ((pair.output_1, pair.output_2), (pair.output_2, pair.output_1)):
        for p in principles:
            values = {"UserInstruction": instruction, "OutputA": a, "OutputB": b}
            values |= {"Dimension": p.dimension, "Definition": p.definition}
            texts.append(render(template, values))
    return texts


def template_head(tokenizer: Tokenizer, template: str, bos: bool) -> list[int]:
    """Tokens every judging prompt starts with: the template before its first placeholder.

    The last token is dropped so a merge across the boundary cannot make it differ from the
    prompts' own tokenisation (the scorer checks, and runs without it if it still differs).
    """
    first = _PLACEHOLDER.search(template)
    head = template[: first.start()] if first else template
    return tokenizer.encode(head, bos=bos)[:-1]


def decide(s12: float, s21: float) -> int:
    if s12 > 0 and s21 > 0:
        return 1
    if s12 < 0 and s21 < 0:
        return 2
    return 0


def answer_ids(tokenizer: Tokenizer, context: str, choices: tuple[str, str]) -> list[int]:
    ids = [tokenizer.id_after(context, c) for c in choices]
    if ids[0] == ids[1]:
        raise ConfigError(f"{choices} map to the same token after {context!r}", field="--choices")
    return ids


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add_shard_arguments(parser)
    parser.add_argument("--pairs", required=True, type=Path, help="pairs.jsonl (salmon-wf pair)")
    parser.add_argument("--principles", required=True, type=Path)
    parser.add_argument("--template", required=True, type=Path)
    parser.add_argument("--output", required=True, type=Path, help="this shard's judgments")
    d = command_defaults("judge")  # the schema's judge section
    parser.set_defaults(long_prompt_policy=d["long_prompt_policy"])
    parser.add_argument(
        "--answer-context", default=d["answer_context"], help="text the choice follows"
    )
    add_list_option(parser, "choices", d["choices"], "the two choice pieces (give twice)")
    parser.add_argument(
        "--add-bos",
        action=argparse.BooleanOptionalAction,
        default=d["add_bos"],
        help="prefix prompts with the tokenizer's BOS (--no-bos: the same as --no-add-bos)",
    )
    parser.add_argument("--no-bos", dest="add_bos", action="store_false", help=argparse.SUPPRESS)
    parser.add_argument(
        "--max-rows", type=int, default=d["max_rows"], help="rows of one forward batch"
    )
    parser.add_argument(
        "--max-length",
        type=int,
        default=d["max_length"],
        help="judging prompt limit in tokens (default: the context)",
    )
    parser.add_argument("--summary", type=Path, help="JSON counts: judged, skipped, truncated")


def judge_limit(context: int, max_length: int | None) -> int:
    """The judging prompt limit: --max-length, within what the model's context can run."""
    return context if max_length is None else min(max_length, context)


def count_truncated(records: list[dict]) -> tuple[int, int]:
    """(judgments with a truncated prompt, truncated prompts) of judge records."""
    flags = [r.get("truncated", [False, False]) for r in records]
    return sum(any(f) for f in flags), sum(sum(f) for f in flags)


def run(args: argparse.Namespace) -> int:
    principles = load_principles(args.principles)
    template = load_template(args.template, args.answer_context)
    pairs = shard_items(read_pairs(args.pairs), args.shard, args.num_shards)
    ctx, loaded = start_rank(args)
    tok = loaded.tokenizer
    choices = tuple(args.choices)
    if len(choices) != 2:
        raise ConfigError(f"must be given exactly twice, got {choices}", field="--choices")
    ids = answer_ids(tok, args.answer_context, choices)

    def complete_pairs(records: list[dict]) -> list[dict]:
        """Records of the pairs an earlier run judged under every principle (the rest redone)."""
        per_pair = Counter(r["id"] for r in records)
        return [r for r in records if per_pair[r["id"]] == len(principles)]

    out, kept = resume(args.output, args.fingerprint, ctx, complete_pairs)
    complete = {r["id"] for r in kept}
    todo = [p for p in pairs if p.id not in complete]
    bos = tok.add_bos and args.add_bos
    scorer = PrefixScorer(loaded.model, args.max_rows, template_head(tok, template, bos))
    limit = judge_limit(loaded.model.args.max_seq_len, args.max_length)
    label = f"judge shard {args.shard + 1}/{args.num_shards}"
    progress = Progress(label, len(pairs), len(pairs) - len(todo), ctx.is_main, unit="pairs")
    scored = 0  # prompt tokens this run scored
    skipped: list[str] = []
    n = len(principles)
    term = Termination(ctx)
    written = 0
    for pair in todo:  # one pair per call: its scores do not depend on its neighbours
        if term.requested():
            return term.stop(label, out, written, len(complete))
        encoded = [tok.encode(t, bos=bos) for t in pair_prompts(pair, principles, template)]
        fitted = [fit_prompt(e, limit, args.long_prompt_policy) for e in encoded]
        scored += sum(len(f.ids) for f in fitted if f.ids is not None)
        progress.update(tokens=scored)
        if any(f.ids is None for f in fitted):
            skipped.append(pair.id)
            continue
        logits = scorer.score([f.ids for f in fitted], ids).tolist()
        records = []
        for j, principle in enumerate(principles):
            (a12, b12), (a21, b21) = logits[j], logits[n + j]
            s12, s21 = a12 - b12, b21 - a21
            records.append(
                {
                    "id": pair.id,
                    "dimension": principle.dimension,
                    "relative_score": [s12, s21],
                    "preference": decide(s12, s21),
                    "logits_12": [a12, b12],
                    "logits_21": [a21, b21],
                    "truncated": [fitted[j].truncated, fitted[n + j].truncated],
                }
            )
        out.append(records)
        kept.extend(records)
        written += 1
        kill_point("shard.append")  # a test hook (killpoint.py); nothing when unset
    if ctx.is_main:
        judgments, prompts = count_truncated(kept)
        summary = {"shard_pairs": len(pairs), "resumed": len(complete)}
        summary |= {"judged_pairs": len(pairs) - len(skipped), "skipped_pairs": len(skipped)}
        summary |= {"truncated_judgments": judgments, "truncated_prompts": prompts}
        summary["settings"] = {"max_length": limit, "long_prompt_policy": args.long_prompt_policy}
        print(f"[{label}] done: {summary | scorer.stats}", flush=True)
        if args.summary is not None:
            write_json(args.summary, summary | {"skipped_ids": skipped})
    position = {p.id: i for i, p in enumerate(pairs)}
    out.finish(order=lambda record: position[record["id"]])  # pair order, then principle order
    return 0
