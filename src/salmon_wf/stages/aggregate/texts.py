"""Vectorised literals for the renderer: JSON strings and Python float reprs, as Arrow arrays.

Each function gives, element by element, exactly what the Python call it names gives
(json.encoder.encode_basestring, repr(float)); Arrow does the common case and the rare rest
goes through the Python call itself, so the exact text never rests on a reimplementation alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from json.encoder import encode_basestring  # type: ignore[attr-defined]

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

STRING = pa.large_string()  # 64-bit offsets: a column of long texts passes 2 GB

_QUOTE = pa.scalar('"', STRING)
_EMPTY = pa.scalar("", STRING)
_SIGNS = pa.array(["", "-"], STRING)
# What JSON escapes (encode_basestring's ESCAPE), and of it what takes a \u00XX form.
_NEEDS_ESCAPE = r'[\x00-\x1f"\\]'
_UNICODE_ESCAPE = r"[\x00-\x07\x0b\x0e-\x1f]"
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


def _mask(result: Column) -> np.ndarray:
    return np.asarray(result.to_numpy(zero_copy_only=False), dtype=bool)


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
    if not pc.any(pc.match_substring_regex(texts, _NEEDS_ESCAPE)).as_py():
        return texts
    inside = texts
    for char, escape in _SHORT_ESCAPES:
        inside = pc.replace_substring(inside, char, escape)
    rare_rows = np.flatnonzero(_mask(pc.match_substring_regex(texts, _UNICODE_ESCAPE)))
    if rare_rows.size:
        exact = [encode_basestring(text)[1:-1] for text in texts.take(rare_rows).to_pylist()]
        inside = _replaced(contiguous(inside), rare_rows, pa.array(exact, STRING))
    return inside


def float_reprs(values: np.ndarray) -> pa.Array:
    """repr(float(v)) of each value (Python's shortest round-trip form: '1.0', '1e-05', '-0.0').

    Arrow writes the same shortest digits, but its own notation: its string is kept where it is
    Python's too (a fixed form with a fraction, in the range where repr is fixed: 1e-4 <= |v| <
    1e16); zeros, integers, exponents and non-finite values take Python's repr.
    """
    values = np.asarray(values, dtype=np.float64)
    size = np.abs(values)
    text = pc.cast(pa.array(size), STRING)
    fixed = pc.and_(pc.match_substring(text, "."), pc.invert(pc.match_substring(text, "e")))
    fixed_np = fixed.to_numpy(zero_copy_only=False) & (size >= 1e-4) & (size < 1e16)
    zero = size == 0
    text = pc.if_else(pa.array(zero), pa.scalar("0.0", STRING), text)
    rows = np.flatnonzero(~fixed_np & ~zero)
    if rows.size:
        text = _replaced(text, rows, pa.array([repr(v) for v in size[rows].tolist()], STRING))
    negative = np.signbit(values) & ~np.isnan(values)
    if not negative.any():
        return text
    return pc.binary_join_element_wise(_SIGNS.take(negative.astype(np.int8)), text, _EMPTY)


def contains(texts: Column | Sequence[str], phrase: str) -> np.ndarray:
    """(N,) bool: `phrase in text` for each text (a plain substring, not a pattern)."""
    return _mask(pc.match_substring(strings(texts), phrase))
