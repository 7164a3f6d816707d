"""Aggregate judgments into SALMON reward-model preference data (JSON list, JSONL and stats).

The candidates are the pair stage's pairs (pairs.jsonl: id, instruction, input, output_1,
output_2); the judgments join them by id (never by text or position). The pairs the pair stage
dropped before judging are reported under its own reasons, read from pairs.summary.json.
A pair is kept when every used dimension has a finite (s12, s21). Each dimension's scores are
divided by the POPULATION variance (ddof=0, numpy's default, as the original) of all its s12
and s21 values over the kept pairs; a dimension whose values are all equal has no spread to
normalise by and scores 0. A pair gives a principle score only where s12 and s21 agree in sign
(mean of the two / variance), else 0.

Each of `passes` passes turns every kept pair into one candidate example (pass-major order):
k ~ Geometric(p) redrawn while k > max_principles, capped at the number of used dimensions; the
first k of a fresh shuffle of the dimensions; each negated independently; the dominant one is the
largest |score| (first in shuffled order on ties), its sign gives preference 1 or 2, and score 0
skips the candidate. An order bit swaps output_1/output_2, flips the preference and negates the
scores. Then the rules: if exactly one shown output contains --ai-phrase (case-sensitive), with
probability --ai-rule-prob prefer the other (rule "ai_language_model"); with the language rule
on, if both outputs' languages differ from the instruction's skip, if exactly one differs prefer
the other (rule "language", overriding the AI rule). A text whose language is unknown (no
letters) never counts as differing. Finally the label flips with probability --noise, or
--rule-noise when a rule decided (the label-noise flip).

Randomness: ONE np.random.default_rng(seed). Per pass, over all N kept pairs in pairs.jsonl
order, six blocks are drawn in this order: (1) k = geometric(p, N), then only the entries still
above the maximum are redrawn, in index order, until none is; (2) rng.permuted over axis 1 of an
N x D table of dimension indices; (3) random((N, D)): position j of row i negates that row's j-th
shuffled dimension when below --negation-prob; (4) random(N) < 0.5: the order bit; (5) random(N)
for the AI rule; (6) random(N) for label noise. Every candidate consumes its draws even when it
is skipped or no rule applies, so the output is a pure function of the inputs and the seed.

Records mean what SALMON's mean (its trainer and analysis read them): `dimensions`,
`negative_definitions` and `dimension_scores` are Python tuple literals ("('Concise',)",
"(0, 1)", "(0.41, -0.0)": plain ints, float repr, "(x,)" for one, -0.0 where SALMON's negation
of a zero gives it), `preference` is 1 or 2, `doinate_dimension_idx` (sic) indexes
`dimensions`, `flip` is the label-noise flip, `lang` the codes [instruction, output_1,
output_2] in the order shown ("unknown" for a text without letters), `rule_flag` whether a rule
decided. Ours beyond SALMON's: `id`, `swapped` (the order bit) and `rule` ("none",
"ai_language_model" or "language"). Outputs are written atomically (data/atomic.py).

The languages are identified here (--langid-model, --langid-max-chars, in --workers processes)
or, with --languages, read from pairs.languages.jsonl (`salmon-wf languages`, the workflow's
rule `languages`, which runs while the judge does and not again when only an aggregation
setting changes): the same codes, so the same output bytes.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from salmon_wf.config import add_list_option
from salmon_wf.data.jsonl import write_json
from salmon_wf.stages.aggregate.settings import DEFAULT_EXCLUDED, Settings
from salmon_wf.stages.aggregate.stage import aggregate
from salmon_wf.stages.languages import add_langid_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--pairs",
        required=True,
        type=Path,
        help="pairs.jsonl (pair stage), or its Arrow copy pairs.arrow (pairs-table: the same "
        "pairs, read without parsing; known by its first bytes)",
    )
    parser.add_argument(
        "--pairs-summary",
        type=Path,
        help="pairs.summary.json: the pairs dropped before judging, by the pair stage's reasons",
    )
    parser.add_argument(
        "--judgments",
        required=True,
        type=Path,
        help="judgments.jsonl, or the gather's judgments.scores.arrow (the same scores, read "
        "without parsing JSON)",
    )
    parser.add_argument("--principles", required=True, type=Path)
    parser.add_argument("--output", required=True, type=Path, help="preferences (a JSON list)")
    parser.add_argument("--output-jsonl", type=Path, help="the same records, one per line")
    parser.add_argument("--stats", type=Path, help="counts of what was kept, skipped and why")
    d = Settings()
    parser.add_argument("--seed", type=int, default=d.seed)
    add_list_option(
        parser,
        "dimensions",
        None if d.dimensions is None else list(d.dimensions),
        f"used dimensions, comma-separated or repeated (default: all but "
        f"{', '.join(DEFAULT_EXCLUDED)})",
    )
    parser.add_argument("--passes", type=int, default=d.passes)
    parser.add_argument("--geometric-p", type=float, default=d.geometric_p)
    parser.add_argument("--max-principles", type=int, default=d.max_principles)
    parser.add_argument("--negation-prob", type=float, default=d.negation_prob)
    parser.add_argument("--ai-rule-prob", type=float, default=d.ai_rule_prob)
    parser.add_argument("--ai-phrase", default=d.ai_phrase)
    parser.add_argument("--noise", type=float, default=d.noise)
    parser.add_argument("--rule-noise", type=float, default=d.rule_noise)
    parser.add_argument(
        "--language-rule", action=argparse.BooleanOptionalAction, default=d.language_rule
    )
    parser.add_argument(
        "--languages",
        type=Path,
        help="pairs.languages.jsonl (salmon-wf languages): the codes of the pairs' texts, read "
        "instead of identifying them here (the same output); --langid-* then only fill the stats",
    )
    add_langid_arguments(parser)


def settings_from(args: argparse.Namespace) -> Settings:
    return Settings(
        seed=args.seed,
        dimensions=None if args.dimensions is None else tuple(args.dimensions),
        passes=args.passes,
        geometric_p=args.geometric_p,
        max_principles=args.max_principles,
        negation_prob=args.negation_prob,
        ai_rule_prob=args.ai_rule_prob,
        ai_phrase=args.ai_phrase,
        noise=args.noise,
        rule_noise=args.rule_noise,
        language_rule=args.language_rule,
        langid_max_chars=args.langid_max_chars,
        langid_model=args.langid_model or None,
    )


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    settings = settings_from(args)
    count, stats = aggregate(
        args.pairs,
        args.pairs_summary,
        args.judgments,
        args.principles,
        settings,
        args.output,
        args.output_jsonl,
        args.workers,
        args.languages,
    )
    if args.stats is not None:
        write_json(args.stats, stats)
    elapsed = time.perf_counter() - start
    print(
        f"aggregate: {stats['pairs_kept']} pairs kept of {stats['pairs']} judged pairs, "
        f"{count} examples written to {args.output} "
        f"({elapsed:.1f} s)",
        flush=True,
    )
    if count == 0:
        print("aggregate: warning: no examples were written", flush=True)
    return 0
