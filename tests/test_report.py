"""The report's figures: their numbers from made-up stage outputs, and the report on a smoke run."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from helpers import snakemake, write_config, write_jsonl

from salmon_wf.report import figures


def made_up_results(root: Path) -> Path:
    results = root / "results"
    (results / "responses").mkdir(parents=True)
    (results / "prompts.summary.json").write_text(
        json.dumps({"n_prompts": 3, "dropped": {"deleted": 1, "too_short": 2}})
    )
    (results / "pairs.summary.json").write_text(
        json.dumps({"pairs": 2, "dropped": {"too_short": 1}})
    )
    for run, reasons in (("r0", ["stop", "length", "stop"]), ("r1", ["length"] * 3)):
        records = [
            {"id": f"p{k}", "response": "x" * k, "finish_reason": why, "n_generated_tokens": k}
            for k, why in enumerate(reasons)
        ]
        write_jsonl(results / "responses" / f"{run}.jsonl", records)
    scores = {("p0", "A"): [1, 2], ("p0", "B"): [2, 4], ("p1", "A"): [-1, 3], ("p1", "B"): [-2, 2]}
    write_jsonl(
        results / "judgments.jsonl",
        [{"id": i, "dimension": d, "relative_score": s} for (i, d), s in scores.items()],
    )
    stats = {
        "pairs_kept": 2,
        "pairs_dropped": {"too_short": 1, "no_judgments": 0},
        "preference": {"2": 1, "1": 1},
        "rule": {"none": 2, "language": 0},
        "dominant_dimension": {"A": 1, "B": 1},
    }
    (results / "preferences.stats.json").write_text(json.dumps(stats))
    records = [
        {"id": "p0", "instruction": "q<0>", "output_1": "a", "output_2": "b", "preference": 1},
        {"id": "p1", "instruction": "q1", "output_1": "c", "output_2": "d", "preference": 2},
    ]
    for r, dims, flip in zip(records, ["('A',)", "('A', 'B')"], [False, True], strict=True):
        r |= {"dimensions": dims, "rule": "none", "flip": flip}
    (results / "preferences.json").write_text(json.dumps(records))
    return results


def test_the_figures_numbers(tmp_path: Path) -> None:
    results = made_up_results(tmp_path)
    assert figures.prompts_data(results) == {
        "prompts": {"kept": 3, "deleted": 1, "too_short": 2},
        "pairs": {"kept": 2, "too_short": 1},
        "aggregation": {"kept": 2, "no_judgments": 0},  # the pair stage's drops not twice
    }
    ledger = {
        "messages": {"roots": 4, "dropped": {"orphan": 1}},
        "roots": {"prompts": 3, "dropped": {"deleted": 1}},
        "pairing": {"pairs": 2, "dropped": {"too_short": 1}},
        "aggregation": {"pairs_kept": 2, "pairs_dropped": {"no_judgments": 0}},
    }
    (results / "ledger.json").write_text(json.dumps(ledger))  # the ledger, where it exists
    assert figures.prompts_data(results) == {
        "messages": {"roots": 4, "orphan": 1},
        "prompts": {"kept": 3, "deleted": 1},
        "pairs": {"kept": 2, "too_short": 1},
        "aggregation": {"kept": 2, "no_judgments": 0},
    }
    (results / "ledger.json").unlink()
    assert figures.responses_data(results, ["r0", "r1"]) == {
        "r0": {"lengths": [0, 1, 2], "finish_reasons": {"length": 1, "stop": 2}},
        "r1": {"lengths": [0, 1, 2], "finish_reasons": {"length": 3}},
    }
    scores = figures.judgments_by_principle(results)
    assert scores == {"A": [(1, 2), (-1, 3)], "B": [(2, 4), (-2, 2)]}
    assert figures.consistency_data(scores) == {"A": 0.5, "B": 0.5}
    names, matrix = figures.correlation_data(results)  # pair scores A: 1.5, 1; B: 3, 0
    assert names == ["A", "B"]
    assert [v for row in matrix for v in row] == pytest.approx([1.0, 1.0, 1.0, 1.0])
    assert figures.labels_data(results) == {
        "preference": {"1": 1, "2": 1},
        "rule": {"none": 2, "language": 0},
        "noise flip": {"flipped": 1, "kept": 1},
        "dominant principle": {"A": 1, "B": 1},
        "principles per example": {"1": 1, "2": 1},
    }
    table = figures.examples_html(results)
    assert table.count("<tr>") == 3 and "q&lt;0&gt;" in table


def test_write_all_draws_every_figure(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    results = made_up_results(tmp_path)
    written = figures.write_all(results, ["r0", "r1"], tmp_path / "figs")
    names = [p.name for p in written]
    assert names == [f"{n}.png" for n in figures.FIGURES] + ["examples.html"]
    for path in written[:-1]:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


@pytest.mark.slow
def test_the_report_of_a_smoke_run_holds_every_figure(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    write_config(tmp_path)
    snakemake(tmp_path, "--cores", "2")
    snakemake(tmp_path, "--report", str(tmp_path / "report.zip"))
    snakemake(tmp_path, "--report", str(tmp_path / "report.html"))
    assert (tmp_path / "report.html").stat().st_size > 100_000
    with zipfile.ZipFile(tmp_path / "report.zip") as archive:
        members = {Path(n).name: archive.getinfo(n).file_size for n in archive.namelist()}
        pngs = {n: archive.read(n) for n in archive.namelist() if n.endswith(".png")}
    for name in figures.FIGURES:
        assert members.get(f"{name}.png", 0) > 5000, (name, sorted(members))
    assert all(data[:4] == b"\x89PNG" for data in pngs.values())
    assert "examples.html" in members
