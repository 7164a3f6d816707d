"""SALMON's maths, pure numpy over the kept pairs at once: normalise, draw, decide.

`decide` is row by row, so it takes a pass's draws of all pairs or of a block of them
(`Draws.rows`) alike.

No I/O and no state: `normalise` turns (s12, s21) into principle scores, `draw` takes one pass's
random numbers from the generator in the documented block order, and `decide` turns scores,
draws and the two rules' inputs into one pass's outcome for every candidate.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from salmon_wf.stages.aggregate.settings import Settings

RULES = ("none", "ai_language_model", "language")  # a record's `rule`; index = rule code
SWAP_PROB = 0.5


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

    def rows(self, start: int, stop: int) -> Draws:
        """The draws of rows start..stop (views, not copies)."""
        return Draws(*(getattr(self, f.name)[start:stop] for f in fields(self)))


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
