"""The statistics as values: the counts of each pass, summed, and preferences.stats.json.

`pass_counts` is a pure function of one pass's draws and decisions; `report` puts every count
in the order docs/preferences.md lists them (the file's key order is part of its bytes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import reduce
from typing import Any

import numpy as np

from salmon_wf.stages.aggregate.maths import RULES, Decisions, Draws
from salmon_wf.stages.aggregate.settings import Settings


@dataclass(frozen=True)
class PassCounts:
    """What one pass (or several, added) wrote, skipped and why."""

    candidates: int
    examples: int
    zero_score: int
    language: int
    preference_1: int
    order_swaps: int
    noise_principle: int
    noise_rule: int
    negated: int
    rule: np.ndarray  # (len(RULES),) records by rule code
    dominant_dimension: np.ndarray  # (D,) records by dominant dimension index
    principles: np.ndarray  # (max_principles + 1,) records by number of principles

    def __add__(self, other: PassCounts) -> PassCounts:
        mine, theirs = vars(self), vars(other)
        return PassCounts(**{name: mine[name] + theirs[name] for name in mine})


def pass_counts(draws: Draws, out: Decisions, max_principles: int) -> PassCounts:
    """The counts of one pass over N candidates (or of a block of them: blocks' counts add)."""
    keep = out.keep
    n, d = draws.negate.shape
    chosen = draws.order[np.arange(n), out.dominant]
    active = np.arange(d)[None, :] < out.k[:, None]
    return PassCounts(
        candidates=n,
        examples=int(keep.sum()),
        zero_score=int(out.skip_zero.sum()),
        language=int(out.skip_language.sum()),
        preference_1=int((keep & (out.preference == 1)).sum()),
        order_swaps=int((keep & draws.swap).sum()),
        noise_principle=int((keep & out.noise_flip & (out.rule == 0)).sum()),
        noise_rule=int((keep & out.noise_flip & (out.rule > 0)).sum()),
        negated=int((draws.negate & active)[keep].sum()),
        rule=np.bincount(out.rule[keep], minlength=len(RULES)),
        dominant_dimension=np.bincount(chosen[keep], minlength=d),
        principles=np.bincount(out.k[keep], minlength=max_principles + 1)[: max_principles + 1],
    )


def report(
    settings: Settings,
    dims: Sequence[str],
    read: dict[str, Any],
    variance: np.ndarray,
    kept: int,
    instruction_languages: dict[str, int],
    passes: Sequence[PassCounts],
) -> dict[str, Any]:
    """preferences.stats.json: parameters, what reading kept, the scores' spread, the passes.

    `read`: the counts of reading and joining (pairs, judgments, pairs_dropped by reason, ...);
    `kept`: the pairs kept; `instruction_languages`: kept pairs by instruction code.
    """
    total = reduce(PassCounts.__add__, passes)
    spread = variance.tolist()
    noise = {"principle": total.noise_principle, "rule": total.noise_rule}
    return (
        {"parameters": asdict(settings) | {"dimensions": tuple(dims)}}
        | read
        | {
            "variance": dict(zip(dims, spread, strict=True)),
            "zero_variance_dimensions": [
                d for d, v in zip(dims, spread, strict=True) if kept and v == 0
            ],
            "instruction_languages": instruction_languages,
            "candidates": total.candidates,
            "examples": total.examples,
            "skipped": {"zero_score": total.zero_score, "language": total.language},
            "rule": dict(zip(RULES, total.rule.tolist(), strict=True)),
            "dominant_dimension": dict(zip(dims, total.dominant_dimension.tolist(), strict=True)),
            "preference": {"1": total.preference_1, "2": total.examples - total.preference_1},
            "order_swaps": total.order_swaps,
            "noise_flips": sum(noise.values()),
            "noise_flips_by_decision": noise,
            "negated_principles": total.negated,
            "principles_per_example": {
                str(k): int(c) for k, c in enumerate(total.principles) if k and c
            },
        }
    )
