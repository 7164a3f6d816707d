"""Aggregation benchmark: `salmon-wf aggregate` on synthetic pairs x 11 principles.

The inputs are what the workflow feeds the stage: the pair stage's pairs.jsonl (the two runs'
responses joined by id) and pairs.summary.json, and the gather's judgments.scores.arrow (11
judgments per pair, full float precision); the judgments.jsonl beside it, in the judge stage's
format, is read once at 100k pairs for comparison. Texts are synthetic and short: instructions of
8-30 words, responses of 16-96 words (~330 characters on average, about a quarter of a real
100-700-token response); every text starts with its own random words, so every head the language
identifier reads is distinct (as in real data). About 3% of responses start with "As an AI
language model" and about 3% of texts are German-like, so both rules fire. Scores are
correlated logits, so most (s12, s21) agree in sign.

The stage runs as a subprocess, as the workflow's rules run it (--workers 2): first `salmon-wf
languages` (rule `languages`, timed on its own: `languages_s`) and `salmon-wf pairs-table` (rule
`pairs_table`, pairs.jsonl to pairs.arrow, timed on its own: `pairs_table_s`), which in the
workflow run while the judge jobs do, then `salmon-wf aggregate --languages` on their files.
Time is wall clock; memory is the larger of the aggregate's peak summed RSS (with any worker
processes, sampled every 20 ms) and its process's maximum RSS (GNU time's %M).

The time target is a ratio to this machine's I/O floor for the same bytes, measured right after
each aggregate run: `cat` of its inputs (pairs.arrow and the languages file included) to
/dev/null plus a `dd` of as many bytes as it wrote to one file in its output directory
(conv=fsync: the stage fsyncs its outputs too).
"""

from __future__ import annotations

import contextlib
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
from common import Entry, log

from salmon_wf.data.scores_file import open_scores_file

ROOT = Path(__file__).resolve().parent.parent
PRINCIPLES = ROOT / "src" / "salmon_wf" / "resources" / "principles.json"
TARGET_RATIO, TARGET_GB = 2.0, 4.0
CHUNK = 20_000
TIME = "/usr/bin/time"
PROFILE_PAIRS = 100_000
# generate()'s judgments.jsonl: the stage reads the scores file instead (as the workflow's rule
# passes it); at PROFILE_PAIRS the stage also runs once on the JSONL, for the difference.
JSONL_KEY = "judgments_jsonl"

ENGLISH_TEXT = (
    "the a of to and in is it you that for this with on are be as can your have not or will an "
    "by from at more use some one which about time if when make how would also like these other "
    "than only into first should could people water most work number way each need help answer "
    "question example result data model system value different important because between"
)
GERMAN_TEXT = (
    "der die das und ist nicht ein eine zu mit auf dem den sich von auch es wir ich sie aber "
    "wenn noch nach wie bei kann werden oder mehr sehr hier immer schon"
)
AI_PHRASE = "As an AI language model, "


def _texts(rng: np.random.Generator, n: int, lo: int, hi: int, tag: str) -> list[str]:
    """n texts of lo..hi words; a unique head, a few German, the rest English."""
    lengths = rng.integers(lo, hi + 1, n)
    german = rng.random(n) < 0.03
    words_en = np.array(ENGLISH_TEXT.split())
    words_de = np.array(GERMAN_TEXT.split())
    picks = rng.integers(0, 1 << 30, (n, hi))
    out = []
    for i in range(n):
        vocab = words_de if german[i] else words_en
        chosen = vocab[picks[i, : lengths[i]] % len(vocab)]
        out.append(f"{tag}{picks[i, 0] % 99991} " + " ".join(chosen.tolist()))
    return out


def generate(
    directory: Path, pairs: int, seed: int = 0, response_words: tuple[int, int] = (16, 96)
) -> dict[str, Path]:
    """Write pairs.jsonl, pairs.summary.json, judgments.jsonl and the gather's Arrow copy of its
    scores, judgments.scores.arrow, for `pairs` pairs (chunked).

    The returned paths are the stage's inputs as the workflow passes them ("judgments": the
    scores file); "judgments_jsonl" is not among them (see JSONL_KEY).
    """
    rng = np.random.default_rng(seed)
    dims = [p["dimension"] for p in json.loads(PRINCIPLES.read_text())]
    paths = {"pairs": directory / "pairs.jsonl", "judgments": directory / "judgments.scores.arrow"}
    jsonl = directory / "judgments.jsonl"
    paths["summary"] = directory / "pairs.summary.json"
    dropped = {"only_in_one_run": 0, "skipped_generation": 0, "too_short": 0}
    summary = {"pairs": pairs} | dropped | {"dropped": dropped, "min_chars": 16}
    paths["summary"].write_text(json.dumps(summary))
    dim_json = [json.dumps(d) for d in dims]
    with (
        paths["pairs"].open("w") as paired,
        jsonl.open("w") as judged,
        open_scores_file(paths["judgments"], dims) as scored,
    ):
        for start in range(0, pairs, CHUNK):
            n = min(CHUNK, pairs - start)
            ids = [f"oasst-{start + i:08d}" for i in range(n)]
            instructions = _texts(rng, n, 8, 30, "Q")
            outputs = []
            for tag in ("R", "S"):  # run 0's and run 1's responses
                responses = _texts(rng, n, *response_words, tag)
                ai = rng.random(n) < 0.03
                outputs.append(
                    [
                        json.dumps(AI_PHRASE + r if a else r)
                        for r, a in zip(responses, ai, strict=True)
                    ]
                )
            paired.write(
                "".join(
                    f'{{"id": "{ids[i]}", "instruction": {json.dumps(instructions[i])}, '
                    f'"input": "", "output_1": {outputs[0][i]}, "output_2": {outputs[1][i]}}}\n'
                    for i in range(n)
                )
            )
            quality = rng.normal(0, 1, (n, 1, 1)) + rng.normal(0, 1, (n, len(dims), 1))
            noise = rng.normal(0, 1, (n, len(dims), 4))
            logits = (noise * 2 + np.concatenate([quality, -quality] * 2, axis=2)).astype(
                np.float32
            )
            a12, b12, a21, b21 = (logits[..., k].tolist() for k in range(4))
            lines = []
            for i in range(n):
                for j, dim in enumerate(dim_json):
                    s12, s21 = a12[i][j] - b12[i][j], b21[i][j] - a21[i][j]
                    p = 1 if s12 > 0 and s21 > 0 else 2 if s12 < 0 and s21 < 0 else 0
                    lines.append(
                        f'{{"id": "{ids[i]}", "dimension": {dim}, "relative_score": '
                        f'[{s12!r}, {s21!r}], "preference": {p}, '
                        f'"logits_12": [{a12[i][j]!r}, {b12[i][j]!r}], '
                        f'"logits_21": [{a21[i][j]!r}, {b21[i][j]!r}]}}\n'
                    )
            judged.write("".join(lines))
            # What the gather writes beside judgments.jsonl: the same scores (the same floats).
            wide = logits.astype(np.float64)  # as the lines' Python floats subtract
            s12 = (wide[..., 0] - wide[..., 1]).ravel()
            s21 = (wide[..., 3] - wide[..., 2]).ravel()
            dim_index = np.tile(np.arange(len(dims), dtype=np.int32), n)
            scored(np.repeat(ids, len(dims)).tolist(), dim_index, s12, s21)
    return paths | {JSONL_KEY: jsonl}


def identify_languages(directory: Path, paths: dict[str, Path]) -> float:
    """`salmon-wf languages` as its rule runs it (--workers 2); adds paths["languages"].

    Returns its wall seconds. The file is synced after the clock stops (the generator's
    writeback is not the aggregation's to pay for either).
    """
    paths["languages"] = directory / "pairs.languages.jsonl"
    argv = [sys.executable, "-m", "salmon_wf.cli", "languages", "--pairs", str(paths["pairs"])]
    argv += ["--output", str(paths["languages"]), "--workers", "2"]
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"languages failed ({done.returncode}):\n{done.stdout[-3000:]}")
    os.sync()
    return seconds


def pairs_table(paths: dict[str, Path]) -> tuple[float, Path]:
    """`salmon-wf pairs-table` as its rule runs it: paths["pairs"] becomes pairs.arrow, which the
    stage reads as the workflow's rule passes it. Returns its wall seconds and pairs.jsonl
    (no longer among the stage's inputs; the caller removes it)."""
    jsonl = paths["pairs"]
    arrow = jsonl.with_suffix(".arrow")
    argv = [sys.executable, "-m", "salmon_wf.cli", "pairs-table", "--pairs", str(jsonl)]
    start = time.perf_counter()
    done = subprocess.run([*argv, "--output", str(arrow)], cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"pairs-table failed ({done.returncode}):\n{done.stdout[-3000:]}")
    os.sync()
    paths["pairs"] = arrow
    return seconds, jsonl


def stage_args(out: Path, paths: dict[str, Path]) -> list[str]:
    """`aggregate` and its arguments, as the workflow's rule passes them (--workers 2)."""
    out.mkdir(exist_ok=True)
    argv = ["aggregate", "--pairs", str(paths["pairs"]), "--pairs-summary", str(paths["summary"])]
    argv += ["--languages", str(paths["languages"])]
    argv += ["--judgments", str(paths["judgments"]), "--principles", str(PRINCIPLES)]
    argv += ["--output", str(out / "preferences.json")]
    argv += ["--output-jsonl", str(out / "preferences.jsonl")]
    return [*argv, "--stats", str(out / "stats.json"), "--workers", "2"]


def profile(directory: Path, paths: dict[str, Path]) -> dict:
    """Where the aggregate's time goes (cProfile of its process; languages read from file)."""
    out, prof = directory / "out", directory / "aggregate.prof"
    argv = [sys.executable, "-m", "cProfile", "-o", str(prof), "-m", "salmon_wf.cli"]
    subprocess.run([*argv, *stage_args(out, paths)], cwd=ROOT, capture_output=True, check=True)
    for p in out.iterdir():
        p.unlink()
    stats = pstats.Stats(str(prof)).stats  # type: ignore[attr-defined]
    ours = ("stages/aggregate/", "data/langid.py", "data/jsonl.py", "data/atomic.py")
    command = "stages/aggregate/cli.py"
    total = max(v[3] for (f, _, name), v in stats.items() if f.endswith(command) and name == "run")
    rows = []
    for (file, line, name), (_, calls, tottime, cumtime, _) in stats.items():
        builtin_io = file == "~" and ("write" in name or "read_json" in name)
        mine = any(part in file for part in ours)
        if (mine or builtin_io) and cumtime >= 0.01 * total:
            where = f"{file.split('src/')[-1]}:{line}({name})" if file != "~" else name
            rows.append({"where": where, "calls": calls, "self_s": round(tottime, 2),
                         "cumulative_s": round(cumtime, 2)})  # fmt: skip
    rows.sort(key=lambda r: -r["cumulative_s"])
    return {"profiled_total_s": round(total, 2), "functions": rows}


def measure(directory: Path, paths: dict[str, Path]) -> dict:
    """Run the stage once: wall seconds, peak summed RSS (sampled) and max single RSS."""
    out = directory / "out"
    argv = [sys.executable, "-m", "salmon_wf.cli", *stage_args(out, paths)]
    # The max RSS comes from GNU time: a child forked from this (large) process would report
    # this process's RSS at the fork as its own maximum.
    time_file = directory / "time.txt"
    if Path(TIME).exists():
        argv = [TIME, "-f", "%M", "-o", str(time_file), *argv]
    log_file = directory / "stage.log"
    start = time.perf_counter()
    with log_file.open("wb") as sink:
        child = subprocess.Popen(argv, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT)
        watched = psutil.Process(child.pid)
        peak = 0
        while child.poll() is None:
            total = 0
            with contextlib.suppress(psutil.Error):
                for proc in [watched, *watched.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        total += proc.memory_info().rss
            peak = max(peak, total)
            time.sleep(0.02)
    seconds = time.perf_counter() - start
    text = log_file.read_text(errors="replace")
    if child.returncode != 0:
        raise RuntimeError(f"aggregate failed ({child.returncode}):\n{text[-3000:]}")
    single = int(time_file.read_text().split()[-1]) * 1024 if time_file.exists() else 0
    stats = json.loads((out / "stats.json").read_text())
    sizes = {p.name: p.stat().st_size for p in out.iterdir()}
    for p in out.iterdir():
        p.unlink()
    return {
        "seconds": seconds,
        "peak_rss_gb": max(peak, single) / 1e9,
        "sampled_tree_rss_gb": peak / 1e9,
        "max_single_rss_gb": single / 1e9,
        "examples": stats.get("examples"),
        "pairs_kept": stats.get("pairs_kept"),
        "output_bytes": sizes,
        "stage_says": text.strip().splitlines()[-1] if text.strip() else "",
    }


def io_floor(directory: Path, paths: dict[str, Path], output_bytes: dict[str, int]) -> dict:
    """Seconds to read the stage's inputs and to write its output bytes (the stage's floor)."""
    out = directory / "out"
    out.mkdir(exist_ok=True)
    start = time.perf_counter()
    subprocess.run(["cat", *map(str, paths.values())], stdout=subprocess.DEVNULL, check=True)
    read_s = time.perf_counter() - start
    written = sum(output_bytes.values())
    sink = out / "floor.bin"
    argv = ["dd", "if=/dev/zero", f"of={sink}", "bs=4M", f"count={written}"]
    start = time.perf_counter()
    subprocess.run([*argv, "iflag=count_bytes", "conv=fsync"], capture_output=True, check=True)
    write_s = time.perf_counter() - start
    sink.unlink()
    return {"read_s": read_s, "write_s": write_s, "floor_s": read_s + write_s,
            "bytes_read": sum(p.stat().st_size for p in paths.values()),
            "bytes_written": written}  # fmt: skip


def at_1m(points: list[dict], key: str) -> float:
    """A line through the two measured points, read at 1M pairs (quick mode)."""
    (x0, y0), (x1, y1) = ((p["pairs"], p[key]) for p in points)
    return y1 + (y1 - y0) / (x1 - x0) * (1_000_000 - x1)


def run(quick: bool) -> tuple[list[Entry], dict]:
    # Two points above 50k distinct texts (where language identification starts its worker
    # processes) give quick mode's line; the full run measures 1M and checks that line against it.
    sizes = (25_000, PROFILE_PAIRS) if quick else (25_000, PROFILE_PAIRS, 1_000_000)
    points: list[dict] = []
    details: dict = {"points": points}
    with tempfile.TemporaryDirectory(prefix="salmon-bench-agg-") as tmp:
        kept: dict[str, Path] = {}
        for pairs in sizes:
            directory = Path(tmp) / str(pairs)
            directory.mkdir()
            log(f"aggregate: generating {pairs:,} pairs x 11 principles")
            begin = time.perf_counter()
            paths = generate(directory, pairs)
            jsonl = paths.pop(JSONL_KEY)
            os.sync()  # the generator's writeback is not the stage's to pay for
            made = time.perf_counter() - begin
            log(f"aggregate: running the stages on {pairs:,} pairs (generated in {made:.0f} s)")
            languages_s = identify_languages(directory, paths)
            table_s, pairs_jsonl = pairs_table(paths)
            pairs_jsonl.unlink()
            input_bytes = {name: p.stat().st_size for name, p in paths.items()}
            point = {"pairs": pairs, "input_bytes": input_bytes, "languages_s": languages_s}
            point["pairs_table_s"] = table_s
            point |= measure(directory, paths)
            point["floor"] = io_floor(directory, paths, point["output_bytes"])
            point["floor_s"] = point["floor"]["floor_s"]
            point["ratio_to_floor"] = point["seconds"] / point["floor_s"]
            log(
                f"aggregate: {pairs:,} pairs: languages {languages_s:.1f} s, pairs-table "
                f"{table_s:.1f} s, then aggregate "
                f"{point['seconds']:.1f} s, floor "
                f"{point['floor_s']:.1f} s (read {point['floor']['read_s']:.1f} s, write "
                f"{point['floor']['write_s']:.1f} s)"
            )
            if pairs == PROFILE_PAIRS:  # the same stage reading judgments.jsonl instead
                point["from_jsonl"] = measure(directory, paths | {"judgments": jsonl})
                log(f"aggregate: reading judgments.jsonl: {point['from_jsonl']['seconds']:.1f} s")
            jsonl.unlink()
            points.append(point)
            if pairs == PROFILE_PAIRS:
                kept = paths
            else:
                for p in paths.values():
                    p.unlink()
        keys = ("seconds", "peak_rss_gb", "floor_s", "languages_s")
        line = {key: at_1m(points[:2], key) for key in keys}
        # The floor moves bytes, so it is proportional to them (no fixed cost): a line through
        # two small, noisy dd timings can even cross zero (a quick run once gave -0.3 s).
        scale = 1_000_000 / points[1]["pairs"]
        line["floor_s"] = points[1]["floor_s"] * scale
        details["line_through_25k_100k_at_1m"] = line
        if quick:
            seconds, memory, floor = line["seconds"], line["peak_rss_gb"], line["floor_s"]
            details["languages_s"] = line["languages_s"]
            # Mostly start-up at these sizes: a line through 25k and 100k can even fall (a
            # full run's line gave -2.2 s at 1M), so quick mode reports the 100k figure.
            details["pairs_table_s_100k"] = points[1]["pairs_table_s"]
            note = (
                f"EXTRAPOLATED to 1M (line through 25k and 100k; the floor: 10x 100k's): "
                f"{seconds:.1f} s vs a floor of {floor:.1f} s, after languages "
                f"{line['languages_s']:.1f} s (its own job, as pairs-table: "
                f"{points[1]['pairs_table_s']:.1f} s at 100k); "
                f"measured at 100k: {points[1]['seconds']:.1f} s, floor "
                f"{points[1]['floor_s']:.1f} s, {points[1]['peak_rss_gb']:.2f} GB, languages "
                f"{points[1]['languages_s']:.1f} s"
            )
        else:
            seconds, memory, floor = (points[2][k] for k in ("seconds", "peak_rss_gb", "floor_s"))
            details["languages_s"] = points[2]["languages_s"]
            details["pairs_table_s"] = points[2]["pairs_table_s"]
            io = points[2]["floor"]
            note = (
                f"measured at 1M pairs: {seconds:.1f} s vs a floor of {floor:.1f} s (read "
                f"{io['read_s']:.1f} s + write {io['write_s']:.1f} s), after languages "
                f"{points[2]['languages_s']:.1f} s and pairs-table "
                f"{points[2]['pairs_table_s']:.1f} s (their own jobs)"
            )
            directory = Path(tmp) / "long"
            directory.mkdir()
            log(f"aggregate: {PROFILE_PAIRS:,} pairs with 4x longer responses (64-384 words)")
            paths = generate(directory, PROFILE_PAIRS, response_words=(64, 384))
            paths.pop(JSONL_KEY).unlink()
            os.sync()
            languages_s = identify_languages(directory, paths)
            pairs_table(paths)[1].unlink()
            input_bytes = {name: p.stat().st_size for name, p in paths.items()}
            details["long_responses_100k"] = {"pairs": PROFILE_PAIRS, "input_bytes": input_bytes}
            details["long_responses_100k"]["languages_s"] = languages_s
            details["long_responses_100k"] |= measure(directory, paths)
            for p in paths.values():
                p.unlink()
        ratio = seconds / floor
        details["ratio_to_floor"] = ratio
        if ratio > TARGET_RATIO:  # where does the time go? (profiled at 100k pairs)
            log(f"aggregate: over target, profiling the stage on {PROFILE_PAIRS:,} pairs")
            details["profile_100k"] = profile(Path(tmp) / str(PROFILE_PAIRS), kept)
    return [
        Entry("aggregate_1m_pairs_time_vs_io_floor", ratio, TARGET_RATIO, "x", False, note, quick),
        Entry("aggregate_1m_pairs_peak_memory", memory, TARGET_GB, "GB", False, note, quick),
    ], details
