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

from salmon_wf.data.langid import LanguageDetection

UNKNOWN = "unknown"  # `lang` code of a text without letters


class PairLanguages(NamedTuple):
    """Language codes (None: no letters) of each pair's instruction, output_1 and output_2."""

    instruction: list[str | None]
    output_1: list[str | None]
    output_2: list[str | None]

    def take(self, rows: Sequence[int]) -> PairLanguages:
        """The codes of the pairs at `rows`, in that order."""
        return PairLanguages(*([column[i] for i in rows] for column in self))

    def differs(self) -> np.ndarray:
        """(N, 2) bool: output_1 / output_2 in another language than the instruction.

        An output differs only when both languages are known (SALMON's language rule).
        """
        rows = [
            [a is not None and b is not None and a != b, a is not None and c is not None and a != c]
            for a, b, c in zip(self.instruction, self.output_1, self.output_2, strict=True)
        ]
        return np.array(rows, dtype=bool).reshape(len(self.instruction), 2)

    def shown(self) -> tuple[list[str], list[str], list[str]]:
        """The three columns as records show them: "unknown" for a text without letters."""
        instruction, output_1, output_2 = ([code or UNKNOWN for code in column] for column in self)
        return instruction, output_1, output_2


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

    def cancel(self) -> None:
        self.job.cancel()
