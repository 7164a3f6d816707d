"""The aggregation from its inputs to its outputs: prepare, run the passes, report.

As Meta's llama generation (build -> generate -> format), in three steps a reader can follow:
`prepare` reads and joins the tables, normalises the scores and identifies the languages
(`Prepared`); `write_passes` draws, decides, renders and writes each pass and returns each
pass's counts; `stats.report` turns them into preferences.stats.json. `aggregate` runs the three.
"""

from __future__ import annotations

import gc
import sys
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import reduce
from pathlib import Path
from typing import Any

import numpy as np

from salmon_wf.data.langid import check_model
from salmon_wf.data.principles import load_principles
from salmon_wf.killpoint import kill_point
from salmon_wf.progress import Progress
from salmon_wf.stages.aggregate.language_file import LanguageFileRead, check_readable
from salmon_wf.stages.aggregate.languages import PairLanguageDetection
from salmon_wf.stages.aggregate.maths import Decisions, Draws, decide, draw, normalise
from salmon_wf.stages.aggregate.render import PairTexts, Rendered, Renderer
from salmon_wf.stages.aggregate.settings import Settings, resolve_dimensions
from salmon_wf.stages.aggregate.stats import PassCounts, pass_counts, report
from salmon_wf.stages.aggregate.tables import (
    TEXT_COLUMNS,
    kept_counts,
    read_candidates,
    read_scores,
)
from salmon_wf.stages.aggregate.texts import Column, contains
from salmon_wf.stages.aggregate.write import PreferenceFiles, preference_files

# Examples rendered and written at a time (bounds memory, not the output). About 9 MB of
# lines: Arrow's allocator reuses buffers of that size, while each 4x larger one is a fresh
# mapping whose page faults cost more than the rendering (measured: 0.23 s against 0.09 s).
CHUNK = 1 << 13
DECIDE_BLOCK = 1 << 16  # pairs decided at a time (a pass renders from its first block on)


@dataclass
class Prepared:
    """Everything the passes need, for the N kept pairs in pairs.jsonl order."""

    dims: tuple[str, ...]  # used dimensions, principle-file order
    z: np.ndarray  # (N, D) principle scores
    variance: np.ndarray  # (D,) each dimension's population variance
    has_phrase: np.ndarray  # (N, 2) bool: output_1 / output_2 contain the AI phrase
    lang_differs: np.ndarray | None  # (N, 2) bool; None when the language rule is off
    read: dict[str, Any]  # the counts of reading and joining, in report order
    instruction_languages: dict[str, int]  # kept pairs by instruction code, most common first
    rendering: Future[Renderer]  # every candidate's encoded texts (still being encoded)
    kept_rows: np.ndarray | None  # the kept candidates' rows; None when all are kept
    languages: tuple[list[str], np.ndarray]  # code names shown, (N, 3) indices into them
    rng: np.random.Generator  # every pass's draws, in pass order (the first: first_draws)
    first_draws: Future[Draws] | None  # the first pass's, drawn while the scores are normalised

    def renderer(self) -> Renderer:
        """The renderer of the kept pairs with their languages, once the texts are encoded."""
        renderer = self.rendering.result()
        if self.kept_rows is not None:
            renderer = renderer.kept(self.kept_rows)
            self.kept_rows = None
        renderer.set_languages(*self.languages)
        self.rendering = Future()
        self.rendering.set_result(renderer)  # a second call gives the same
        return renderer


def prepare(
    pairs_file: Path,
    pairs_summary: Path | None,
    judgments: Path,
    principles: Path,
    settings: Settings,
    workers: int,
    progress: Progress,
    languages_file: Path | None = None,
) -> Prepared:
    """Read, join, normalise and identify languages, keeping both cores busy.

    The pairs are read first (pairs.jsonl, or rule pairs_table's pairs.arrow); language
    identification of every instruction and output then starts in worker processes, and the
    judgments are read while two threads encode every candidate's texts, test them for the AI
    phrase and wait for the languages (docs/benchmarks.md, "Stop 30", has the measured
    effect). Pairs that are dropped later are encoded and identified too (their results are
    dropped); the codes do not depend on which other texts are identified. With
    `languages_file` (pairs.languages.jsonl, rule `languages`) the codes are read from that
    file instead. The first pass is drawn while the scores are normalised.
    """
    settings.check()
    known = [p.dimension for p in load_principles(principles)]
    dims = resolve_dimensions(known, settings.dimensions)
    # A wrong model path fails here, before any reading (LanguageDetection checks it too).
    model = check_model(settings.langid_model)
    if languages_file is not None:
        check_readable(languages_file)  # before the pairs and judgments are read
    runs = read_candidates(pairs_file, pairs_summary)
    progress.step(f"read the pairs: {len(runs.ids)} pairs")
    # Every record reports the codes of its instruction and both outputs (as SALMON's), rule
    # or no rule.
    detection: PairLanguageDetection | LanguageFileRead
    if languages_file is not None:
        detection = LanguageFileRead(languages_file, runs.ids, pairs_file)
    else:
        texts = runs.instruction, runs.output_1, runs.output_2
        detection = PairLanguageDetection(*texts, settings.langid_max_chars, workers, model)
    # What needs only the pairs runs in two threads while the judgments are read (the critical
    # path: ~2 s at 1M pairs): every candidate's texts encoded (~0.8 s with no escapes, mostly
    # outside the GIL), the AI-phrase tests (~0.6 s) and the wait for the languages (read, or
    # identified in worker processes, which `cancel` stops); the dropped pairs' are dropped
    # after (Prepared.renderer, `kept` below). Identification in this process (one worker, or
    # few texts) runs after the judgments, as before: a failure there would wait for it.
    helpers = ThreadPoolExecutor(2, thread_name_prefix="aggregate-prepare")
    texts = PairTexts(runs.ids, *(runs.texts[name] for name in TEXT_COLUMNS))
    rendering = helpers.submit(Renderer, texts, dims)
    outputs = runs.texts["output_1"], runs.texts["output_2"]
    phrases = helpers.submit(_has_phrase, *outputs, settings.ai_phrase)
    waited = isinstance(detection, LanguageFileRead) or detection.in_workers
    identified = helpers.submit(detection.result) if waited else None
    helpers.shutdown(wait=False)  # its threads end with these
    del texts, outputs
    try:
        scores = read_scores(judgments, runs.ids, dims, known)
        progress.step(f"read judgments: {scores.counts['pairs_kept']} pairs kept")
        read = kept_counts(runs, scores)
        kept = scores.kept
        s12, s21 = scores.s12[kept], scores.s21[kept]
        del scores, runs
        rng = np.random.default_rng(settings.seed)
        drawer = ThreadPoolExecutor(1, thread_name_prefix="aggregate-draw")
        first_draws = drawer.submit(draw, rng, s12.shape[0], s12.shape[1], settings)
        drawer.shutdown(wait=False)
        z, variance = normalise(s12, s21)
        del s12, s21
        has_phrase = phrases.result()[kept]
        every = detection.result() if identified is None else identified.result()
    finally:
        detection.cancel()
    found = "identified" if languages_file is None else "read"
    progress.step(f"{found} the languages of {3 * kept.size} texts")
    languages = every.coded().take(np.flatnonzero(kept))
    del every
    lang_differs = languages.differs() if settings.language_rule else None
    instruction_languages = languages.instruction_counts()
    kept_rows = None if kept.all() else np.flatnonzero(kept)
    shown = languages.shown(), languages.codes
    del languages
    return Prepared(
        dims,
        z,
        variance,
        has_phrase,
        lang_differs,
        read,
        instruction_languages,
        rendering,
        kept_rows,
        shown,
        rng,
        first_draws,
    )


def _has_phrase(output_1: Column, output_2: Column, phrase: str) -> np.ndarray:
    """(N, 2) bool: `phrase` in output_1 / output_2 of each pair."""
    return np.stack([contains(output_1, phrase), contains(output_2, phrase)], axis=1)


def write_passes(
    prepared: Prepared,
    settings: Settings,
    files: PreferenceFiles,
    progress: Progress,
    threads: int = 1,
) -> list[PassCounts]:
    """Each pass's examples, drawn, decided, rendered and written; each pass's counts.

    Chunks are rendered by `threads` threads (Arrow's kernels and numpy's release the GIL) and
    written in order, so the bytes are the same for any number. The passes' draws are made in
    pass order (the first during prepare, the rest by the deciding thread, each after the pass
    before's blocks) and each pass is decided block by block (SALMON's rules are row by row),
    so a pass renders from its first block on and the next pass is decided while it renders
    (~0.9 s a pass at 1M pairs, with both render threads idle before: docs/benchmarks.md,
    "Stop 30").
    """
    n, d = prepared.z.shape
    rng = prepared.rng
    phrase, differs = prepared.has_phrase, prepared.lang_differs
    starts = range(0, max(n, 1), DECIDE_BLOCK)  # one (empty) block when nothing is kept

    def block(draws: Future[Draws], start: int) -> tuple[Draws, Decisions, PassCounts]:
        stop = min(start + DECIDE_BLOCK, n)
        part = draws.result().rows(start, stop)
        rules = phrase[start:stop], None if differs is None else differs[start:stop]
        out = decide(prepared.z[start:stop], part, *rules, settings)
        return part, out, pass_counts(part, out, settings.max_principles)

    counts = []
    with (
        ThreadPoolExecutor(max(1, threads), thread_name_prefix="aggregate-render") as pool,
        ThreadPoolExecutor(1, thread_name_prefix="aggregate-decide") as ahead,
    ):

        def decided(
            draws: Future[Draws] | None = None,
        ) -> list[Future[tuple[Draws, Decisions, PassCounts]]]:
            # A pass's draws come after the pass before's blocks (one thread, in order).
            draws = draws or ahead.submit(draw, rng, n, d, settings)
            return [ahead.submit(block, draws, start) for start in starts]

        upcoming = decided(prepared.first_draws)
        prepared.first_draws = None  # its blocks hold it: freed with them
        renderer = prepared.renderer()  # the first pass is decided meanwhile
        progress.step("encoded the texts")
        for number in range(settings.passes):
            blocks = upcoming
            if number + 1 < settings.passes:  # the next pass is decided while this one renders
                upcoming = decided()
            parts = []
            rendering: deque[Future[Rendered]] = deque()
            for start, decision in zip(starts, blocks, strict=True):
                draws, out, part_counts = decision.result()
                parts.append(part_counts)
                rows = np.flatnonzero(out.keep)
                for at in range(0, rows.size, CHUNK):
                    index = rows[at : at + CHUNK]
                    rendering.append(pool.submit(renderer.jsonl, index, draws, out, start))
                    if len(rendering) > threads:  # one chunk ahead per thread, a few in memory
                        _write_next(files, rendering)
            while rendering:
                _write_next(files, rendering)
            counts.append(reduce(PassCounts.__add__, parts))
            examples = counts[-1].examples
            progress.step(f"pass {number + 1} of {settings.passes}: {examples} examples")
    return counts


def _write_next(files: PreferenceFiles, rendering: deque[Future[Rendered]]) -> None:
    """Write the oldest chunk in flight (waiting for its rendering; its error raised here)."""
    files.write_rendered(*rendering.popleft().result())
    kill_point("aggregate.chunk")  # a test hook (killpoint.py); nothing when unset


def aggregate(
    pairs_file: Path,
    pairs_summary: Path | None,
    judgments: Path,
    principles: Path,
    settings: Settings,
    output: Path,
    output_jsonl: Path | None,
    workers: int = 1,
    languages_file: Path | None = None,
) -> tuple[int, dict[str, Any]]:
    """Write the preferences (JSON list, and the JSONL copy); the examples written and the stats."""
    # Millions of long-lived texts and lists: the cyclic collector would re-walk them after
    # every few hundred new lists (each chunk makes ~10^5), doubling the rendering time. The
    # stage builds no reference cycles worth collecting, so it runs without it.
    collecting = gc.isenabled()
    gc.disable()
    try:
        progress = Progress("aggregate", stream=sys.stdout)  # one line per step
        prepared = prepare(
            pairs_file,
            pairs_summary,
            judgments,
            principles,
            settings,
            workers,
            progress,
            languages_file,
        )
        with preference_files(output, output_jsonl) as files:
            counts = write_passes(prepared, settings, files, progress, workers)
    finally:
        if collecting:
            gc.enable()
    stats = report(
        settings,
        prepared.dims,
        prepared.read,
        prepared.variance,
        len(prepared.z),
        prepared.instruction_languages,
        counts,
    )
    return files.count, stats
