"""The calibration summary: the judge scored against OASST1's human rankings.

Per principle (over the pairs judged): position consistency (s12 and s21 of one sign; the
inconsistent ones counted by the position, (a) or (b), they picked in both orders), agreement
with the human-better reply among the consistent judgments, and agreement of the sign of the
pair score (s12 + s21) / 2 with the rank, each with a 95% Wilson score interval, overall, per
language (the prompt's OASST1 `lang`) and per rank gap. The aggregated decision is SALMON's:
each principle's scores normalised by its variance (aggregate/maths.normalise), the dominant
principle's sign decides (aggregate/maths.decide), with negation, the order bit, the two rules
and label noise off. Two versions: "all_principles" (the dominant among every used principle)
and "salmon_draw" (the principles of one pass of the aggregation's draws, seeded as it is).

The interval is Wilson's (not the normal approximation, which gives [1, 1] at 10 of 10):
(p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n), z = 1.959964 (two-sided 95%).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from salmon_wf.data.jsonl import decoded_lines, parse_record
from salmon_wf.data.principles import load_principles
from salmon_wf.errors import RecordError
from salmon_wf.stages.aggregate.maths import Draws, decide, draw, normalise
from salmon_wf.stages.aggregate.settings import Settings, resolve_dimensions
from salmon_wf.stages.gather import judgment_problem

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile
INTERVAL = "Wilson score interval, 95% (z = 1.959964)"


def wilson(successes: int, n: int, z: float = Z95) -> list[float] | None:
    """The Wilson score interval [low, high] of a proportion; None when n is 0."""
    if n == 0:
        return None
    if not 0 <= successes <= n:
        raise ValueError(f"{successes} successes of {n}")
    p = successes / n
    z2 = z * z
    centre = p + z2 / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    scale = 1 + z2 / n
    # exact ends at 0 and n of n (the formula lands an ulp past the share there: 0 of 3 gives
    # 5e-17), and never an interval that leaves out its own share
    low = 0.0 if successes == 0 else min(p, (centre - half) / scale)
    high = 1.0 if successes == n else max(p, (centre + half) / scale)
    return [low, high]


def proportion(successes: int, n: int) -> dict[str, Any]:
    """k of n, the share and its interval (share and interval None when n is 0)."""
    return {
        "n": n,
        "agree": successes,
        "share": successes / n if n else None,
        "ci95": wilson(successes, n),
    }


@dataclass(frozen=True)
class CalibrationPair:
    id: str
    better: int  # 1 or 2: which output people ranked better
    gap: int  # |rank_1 - rank_2|
    lang: str


@dataclass(frozen=True)
class Judged:
    """One pair's judgment under one principle, oriented toward the human-better reply."""

    pair: CalibrationPair
    s12: float
    s21: float
    preference: int

    @property
    def consistent(self) -> bool:
        return self.preference != 0

    @property
    def agrees(self) -> bool:
        return self.preference == self.pair.better

    @property
    def toward_better(self) -> float:
        """(s12 + s21) / 2, positive when it favours the human-better reply."""
        score = (self.s12 + self.s21) / 2
        return score if self.pair.better == 1 else -score


def read_lines(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, record) of a JSONL file; errors name the file and line."""
    with path.open("rb") as handle:
        return [
            (number, parse_record(path, number, line))
            for number, line in decoded_lines(path, handle)
            if line.strip()
        ]


def read_calibration_pairs(path: Path) -> dict[str, CalibrationPair]:
    """The pairs `calibrate pairs` wrote, by id; a bad field names the file, line and field."""
    pairs: dict[str, CalibrationPair] = {}
    for number, record in read_lines(path):
        for key in ("id", "better", "ranks", "lang"):
            if key not in record:
                raise RecordError("missing", file=path, line=number, field=key)
        pid, better, ranks = record["id"], record["better"], record["ranks"]
        if not isinstance(pid, str) or pid in pairs:
            what = "repeats an earlier pair's id" if pid in pairs else "must be a string"
            raise RecordError(f"{what}: {pid!r}", file=path, line=number, field="id")
        if better not in (1, 2) or isinstance(better, bool):
            what = f"must be 1 or 2, got {better!r}"
            raise RecordError(what, file=path, line=number, field="better")
        whole = isinstance(ranks, list) and all(type(r) is int for r in ranks)
        if not whole or len(ranks) != 2 or ranks[0] == ranks[1]:
            raise RecordError(
                f"must be two different integers, got {ranks!r}",
                file=path,
                line=number,
                field="ranks",
            )
        if (ranks[0] < ranks[1]) != (better == 1):
            raise RecordError(
                f"ranks {ranks} (0 = best) disagree with better {better}",
                file=path,
                line=number,
                field="better",
            )
        lang = record["lang"] if isinstance(record["lang"], str) and record["lang"] else "unknown"
        pairs[pid] = CalibrationPair(pid, better, abs(ranks[0] - ranks[1]), lang)
    return pairs


def read_judgments(
    path: Path, pairs: dict[str, CalibrationPair], dimensions: list[str]
) -> dict[str, list[Judged]]:
    """Each principle's judgments in file order; an unknown id or principle, a repeated record
    or bad scores name the file, line and field."""
    by_dimension: dict[str, list[Judged]] = {d: [] for d in dimensions}
    seen: set[tuple[str, str]] = set()
    for number, record in read_lines(path):
        for key in ("id", "dimension", "relative_score", "preference"):
            if key not in record:
                raise RecordError("missing", file=path, line=number, field=key)
        pid, dimension = record["id"], record["dimension"]
        if not isinstance(pid, str) or pid not in pairs:
            raise RecordError(
                f"{pid!r} is not a calibration pair", file=path, line=number, field="id"
            )
        if not isinstance(dimension, str) or dimension not in by_dimension:
            raise RecordError(
                f"{dimension!r} is not in the principle file",
                file=path,
                line=number,
                field="dimension",
            )
        if (pid, dimension) in seen:
            raise RecordError(
                f"a second judgment of pair {pid!r} under {dimension!r}",
                file=path,
                line=number,
                field="id",
            )
        seen.add((pid, dimension))
        if (problem := judgment_problem(record)) is not None:
            field, _, what = problem.removeprefix("field ").partition(" ")
            raise RecordError(what, file=path, line=number, field=field.strip("'"))
        s12, s21 = record["relative_score"]
        by_dimension[dimension].append(Judged(pairs[pid], s12, s21, record["preference"]))
    return by_dimension


def judged_stats(judged: list[Judged]) -> dict[str, Any]:
    """Consistency, agreement among the consistent, and score-sign agreement of judgments."""
    consistent = [j for j in judged if j.consistent]
    signed = [j for j in judged if j.toward_better != 0]
    toward = [j.toward_better for j in judged]
    return {
        "pairs": len(judged),
        "consistent": len(consistent),
        "consistent_share": len(consistent) / len(judged) if judged else None,
        "consistent_ci95": wilson(len(consistent), len(judged)),
        # the inconsistent ones by the position they picked in both orders (output (a) or (b))
        "position_a_both_orders": sum(j.s12 > 0 and j.s21 < 0 for j in judged),
        "position_b_both_orders": sum(j.s12 < 0 and j.s21 > 0 for j in judged),
        "agreement": proportion(sum(j.agrees for j in consistent), len(consistent)),
        "score_sign": proportion(sum(j.toward_better > 0 for j in signed), len(signed)),
        "mean_score_toward_better": float(np.mean(toward)) if toward else None,
    }


def grouped(judged: list[Judged], key: str) -> dict[str, dict[str, Any]]:
    """judged_stats per language ("lang") or per rank gap ("gap"), largest group first."""
    groups: dict[str, list[Judged]] = defaultdict(list)
    for j in judged:
        groups[str(getattr(j.pair, key))].append(j)
    if key == "gap":
        order = sorted(groups, key=int)
    else:
        order = sorted(groups, key=lambda g: (-len(groups[g]), g))
    return {g: judged_stats(groups[g]) for g in order}


def principle_stats(judged: list[Judged]) -> dict[str, Any]:
    return judged_stats(judged) | {
        "by_language": grouped(judged, "lang"),
        "by_rank_gap": grouped(judged, "gap"),
    }


def decision_settings(aggregate: Settings) -> Settings:
    """The aggregation's settings with negation, both rules and label noise off."""
    return replace(
        aggregate,
        negation_prob=0.0,
        ai_rule_prob=0.0,
        noise=0.0,
        rule_noise=0.0,
        language_rule=False,
    )


def aggregated(
    by_dimension: dict[str, list[Judged]], dims: tuple[str, ...], settings: Settings
) -> dict[str, Any]:
    """SALMON's decision (normalise, dominant principle) with negation off, against the ranks.

    Over the pairs judged under every used principle, in their first principle's file order.
    """
    per_pair: dict[str, dict[str, Judged]] = defaultdict(dict)
    for d in dims:
        for j in by_dimension[d]:
            per_pair[j.pair.id][d] = j
    ids = [pid for pid, got in per_pair.items() if len(got) == len(dims)]
    n, width = len(ids), len(dims)
    s12 = np.array([[per_pair[p][d].s12 for d in dims] for p in ids], dtype=float)
    s21 = np.array([[per_pair[p][d].s21 for d in dims] for p in ids], dtype=float)
    z, variance = normalise(s12.reshape(n, width), s21.reshape(n, width))
    pairs = [per_pair[p][dims[0]].pair for p in ids]
    plain = decision_settings(settings)
    salmon = draw(np.random.default_rng(settings.seed), n, width, plain)
    salmon.swap[:] = False  # the order bit only relabels; the truth is about the pair as read
    every = Draws(
        k=np.full(n, width),
        order=np.tile(np.arange(width), (n, 1)),
        negate=np.zeros((n, width), bool),
        swap=np.zeros(n, bool),
        ai_u=np.ones(n),
        noise_u=np.ones(n),
    )
    no_phrase = np.zeros((n, 2), bool)
    out: dict[str, Any] = {
        "dimensions": list(dims),
        "pairs": n,
        "variance": dict(zip(dims, variance.tolist(), strict=True)),
        "settings": {
            "seed": settings.seed,
            "geometric_p": settings.geometric_p,
            "max_principles": settings.max_principles,
            "negation_prob": 0.0,
            "noise": 0.0,
            "rules": "off",
        },
    }
    for name, draws in (("all_principles", every), ("salmon_draw", salmon)):
        decisions = decide(z, draws, no_phrase, None, plain)
        dominant = draws.order[np.arange(n), decisions.dominant]  # a dimension index
        rows = [
            (pair, bool(decisions.keep[i]), int(decisions.preference[i]), dims[dominant[i]])
            for i, pair in enumerate(pairs)
        ]
        out[name] = decision_stats(rows) | {
            "by_language": {
                lang: decision_stats([r for r in rows if r[0].lang == lang])
                for lang in sorted({p.lang for p in pairs}, key=lambda g: (-count(pairs, g), g))
            }
        }
    return out


def count(pairs: list[CalibrationPair], lang: str) -> int:
    return sum(p.lang == lang for p in pairs)


def decision_stats(rows: list[tuple[CalibrationPair, bool, int, str]]) -> dict[str, Any]:
    """Decided share (dominant score not 0), agreement among decided, dominant principles."""
    decided = [r for r in rows if r[1]]
    dominant: dict[str, int] = defaultdict(int)
    for r in decided:
        dominant[r[3]] += 1
    return {
        "pairs": len(rows),
        "decided": len(decided),
        "decided_share": len(decided) / len(rows) if rows else None,
        "agreement": proportion(sum(r[2] == r[0].better for r in decided), len(decided)),
        "dominant": dict(sorted(dominant.items(), key=lambda kv: (-kv[1], kv[0]))),
    }


def summarise(
    pairs_file: Path,
    judgments_file: Path,
    principles: Path,
    settings: Settings,
    selection: dict[str, Any] | None = None,
    judge: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """calibration.json's content."""
    known = [p.dimension for p in load_principles(principles)]
    dims = resolve_dimensions(known, settings.dimensions)
    pairs = read_calibration_pairs(pairs_file)
    by_dimension = read_judgments(judgments_file, pairs, known)
    judged = {j.pair.id for js in by_dimension.values() for j in js}
    languages: dict[str, int] = defaultdict(int)
    for p in pairs.values():
        languages[p.lang] += 1
    return {
        "interval": INTERVAL,
        "pairs": len(pairs),
        "pairs_judged": len(judged),
        "languages": dict(sorted(languages.items(), key=lambda kv: (-kv[1], kv[0]))),
        "principles": {d: principle_stats(by_dimension[d]) for d in known},
        "aggregate": aggregated(by_dimension, dims, settings),
        "selection": selection or {},
        "judge": judge or {},
    }
