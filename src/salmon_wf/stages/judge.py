"""Judge response pairs under every principle, in both orders, for one shard (resumable).

The pairs come from `salmon-wf pair` (joined by prompt id, short ones dropped). For each pair,
principle and order the judging prompt is built from the template, and the model's next-token
logits for "a" and "b" after "Output (" give SALMON's relative scores:
s12 = logit(a) - logit(b) with A = output_1, s21 = logit(b) - logit(a) with A = output_2;
preference 1 if both > 0, 2 if both < 0, else 0 (position-inconsistent).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from salmon_wf.data.jsonl import ResumableOutput
from salmon_wf.data.principles import Principle, load_principles
from salmon_wf.engine.prompts import fit_prompt
from salmon_wf.engine.scorer import PrefixScorer
from salmon_wf.model.tokenizer import Tokenizer
from salmon_wf.stages.common import Progress, add_model_arguments, barrier, shard_items, start_rank
from salmon_wf.stages.pair import Pair, read_pairs

PLACEHOLDERS = ("UserInstruction", "OutputA", "OutputB", "Dimension", "Definition")
_PLACEHOLDER = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")


def load_template(path: Path, answer_context: str) -> str:
    """The judging template; it must end with the answer context (e.g. "Output (")."""
    template = path.read_text(encoding="utf-8").rstrip("\n")
    missing = [p for p in ("OutputA", "OutputB") if "{" + p + "}" not in template]
    if missing:
        raise ValueError(f"{path}: template lacks placeholder(s) {', '.join(missing)}")
    if not template.endswith(answer_context):
        raise ValueError(f"{path}: template must end with {answer_context!r}")
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
        raise ValueError(f"choices {choices} map to the same token after {context!r}")
    return ids


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--pairs", required=True, type=Path, help="pairs.jsonl (salmon-wf pair)")
    parser.add_argument("--principles", required=True, type=Path)
    parser.add_argument("--template", required=True, type=Path)
    parser.add_argument("--output", required=True, type=Path, help="this shard's judgments")
    parser.add_argument("--answer-context", default="Output (", help="text the choice follows")
    parser.add_argument(
        "--choices", action="append", help="the two choice pieces (give twice; default a, b)"
    )
    parser.add_argument("--no-bos", action="store_true", help="do not prefix prompts with BOS")
    parser.add_argument("--max-rows", type=int, default=16, help="rows of one forward batch")


def run(args: argparse.Namespace) -> int:
    principles = load_principles(args.principles)
    template = load_template(args.template, args.answer_context)
    pairs = shard_items(read_pairs(args.pairs), args.shard, args.num_shards)
    ctx, loaded = start_rank(args)
    tok = loaded.tokenizer
    choices = tuple(args.choices or ("a", "b"))
    if len(choices) != 2:
        raise SystemExit(f"judge: --choices must be given exactly twice, got {choices}")
    ids = answer_ids(tok, args.answer_context, choices)
    out = ResumableOutput(args.output, args.fingerprint, writer=ctx.is_main)
    previous = out.existing()
    barrier()
    per_pair: dict[str, list[dict]] = {}
    for record in previous:
        per_pair.setdefault(record["id"], []).append(record)
    complete = {k for k, v in per_pair.items() if len(v) == len(principles)}
    out.start([r for r in previous if r["id"] in complete])
    todo = [p for p in pairs if p.id not in complete]
    bos = tok.add_bos and not args.no_bos
    scorer = PrefixScorer(loaded.model, args.max_rows, template_head(tok, template, bos))
    limit = loaded.model.args.max_seq_len if args.max_seq_len is None else args.max_seq_len
    label = f"judge shard {args.shard + 1}/{args.num_shards}"
    progress = Progress(label, len(pairs), done=len(pairs) - len(todo), enabled=ctx.is_main)
    too_long = truncated = 0
    n = len(principles)
    for pair in todo:  # one pair per call: its scores do not depend on its neighbours
        encoded = [tok.encode(t, bos=bos) for t in pair_prompts(pair, principles, template)]
        fitted = [fit_prompt(e, limit, args.long_prompt_policy) for e in encoded]
        progress.update()
        if any(f.ids is None for f in fitted):
            too_long += 1
            continue
        truncated += sum(f.truncated for f in fitted)
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
                }
            )
        out.append(records)
    out.finish()
    if ctx.is_main:
        summary = {"shard_pairs": len(pairs), "resumed": len(complete)}
        summary |= {"too_long": too_long, "truncated_prompts": truncated} | scorer.stats
        print(f"[{label}] done: {summary}", flush=True)
    return 0
