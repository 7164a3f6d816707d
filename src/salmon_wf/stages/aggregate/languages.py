"""The languages of every pair's three texts: one detection job, three named results.

The instruction and both outputs of every pair are identified in one LanguageDetection job (one
pool of workers, evenly sliced), and read back as `PairLanguages`: a list of codes per text, by
name, in pairs.jsonl order. A code is None for a text without letters (shown as "unknown").
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from salmon_wf.data.langid import LanguageDetection

UNKNOWN = "unknown"  # `lang` code of a text without letters


class PairLanguages(NamedTuple):
    """Language codes (None: no letters) of each pair's instruction, output_1 and output_2.

    Detection gives lists; a languages file read by Arrow keeps its columns (1M pairs' 3M
    codes took 0.26 s to make into lists and 0.8 s to turn back into Arrow arrays).
    """

    instruction: list[str | None] | pa.ChunkedArray
    output_1: list[str | None] | pa.ChunkedArray
    output_2: list[str | None] | pa.ChunkedArray

    def coded(self) -> LanguageCodes:
        """The codes as indices into one list of the distinct codes (Arrow's dictionary)."""
        parts = [chunk for codes in self for chunk in _arrow(codes).chunks]
        column = pa.chunked_array(parts, pa.string())
        encoded = column.combine_chunks().dictionary_encode()
        names = [*encoded.dictionary.to_pylist(), None]  # None last: the nulls' index
        index = pc.fill_null(encoded.indices, len(names) - 1).to_numpy().astype(np.int32)
        return LanguageCodes(names, index.reshape(3, -1).T.copy())


def _arrow(codes: list[str | None] | pa.ChunkedArray) -> pa.ChunkedArray:
    if isinstance(codes, pa.ChunkedArray):
        return codes.cast(pa.string())
    return pa.chunked_array([pa.array(codes, pa.string())], pa.string())


class LanguageCodes(NamedTuple):
    """Each pair's three codes (instruction, output_1, output_2) as indices into `names`.

    Done on the indices, what every pair needs costs numpy passes, not Python loops over
    every text (1M pairs: 2.2 s of Python before, docs/benchmarks.md).
    """

    names: list[str | None]  # None: a text without letters
    codes: np.ndarray  # (N, 3) int32

    def take(self, rows: np.ndarray | Sequence[int]) -> LanguageCodes:
        """The codes of the pairs at `rows`, in that order."""
        return LanguageCodes(self.names, self.codes[np.asarray(rows, dtype=np.int64)])

    def differs(self) -> np.ndarray:
        """(N, 2) bool: output_1 / output_2 in another language than the instruction.

        An output differs only when both languages are known (SALMON's language rule).
        """
        known = np.array([name is not None for name in self.names], dtype=bool)[self.codes]
        both = known[:, :1] & known[:, 1:]
        return both & (self.codes[:, 1:] != self.codes[:, :1])

    def shown(self) -> list[str]:
        """Each name as records show it: "unknown" for a text without letters."""
        return [name or UNKNOWN for name in self.names]

    def instruction_counts(self) -> dict[str, int]:
        """Pairs by their instruction's shown code, most common first (ties: first seen)."""
        ids, first, counts = np.unique(self.codes[:, 0], return_index=True, return_counts=True)
        shown = self.shown()
        by_name: dict[str, int] = {}
        for k in np.argsort(first, kind="stable").tolist():
            name = shown[ids[k]]
            by_name[name] = by_name.get(name, 0) + int(counts[k])
        return dict(sorted(by_name.items(), key=lambda item: -item[1]))


class PairLanguageDetection:
    """Starts identifying the pairs' texts in worker processes; `result()` waits for them.

    `cancel()` stops the workers at once (a caller that fails meanwhile does not wait).
    """

    def __init__(
        self,
        instruction: list[str],
        output_1: list[str],
        output_2: list[str],
        max_chars: int,
        workers: int = 1,
        model: str | os.PathLike[str] | None = None,
    ) -> None:
        self.pairs = len(instruction)
        texts = instruction + output_1 + output_2
        self.job = LanguageDetection(texts, max_chars, workers=workers, model=model)

    def result(self) -> PairLanguages:
        codes = self.job.result()
        n = self.pairs
        return PairLanguages(codes[:n], codes[n : 2 * n], codes[2 * n :])

    @property
    def in_workers(self) -> bool:
        """Whether the texts are identified in worker processes (else `result()` does it)."""
        return self.job.pool is not None

    def cancel(self) -> None:
        self.job.cancel()
