"""The pair stage: the two runs joined by prompt id, once, and what was dropped and why."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import write_jsonl

from salmon_wf.cli import main
from salmon_wf.stages.pair import Pair, make_pairs, read_pairs


def test_pairs_join_by_id_and_drop_short_or_missing(runs: tuple[Path, Path, Path]) -> None:
    pairs, counts = make_pairs(runs[0], runs[1], min_chars=16)
    assert [p.id for p in pairs] == ["p1", "p2", "p4"]  # p0 only in run 0, p3 too short
    assert counts == {"pairs": 3, "only_in_one_run": 2, "skipped_generation": 0, "too_short": 1}
    assert pairs[0].output_1 == "Trains run on rails between cities."
    assert pairs[0].output_2.startswith(".seitic")


def test_pair_command_writes_the_pairs_and_their_counts(
    runs: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, summary = tmp_path / "pairs.jsonl", tmp_path / "pairs.summary.json"
    argv = ["pair", "--responses", str(runs[0]), str(runs[1]), "--min-chars", "2"]
    assert main([*argv, "--output", str(out), "--summary", str(summary)]) == 0
    pairs = read_pairs(out)
    assert [p.id for p in pairs] == ["p1", "p2", "p3", "p4"]  # "ok" has 2 characters
    sleep = "Sleep helps the body recover."
    assert pairs[1] == Pair("p2", "Question 2?", "", sleep, sleep[::-1] + " More words here.")
    assert json.loads(summary.read_text())["too_short"] == 0
    assert json.loads(summary.read_text())["min_chars"] == 2
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"id": "p1", "instruction": "Q"}\n')
    capsys.readouterr()
    assert main(["pair", "--responses", str(runs[0]), str(broken), "--output", str(out)]) == 1
    error = f"salmon-wf pair: error: {broken} line 1: field 'response' missing\n"
    assert capsys.readouterr().err == error


def test_min_chars_of_raw_generation_or_clean_response(tmp_path: Path) -> None:
    """SALMON drops a pair when a raw generation has < 16 chars, whatever its cleaned length."""
    texts = {  # id: (raw generation, cleaned response) of run 1; run 0 is long everywhere
        "p0": ("Hi.\n\n### User\nWhat now?", "Hi."),  # raw long, clean short
        "p1": ("Fine.###", "Fine."),  # both short
        "p2": ("A full answer, long enough.", "A full answer, long enough."),
    }
    long = "A long enough answer for both filters."
    run0 = [
        {"id": k, "instruction": k, "input": "", "generation": long, "response": long}
        for k in texts
    ]
    run1 = [dict(r, generation=texts[r["id"]][0], response=texts[r["id"]][1]) for r in run0]
    paths = write_jsonl(tmp_path / "r0.jsonl", run0), write_jsonl(tmp_path / "r1.jsonl", run1)
    raw, raw_counts = make_pairs(*paths, min_chars=16, of="raw")
    clean, clean_counts = make_pairs(*paths, min_chars=16, of="clean")
    assert [p.id for p in raw] == ["p0", "p2"] and raw_counts["too_short"] == 1
    assert raw[0].output_2 == "Hi."  # the pair holds the cleaned text either way
    assert [p.id for p in clean] == ["p2"] and clean_counts["too_short"] == 2
    summary = tmp_path / "pairs.summary.json"
    argv = ["pair", "--responses", *map(str, paths), "--output", str(tmp_path / "pairs.jsonl")]
    assert main([*argv, "--summary", str(summary), "--min-chars-of", "raw"]) == 0
    written = json.loads(summary.read_text())
    assert written["min_chars_of"] == "raw" and written["pairs"] == 2
    assert written["dropped"]["too_short"] == 1
