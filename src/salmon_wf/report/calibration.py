"""The calibration's figures (calibration.json, from `salmon-wf calibrate summary`).

`agreement_data` and `rank_gap_data` return plain numbers (unit-tested); `write_figures` draws
them with matplotlib (the `report` extra) into agreement.png and rank_gap.png, which the
report shows under "Calibration" when `snakemake --report` is given the calibrate target.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

FIGURES = ("agreement", "rank_gap")
AGGREGATES = {"all_principles": "aggregate: all", "salmon_draw": "aggregate: SALMON draw"}


def agreement_data(calibration: dict[str, Any]) -> list[dict[str, Any]]:
    """Per principle, then each aggregated decision: the agreement share, its 95% interval, n,
    and the position-consistent share (None for an aggregate)."""
    rows = []
    for name, stats in calibration["principles"].items():
        a = stats["agreement"]
        rows.append(
            {
                "name": name,
                "share": a["share"],
                "ci95": a["ci95"],
                "n": a["n"],
                "consistent": stats["consistent_share"],
            }
        )
    for key, label in AGGREGATES.items():
        a = calibration["aggregate"][key]["agreement"]
        rows.append(
            {"name": label, "share": a["share"], "ci95": a["ci95"], "n": a["n"], "consistent": None}
        )
    return rows


def rank_gap_data(calibration: dict[str, Any]) -> dict[str, list[tuple[int, float, int]]]:
    """Per principle: (rank gap, mean score toward the better reply, pairs) by gap."""
    out = {}
    for name, stats in calibration["principles"].items():
        out[name] = [
            (int(gap), g["mean_score_toward_better"], g["pairs"])
            for gap, g in stats["by_rank_gap"].items()
            if g["mean_score_toward_better"] is not None
        ]
    return out


def write_figures(calibration: dict[str, Any], out: Path, source: Path | None = None) -> list[Path]:
    """agreement.png and rank_gap.png in `out`; the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written = []
    rows = agreement_data(calibration)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5), width_ratios=[3, 2])
    xs = list(range(len(rows)))
    shares = [r["share"] if r["share"] is not None else float("nan") for r in rows]
    # error bars must not be negative (matplotlib refuses them): a share at an interval end
    low = [max(0.0, r["share"] - r["ci95"][0]) if r["ci95"] else 0 for r in rows]
    high = [max(0.0, r["ci95"][1] - r["share"]) if r["ci95"] else 0 for r in rows]
    colours = ["tab:blue" if r["consistent"] is not None else "tab:orange" for r in rows]
    left.bar(xs, shares, color=colours, yerr=[low, high], capsize=3)
    left.axhline(0.5, color="grey", lw=0.8, ls="--")
    left.set_xticks(
        xs, [f"{r['name']} (n={r['n']})" for r in rows], rotation=60, ha="right", fontsize=7
    )
    left.set_ylim(0, 1)
    left.set_title("agreement with the human-better reply (95% Wilson interval)", fontsize=9)
    principles = [r for r in rows if r["consistent"] is not None]
    right.bar(range(len(principles)), [r["consistent"] or 0 for r in principles])
    right.set_xticks(
        range(len(principles)), [r["name"] for r in principles], rotation=60, ha="right", fontsize=7
    )
    right.set_ylim(0, 1)
    right.set_title("position-consistent share", fontsize=9)
    if source is not None:
        fig.suptitle(str(source), fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "agreement.png", dpi=80)
    plt.close(fig)
    written.append(out / "agreement.png")

    fig, ax = plt.subplots(figsize=(7, 4.5))
    pairs_at: dict[int, int] = {}
    for name, points in rank_gap_data(calibration).items():
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
        for gap, _, n in points:
            pairs_at[gap] = max(n, pairs_at.get(gap, 0))
    gaps = sorted(pairs_at)
    ax.set_xticks(gaps, [f"{g}\n(n={pairs_at[g]})" for g in gaps])
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("human rank gap |rank_1 - rank_2|")
    ax.set_ylabel("mean (s12 + s21) / 2 toward the better reply")
    ax.set_title("judge score vs human rank gap, per principle", fontsize=9)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "rank_gap.png", dpi=80)
    plt.close(fig)
    written.append(out / "rank_gap.png")
    return written
