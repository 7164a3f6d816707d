"""Figures and the example table of the Snakemake report, from a results folder's stage outputs.

Each `*_data` function returns plain numbers (unit-tested); `write_all` draws them with
matplotlib (the `report` extra) into one PNG per name of FIGURES plus examples.html.
"""

from __future__ import annotations

import argparse
import ast
import html
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from salmon_wf.data.jsonl import read_jsonl

FIGURES = ("prompts", "responses", "consistency", "scores", "correlation", "labels")


def load(results: Path, name: str) -> Any:
    return json.loads((results / name).read_text())


def prompts_data(results: Path) -> dict[str, dict[str, int]]:
    """Kept and dropped (by reason) per stage: from ledger.json when it exists (messages too),
    else from the summaries: prompts, pairs, aggregation."""
    if (results / "ledger.json").exists():
        ledger = load(results, "ledger.json")
        stages = {
            "messages": {"roots": ledger["messages"]["roots"], **ledger["messages"]["dropped"]},
            "prompts": {"kept": ledger["roots"]["prompts"], **ledger["roots"]["dropped"]},
            "pairs": {"kept": ledger["pairing"]["pairs"], **ledger["pairing"]["dropped"]},
        }
        aggregation = ledger["aggregation"]
        stages["aggregation"] = {"kept": aggregation["pairs_kept"], **aggregation["pairs_dropped"]}
        return stages
    prompts = load(results, "prompts.summary.json")
    pairs = load(results, "pairs.summary.json")
    stats = load(results, "preferences.stats.json")
    dropped = {k: v for k, v in stats["pairs_dropped"].items() if k not in pairs["dropped"]}
    return {
        "prompts": {"kept": prompts["n_prompts"], **prompts["dropped"]},
        "pairs": {"kept": pairs["pairs"], **pairs["dropped"]},
        "aggregation": {"kept": stats["pairs_kept"], **dropped},
    }


def responses_data(results: Path, runs: list[str]) -> dict[str, dict[str, Any]]:
    """Per run: generated tokens per response, and finish reasons counted."""
    out = {}
    for run in runs:
        records = list(read_jsonl(results / "responses" / f"{run}.jsonl"))
        lengths = [r.get("n_generated_tokens", len(r["response"])) for r in records]
        reasons = Counter(r["finish_reason"] for r in records)
        out[run] = {"lengths": lengths, "finish_reasons": dict(sorted(reasons.items()))}
    return out


def judgments_by_principle(results: Path) -> dict[str, list[tuple[float, float]]]:
    """(s12, s21) of every judgment, per principle, in file order."""
    scores: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for j in read_jsonl(results / "judgments.jsonl"):
        s12, s21 = j["relative_score"]
        scores[j["dimension"]].append((s12, s21))
    return dict(scores)


def consistency_data(scores: dict[str, list[tuple[float, float]]]) -> dict[str, float]:
    """Share of judgments whose two orders agree (both scores of one sign), per principle."""
    return {
        p: sum(1 for a, b in pairs if (a > 0 and b > 0) or (a < 0 and b < 0)) / len(pairs)
        for p, pairs in scores.items()
    }


def correlation_data(results: Path) -> tuple[list[str], list[list[float]]]:
    """Pearson correlation between principles of the pair score (s12 + s21) / 2."""
    by_pair: dict[str, dict[str, float]] = defaultdict(dict)
    for j in read_jsonl(results / "judgments.jsonl"):
        by_pair[j["id"]][j["dimension"]] = sum(j["relative_score"]) / 2
    names = sorted({d for scores in by_pair.values() for d in scores})
    rows = [[s[n] for n in names] for s in by_pair.values() if len(s) == len(names)]

    def pearson(i: int, k: int) -> float:
        xs, ys = [r[i] for r in rows], [r[k] for r in rows]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        cov = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
        vx = sum((x - mx) ** 2 for x in xs) ** 0.5
        vy = sum((y - my) ** 2 for y in ys) ** 0.5
        return cov / (vx * vy) if vx and vy else 0.0

    return names, [[pearson(i, k) for k in range(len(names))] for i in range(len(names))]


def labels_data(results: Path) -> dict[str, dict[str, int]]:
    """Label balance, deciding rules, noise flips, dominant principles, principles per example."""
    stats = load(results, "preferences.stats.json")
    records = load(results, "preferences.json")
    per_example = Counter(len(ast.literal_eval(r["dimensions"])) for r in records)
    flips = Counter("flipped" if r["flip"] else "kept" for r in records)
    return {
        "preference": {k: stats["preference"][k] for k in sorted(stats["preference"])},
        "rule": dict(stats["rule"]),
        "noise flip": dict(sorted(flips.items())),
        "dominant principle": dict(stats["dominant_dimension"]),
        "principles per example": {str(k): per_example[k] for k in sorted(per_example)},
    }


def examples_html(results: Path, n: int = 5) -> str:
    """The first `n` preference records as an HTML table (UTF-8 declared: opened from the report's
    zip a browser would otherwise guess the encoding of the model's non-ASCII text)."""
    records = load(results, "preferences.json")[:n]
    keys = ["id", "instruction", "output_1", "output_2", "preference", "dimensions", "rule"]
    head = "".join(f"<th>{k}</th>" for k in keys)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(r[k])[:300])}</td>" for k in keys) + "</tr>"
        for r in records
    )
    page = f"<table border='1'><tr>{head}</tr>{body}</table>"
    return f"<html><head><meta charset='utf-8'></head><body>{page}</body></html>\n"


def bars(ax: Any, counts: dict[str, int | float], title: str) -> None:
    ax.bar(list(counts), list(counts.values()), color="tab:blue")
    ax.set_title(title)
    ax.tick_params(axis="x", labelrotation=45)


def write_all(results: Path, runs: list[str], out: Path) -> list[Path]:
    """Every figure (out/<name>.png) and out/examples.html; the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written = []

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=80)
        plt.close(fig)
        written.append(out / f"{name}.png")

    stages = prompts_data(results)
    fig, axes = plt.subplots(1, len(stages), figsize=(4 * len(stages), 3.5))
    for ax, (stage, counts) in zip(axes, stages.items(), strict=True):
        bars(ax, counts, f"{stage}: kept and dropped")
    save(fig, "prompts")

    responses = responses_data(results, runs)
    fig, axes = plt.subplots(2, len(runs), figsize=(4 * len(runs), 6), squeeze=False)
    for k, (run, data) in enumerate(responses.items()):
        axes[0][k].hist(data["lengths"], bins=20, color="tab:green")
        axes[0][k].set_title(f"{run}: generated tokens")
        bars(axes[1][k], data["finish_reasons"], f"{run}: finish reasons")
    save(fig, "responses")

    scores = judgments_by_principle(results)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bars(ax, consistency_data(scores), "position-consistent share per principle")
    ax.set_ylim(0, 1)
    save(fig, "consistency")

    cols = min(4, len(scores))
    rows = -(-len(scores) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False)
    for ax, (principle, pairs) in zip(axes.flat, scores.items(), strict=False):
        ax.scatter([a for a, _ in pairs], [b for _, b in pairs], s=8)
        ax.axhline(0, color="grey", lw=0.5)
        ax.axvline(0, color="grey", lw=0.5)
        ax.set_title(principle, fontsize=9)
        ax.set_xlabel("s12")
        ax.set_ylabel("s21")
    for ax in list(axes.flat)[len(scores) :]:  # the last row's unused places
        ax.set_visible(False)
    save(fig, "scores")

    names, matrix = correlation_data(results)
    fig, ax = plt.subplots(figsize=(5, 4.5))
    image = ax.imshow(matrix, vmin=-1, vmax=1, cmap="coolwarm")
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    fig.colorbar(image)
    ax.set_title("correlation of principles' pair scores")
    save(fig, "correlation")

    labels = labels_data(results)
    fig, axes = plt.subplots(1, len(labels), figsize=(3.5 * len(labels), 3.5))
    for ax, (what, counts) in zip(axes, labels.items(), strict=True):
        bars(ax, counts, what)
    save(fig, "labels")

    (out / "examples.html").write_text(examples_html(results))
    written.append(out / "examples.html")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, required=True)
    parser.add_argument("--runs", nargs="+", required=True)
    parser.add_argument("--output", type=Path, required=True, help="folder for the figures")
    args = parser.parse_args(argv)
    for path in write_all(args.results, args.runs, args.output):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
