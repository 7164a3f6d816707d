"""Rendering: each written example's JSON line, exactly as json.dumps(record, ensure_ascii=False).

A line is the concatenation of pieces, each an Arrow string array over the chunk's rows: a pair's
texts, JSON-encoded once (texts.py), taken by row; and small tables of what takes few values (the
preference, the dimension names, the negative_definitions literal, the record's last fields)
taken by key; the texts' quotes are in the pieces around them. Arrow joins the pieces twice
(outside the GIL, so the writer thread overlaps it): as JSONL lines and as the list's items, each
written from the joined array's data buffer. Tests check every line against json.dumps.
"""

from __future__ import annotations

from collections.abc import Sequence
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from salmon_wf.stages.aggregate.maths import RULES, Decisions, Draws
from salmon_wf.stages.aggregate.tables import Pairs
from salmon_wf.stages.aggregate.texts import (
    STRING,
    Column,
    chunks,
    contiguous,
    float_reprs,
    json_insides,
    strings,
)

_EMPTY = pa.scalar("", STRING)
_NEWLINE = pa.scalar("\n", STRING)
_ITEM_LEAD = pa.scalar(",\n", STRING)
_TEXT_PIECES = 4  # a line's first pieces: the head, an output, the literal between, the other


class Rendered(NamedTuple):
    """A chunk of examples as bytes: JSONL lines, and the same led by ",\\n" each; how many."""

    jsonl: pa.Buffer
    items: pa.Buffer
    count: int


def _data(lines: pa.Array) -> pa.Buffer:
    """The bytes of a string array's values, in order (its data buffer's used part)."""
    ends = np.frombuffer(lines.buffers()[1], np.int64, len(lines) + 1, lines.offset * 8)
    return lines.buffers()[2].slice(int(ends[0]), int(ends[-1] - ends[0]))


def _json_bool(value: bool) -> str:
    return "true" if value else "false"


def _literal(text: str) -> pa.Scalar:
    return pa.scalar(text, STRING)


def _join(*pieces: pa.Array | pa.Scalar) -> pa.Array:
    return pc.binary_join_element_wise(*pieces, _EMPTY)


class PairTexts(NamedTuple):
    """A pair's five texts as columns (the fields the renderer reads of a Pairs)."""

    ids: Column | Sequence[str]
    instruction: Column | Sequence[str]
    input: Column | Sequence[str]
    output_1: Column | Sequence[str]
    output_2: Column | Sequence[str]


class Renderer:
    """Each written example's JSON line, exactly as json.dumps(record, ensure_ascii=False).

    The texts make up most of every line and a pair appears in up to `passes` examples, so
    they are JSON-encoded once per pair and the lines are assembled from encoded pieces.
    Threads may render chunks at once (stage.write_passes): a chunk reads the tables and adds
    only the pieces it computed to the `negated` cache, which any thread would compute alike.
    """

    def __init__(self, pairs: Pairs | PairTexts, dims: Sequence[str]) -> None:
        ids, instruction, given, output_1, output_2 = (
            json_insides(strings(column))
            for column in (
                pairs.ids,
                pairs.instruction,
                pairs.input,
                pairs.output_1,
                pairs.output_2,
            )
        )
        self.n = len(ids)
        self.d = len(dims)
        self.head = contiguous(
            _join(
                _literal('{"id": "'),
                ids,
                _literal('", "instruction": "'),
                instruction,
                _literal('", "input": "'),
                given,
                _literal('", "output_1": "'),
            )
        )
        del ids, instruction, given
        self.outputs = pa.concat_arrays(chunks(output_1) + chunks(output_2))  # i, then n + i
        del output_1, output_2
        # Each name's Python literal, JSON-escaped.
        self.dim = pa.array([encode_basestring(repr(d))[1:-1] for d in dims], STRING)
        self.preference = pa.array(
            [f'", "preference": {p}, "dimensions": "(' for p in (1, 2)], STRING
        )
        # The dominant position's field and the "lang" key, by dominant * 2 + (k == 1).
        self.dominant = pa.array(
            [
                f'{one})", "doinate_dimension_idx": {j}, "lang": '
                for j in range(self.d)
                for one in ("", ",")
            ],
            STRING,
        )
        # A record's last fields by end key flip * 6 + rule * 2 + swapped (see render()).
        self.ends = pa.array(
            [
                f', "flip": {_json_bool(flip)}, "rule_flag": {_json_bool(rule > 0)}, '
                f'"swapped": {_json_bool(swapped)}, "rule": {encode_basestring(RULES[rule])}}}'
                for flip in (False, True)
                for rule in range(len(RULES))
                for swapped in (False, True)
            ],
            STRING,
        )
        self.lang = pa.array([], STRING)  # per distinct code triple: as read, then swapped
        self.lang_key = np.zeros(0, np.int64)  # per pair: its triple's index in `lang` / 2
        self.negated: dict[int, str] = {}  # negative_definitions piece by negation key

    def kept(self, rows: np.ndarray) -> Renderer:
        """This renderer on the pairs at `rows` only (in that order), the rest dropped.

        The stage encodes every candidate's texts while the judgments are read, before it
        knows which pairs are kept (stage.prepare), then keeps these.
        """
        rows = np.asarray(rows, dtype=np.int64)
        self.head = self.head.take(rows)
        self.outputs = self.outputs.take(np.concatenate([rows, rows + self.n]))
        self.n = rows.size
        return self

    def set_languages(self, names: Sequence[str], codes: np.ndarray) -> None:
        """Each pair's (instruction, output_1, output_2) codes as read, as (N, 3) indices
        into `names` (known after the texts).

        Pairs with the same three codes share one piece (few distinct triples at any size).
        """
        codes = np.asarray(codes, dtype=np.int64).reshape(-1, 3)
        size = max(len(names), 1)
        key = (codes[:, 0] * size + codes[:, 1]) * size + codes[:, 2]
        triples, inverse = np.unique(key, return_inverse=True)
        first, rest = np.divmod(triples, size * size)
        second, third = np.divmod(rest, size)
        literal = [encode_basestring(name) for name in names]
        pieces = []
        for i, j, k in zip(first.tolist(), second.tolist(), third.tolist(), strict=True):
            a, b, c = literal[i], literal[j], literal[k]
            pieces += [f"[{a}, {b}, {c}]", f"[{a}, {c}, {b}]"]
        self.lang = pa.array(pieces, STRING)
        self.lang_key = inverse.reshape(-1).astype(np.int64)

    def lines(self, index: np.ndarray, draws: Draws, out: Decisions, first: int = 0) -> list[str]:
        """The lines of the examples at rows `index` of one pass, in that order (no "\\n").

        `index` is into `draws` and `out`, which hold the pairs from row `first` on.
        """
        index = np.asarray(index, dtype=np.int64)
        if index.size == 0:
            return []
        return _join(*self.pieces(index, draws, out, first)).to_pylist()

    def jsonl(self, index: np.ndarray, draws: Draws, out: Decisions, first: int = 0) -> Rendered:
        """The examples at rows `index` of one pass as bytes: JSONL, and the list's items.

        The list's items are the same lines each led by ",\\n" (so the list's separators and
        line breaks need no pass over the bytes); both are Arrow buffers, written as they are.
        """
        index = np.asarray(index, dtype=np.int64)
        if index.size == 0:
            return Rendered(pa.py_buffer(b""), pa.py_buffer(b""), 0)
        pieces = self.pieces(index, draws, out, first)
        # The small pieces after the texts are joined once for both files: each join's cost
        # is mostly per piece and row (8192 rows: 11 pieces 3.8 ms, 5 pieces 2.3 ms).
        texts, tail = pieces[:_TEXT_PIECES], _join(*pieces[_TEXT_PIECES:])
        lines = _data(_join(*texts, tail, _NEWLINE))
        return Rendered(lines, _data(_join(_ITEM_LEAD, *texts, tail)), index.size)

    def pieces(
        self, index: np.ndarray, draws: Draws, out: Decisions, first: int = 0
    ) -> list[pa.Array]:
        """The pieces of the lines of the examples at rows `index` (joined, the lines).

        What takes few values is looked up, not formatted per line: the record's end by
        (flip, rule, swap), the negative_definitions literal by (k, negation bits), the
        dimension names by their shuffled indices.
        """
        k = out.k[index]
        d = self.d
        positions = np.arange(d)
        active = positions[None, :] < k[:, None]
        bits = draws.negate[index] & active
        negation_key = (bits * (1 << positions)).sum(axis=1) | (k << d)
        swap = draws.swap[index].astype(np.int64)
        end_key = out.noise_flip[index] * 6 + out.rule[index] * 2 + swap
        pair = index + first  # the rows of the renderer's own tables
        return [
            self.head.take(pair),
            self.outputs.take(pair + self.n * swap),
            _literal('", "output_2": "'),
            self.outputs.take(pair + self.n * (1 - swap)),
            self.preference.take(out.preference[index] - 1),
            self._names(draws.order[index], active, k),
            self._negated(negation_key),
            self._scores(out.scores[index], active, k),
            self.dominant.take(out.dominant[index] * 2 + (k == 1)),
            self.lang.take(self.lang_key[pair] * 2 + swap),
            self.ends.take(end_key),
        ]

    def _names(self, order: np.ndarray, active: np.ndarray, k: np.ndarray) -> pa.Array:
        """The dimensions literal's inside ("'A', 'B'") of each row's first k shuffled names."""
        return _joined(self.dim.take(order[active]), k)

    def _negated(self, keys: np.ndarray) -> pa.Array:
        """From the names' end to the scores' start, with each row's negative_definitions."""
        unique, inverse = np.unique(keys, return_inverse=True)
        table = []
        for key in unique.tolist():
            text = self.negated.get(key)
            if text is None:
                one = "," if key >> self.d == 1 else ""  # a 1-tuple's literal is "(x,)"
                literal = _negation_literal(key, self.d)
                text = self.negated[key] = (
                    f'{one})", "negative_definitions": "{literal}", "dimension_scores": "('
                )
            table.append(text)
        return pa.array(table, STRING).take(inverse.reshape(-1))

    def _scores(self, scores: np.ndarray, active: np.ndarray, k: np.ndarray) -> pa.Array:
        """Each row's first k scores as str(tuple(scores)) shows them, without the brackets."""
        return _joined(float_reprs(scores[active]), k)  # row by row, shuffled position order


def _joined(values: pa.Array, k: np.ndarray) -> pa.Array:
    """ ", ".join of each row's values: row i has the next k[i] of `values`."""
    offsets = np.zeros(k.size + 1, np.int64)
    np.cumsum(k, out=offsets[1:])
    listed = pa.LargeListArray.from_arrays(pa.array(offsets), values)
    return pc.binary_join(listed, _literal(", "))


def _negation_literal(key: int, d: int) -> str:
    """str(tuple(bits)) of a negation key: k in the bits above d, position j's bit below."""
    k = key >> d
    return str(tuple((key >> j) & 1 for j in range(k)))
