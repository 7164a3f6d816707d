"""Rendering: each written example's JSON line, exactly as json.dumps(record, ensure_ascii=False).

The line is assembled from pieces encoded once (a pair's texts, a dimension's literal) and small
tables (a record's last fields, the negative_definitions literals); tests check every line
against json.dumps.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from json.encoder import encode_basestring  # type: ignore[attr-defined]

import numpy as np

from salmon_wf.stages.aggregate.maths import RULES, Decisions, Draws
from salmon_wf.stages.aggregate.tables import Pairs


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
