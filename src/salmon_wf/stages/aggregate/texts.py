"""Vectorised literals for the renderer: JSON strings and Python float reprs, as Arrow arrays.

Each function gives, element by element, exactly what the Python call it names gives
(json.encoder.encode_basestring, repr(float)); Arrow does the common case and the rare rest
goes through the Python call itself, so the exact text never rests on a reimplementation alone.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from json.encoder import encode_basestring  # type: ignore[attr-defined]

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

STRING = pa.large_string()  # 64-bit offsets: a column of long texts passes 2 GB

# What JSON escapes (encode_basestring's ESCAPE): the control characters, '"' and '\\'; of the
# control characters, those without a short escape take a \u00XX form.
_CONTROL_END = 0x20
_SHORT_CONTROLS = np.array([ord(c) for c in "\b\t\n\f\r"], np.uint8)
_SHORT_ESCAPES = (  # backslash first: the later replacements add backslashes
    ("\\", "\\\\"),
    ('"', '\\"'),
    ("\n", "\\n"),
    ("\r", "\\r"),
    ("\t", "\\t"),
    ("\b", "\\b"),
    ("\f", "\\f"),
)


Column = pa.Array | pa.ChunkedArray


def strings(column: Column | Sequence[str]) -> Column:
    """A column of texts as large_string Arrow data (a chunked column stays chunked)."""
    if isinstance(column, pa.Array | pa.ChunkedArray):
        return column.cast(STRING)
    return pa.array(column, STRING)


def contiguous(column: Column) -> pa.Array:
    """One array of a column's values (a copy only when it is chunked)."""
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def chunks(column: Column) -> list[pa.Array]:
    """A column's arrays, in order (one, empty, for a column without rows)."""
    if not isinstance(column, pa.ChunkedArray):
        return [column]
    return column.chunks or [pa.array([], column.type)]


def _spans(column: Column) -> Iterator[tuple[pa.Array, bytes, np.ndarray]]:
    """Each chunk, its UTF-8 bytes, and its rows' offsets into them (from 0; one more than rows).

    Searching the bytes is exact for what is searched here: in UTF-8, a byte below 0x80 is
    only ever that ASCII character, and a UTF-8 phrase matches only at a character start.
    Measured on a 290 MB column of 1M texts: the escape check 0.16 s against Arrow's regex
    0.85 s, the AI-phrase test 0.36 s against Arrow's match_substring 1.0 s (docs/benchmarks.md).
    """
    width = np.int64 if pa.types.is_large_string(column.type) else np.int32
    for chunk in chunks(column):
        if not len(chunk):  # an empty array may come without buffers
            yield chunk, b"", np.zeros(1, np.int64)
            continue
        at = chunk.offset * np.dtype(width).itemsize
        offsets = np.frombuffer(chunk.buffers()[1], width, len(chunk) + 1, at).astype(np.int64)
        start, end = int(offsets[0]), int(offsets[-1])
        data = chunk.buffers()[2]
        used = memoryview(data)[start:end].tobytes() if data is not None and end > start else b""
        yield chunk, used, offsets - start


def _replaced(base: pa.Array, rows: np.ndarray, values: pa.Array) -> pa.Array:
    """`base` with its elements at `rows` replaced by `values`, in that order."""
    index = np.arange(len(base), dtype=np.int64)
    index[rows] = len(base) + np.arange(rows.size)
    return pa.concat_arrays([base, values.cast(STRING)]).take(index)


def json_insides(texts: Column) -> Column:
    """encode_basestring of each text without its quotes (the renderer's pieces hold them).

    Arrow replaces the short escapes chunk by chunk over the whole column (a text without any
    is kept as it is), so the column is never combined and at most two copies of it are alive
    (taking the rows that need escaping and merging them back held ~6x a column's size while
    nearly every real text has a line break or a quote); a text with a control character
    written as \\u00XX (rare) goes through encode_basestring.
    """
    if not _needs_escape(texts):
        return texts
    inside = texts
    for char, escape in _SHORT_ESCAPES:
        inside = pc.replace_substring(inside, char, escape)
    rare_rows = _rows_with_unicode_escapes(texts)
    if rare_rows.size:
        exact = [encode_basestring(text)[1:-1] for text in texts.take(rare_rows).to_pylist()]
        inside = _replaced(contiguous(inside), rare_rows, pa.array(exact, STRING))
    return inside


def _needs_escape(texts: Column) -> bool:
    """Whether any text holds a character JSON escapes."""
    for _, data, _ in _spans(texts):
        if b'"' in data or b"\\" in data:
            return True
        if data and np.frombuffer(data, np.uint8).min() < _CONTROL_END:
            return True
    return False


def _rows_with_unicode_escapes(texts: Column) -> np.ndarray:
    """The rows (over all chunks) whose text has a control character without a short escape."""
    rows, first_row = [], 0
    for _, data, offsets in _spans(texts):
        codes = np.frombuffer(data, np.uint8)
        at = np.flatnonzero(codes < _CONTROL_END)
        at = at[~np.isin(codes[at], _SHORT_CONTROLS)]
        rows.append(first_row + np.unique(_row_of(offsets, at)))
        first_row += offsets.size - 1
    return np.concatenate(rows) if rows else np.zeros(0, np.int64)


def _row_of(offsets: np.ndarray, at: np.ndarray | int) -> np.ndarray:
    """The row holding byte `at` (a row's bytes are offsets[row] up to offsets[row + 1])."""
    return np.searchsorted(offsets, at, side="right") - 1


def float_reprs(values: np.ndarray) -> pa.Array:
    """repr(float(v)) of each value (Python's shortest round-trip form: '1.0', '1e-05', '-0.0').

    Arrow writes the same shortest digits, signed, but its own notation: fixed with a fraction
    below 1e10, an exponent from there (its double-conversion settings), no fraction for an
    integer. Its string is kept where it is Python's too, told from the value alone (a
    non-integer with 1e-4 <= |v| < 1e10; Python is fixed up to 1e16); zeros, integers, the
    rest of the range and non-finite values take Python's repr. Deciding from the values,
    not by matching Arrow's strings: 3M scores 1.23 -> 0.70 s (docs/benchmarks.md). Zeros by
    table: 3M scores (48% zeros) in chunks of 23k, 0.62-0.81 -> 0.40-0.61 s.
    """
    values = np.asarray(values, dtype=np.float64)
    size = np.abs(values)
    arrows = (size >= 1e-4) & (size < 1e10) & (values != np.trunc(values))  # NaN: False
    text = pc.cast(pa.array(values[arrows]), STRING)
    if len(text) == values.size:
        return text
    # Zeros (about half of all scores: a pair whose two orders disagree scores 0) are one of
    # two strings, by sign bit; the rest of the rows take Python's repr.
    wrong = values[~arrows]
    zero = wrong == 0
    rare = wrong[~zero].tolist()
    key = np.where(zero, np.signbit(wrong), 0).astype(np.int64)
    key[~zero] = 2 + np.arange(len(rare))
    table = pa.array(["0.0", "-0.0", *(repr(v) for v in rare)], STRING)
    index = np.empty(values.size, np.int64)
    index[arrows] = np.arange(len(text))
    index[~arrows] = len(text) + key
    return pa.concat_arrays([text, table]).take(index)


def contains(texts: Column | Sequence[str], phrase: str) -> np.ndarray:
    """(N,) bool: `phrase in text` for each text (a plain substring, not a pattern).

    A rare phrase (the AI phrase: a few percent of responses) is found fastest in each chunk's
    bytes, one search per match; a common one, by Arrow row by row (each row's search stops at
    its first match). The byte search hands the rest of a chunk to Arrow once more than one
    row in _DENSE has matched (measured: the AI phrase, in 3% of 1M responses, 0.36 s by bytes
    against 1.0 s by Arrow; on 300k texts, a phrase in no row 0.10 s against 0.22 s, one in 84%
    of rows 1.13 s against 0.16 s, and 0.23 s with the hand-off).
    """
    column = strings(texts)
    needle = phrase.encode("utf-8")
    if not needle:
        return np.ones(len(column), dtype=bool)
    return np.concatenate([_chunk_contains(*span, needle) for span in _spans(column)])


_DENSE = 16
_FEW_MATCHES = 64  # below this many matches a chunk stays with the byte search


def _chunk_contains(chunk: pa.Array, data: bytes, offsets: np.ndarray, needle: bytes) -> np.ndarray:
    """contains() over one chunk; a match running past its row's end is not one."""
    hit = np.zeros(offsets.size - 1, dtype=bool)
    starts = offsets.tolist()  # bisect on a list: ~20x cheaper per match than numpy scalars
    matched = row = 0
    at = data.find(needle)
    while at >= 0:
        row = bisect.bisect_right(starts, at, row) - 1
        end = starts[row + 1]
        if at + len(needle) > end:  # across a row boundary: a match may still start inside it
            at = data.find(needle, at + 1)
            continue
        hit[row] = True
        matched += 1
        if matched > _FEW_MATCHES and matched * _DENSE > row:
            rest = pc.match_substring(chunk.slice(row + 1), needle.decode("utf-8"))
            hit[row + 1 :] = np.asarray(rest.to_numpy(zero_copy_only=False), dtype=bool)
            break
        at = data.find(needle, end)
    return hit
