"""Calibration against OASST1's human ranks: pair choice, the interval maths, the summary,
the figures, and `snakemake calibrate` on the tiny model (reruns, a kill, the real sample)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import subprocess
import sys
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from helpers import REPO, snakemake, write_config, write_jsonl
from oasst_files import write_lines, write_trees

from salmon_wf.cli import main, run_command
from salmon_wf.data.jsonl import read_jsonl
from salmon_wf.data.oasst import read_messages
from salmon_wf.errors import OasstFormatError, RecordError
from salmon_wf.model.parallel import teardown_model_parallel
from salmon_wf.report import calibration as figures
from salmon_wf.stages.aggregate.settings import Settings
from salmon_wf.stages.calibrate.pairs import Selection, select_pairs
from salmon_wf.stages.calibrate.summary import summarise, wilson
from salmon_wf.stages.clean import PromptFilter

PRINCIPLES = REPO / "src" / "salmon_wf" / "resources" / "principles.json"
DIMENSIONS = [p["dimension"] for p in json.loads(PRINCIPLES.read_text())]
SHARED_SAMPLE = REPO.parent / "shared" / "data" / "oasst1" / "en_100_tree.jsonl"

# ---------------------------------------------------------------- a tree set with known ranks

# tree -> (language, ranks of the root's replies; None = unranked, "deleted" = a deleted reply)
TREES: dict[str, tuple[str, list[Any]]] = {
    "t0": ("en", [0, 1, 2]),  # 3 pairs (and 1 deeper pair below its best reply)
    "t1": ("de", [0, 1, 2, 3]),  # 6 pairs
    "t2": ("en", [0, 1, None]),  # 1 pair; 1 unranked reply
    "t3": ("fr", [0, 1, 1]),  # 2 pairs; 1 tie
    "t4": ("en", [0, "deleted"]),  # no pair: the other reply is deleted
    "t5": ("en", [0]),  # no pair: one reply
}
FIRST_TURN_PAIRS = 3 + 6 + 1 + 2


def message(mid: str, parent: str | None, role: str, text: str, lang: str, **extra: Any) -> dict:
    row = {"message_id": mid, "parent_id": parent, "text": text, "role": role, "lang": lang}
    row |= {"deleted": False, "review_result": True, "synthetic": False, "rank": None}
    row |= {"message_tree_id": mid if parent is None else None, "emojis": None}
    return row | {"user_id": "u", **extra}


def ranked_rows() -> list[dict]:
    """Flat OASST1 rows of TREES; a reply's text names its tree and rank."""
    rows = []
    for tree, (lang, ranks) in TREES.items():
        rows.append(message(tree, None, "prompter", f"Question of {tree}?", lang))
        for k, rank in enumerate(ranks):
            deleted = rank == "deleted"
            number = None if deleted else rank
            text = f"Answer {k} of {tree}, human rank {number}."
            rows.append(
                message(f"{tree}-a{k}", tree, "assistant", text, lang, rank=number, deleted=deleted)
            )
    rows.append(message("t0-q2", "t0-a0", "prompter", "And a follow-up?", "en"))
    for k in range(2):
        rows.append(
            message(
                f"t0-q2-a{k}", "t0-q2", "assistant", f"Follow-up answer rank {k}.", "en", rank=k
            )
        )
    for row in rows:
        row["message_tree_id"] = row["message_id"].split("-")[0]
    return rows


@pytest.fixture
def trees(tmp_path: Path) -> Path:
    return write_lines(tmp_path / "messages.jsonl", ranked_rows())


def test_every_pair_of_different_ranks_is_a_candidate_with_the_better_reply_known(trees: Path):
    records, counts = select_pairs(read_messages(trees), Selection(pairs_per_prompt=0))
    assert counts["pairs"] == counts["candidate_pairs"] == FIRST_TURN_PAIRS
    assert counts["tied_pairs"] == 1
    assert counts["replies"] == {"ranked": 14, "unranked": 1, "deleted": 1, "empty": 0}
    assert counts["parents"]["with_pairs"] == 4 and counts["parents"]["no_ranked_pair"] == 2
    assert counts["parents"]["not_first_turn"] == 1  # t0's follow-up
    assert Counter(r["parent_id"] for r in records) == {"t0": 3, "t1": 6, "t2": 1, "t3": 2}
    assert counts["languages"] == {"en": 4, "de": 6, "fr": 2} == Counter(r["lang"] for r in records)
    for r in records:
        ranks = [int(re.search(r"rank (\d)", r[k]).group(1)) for k in ("output_1", "output_2")]
        assert ranks == r["ranks"] and ranks[0] != ranks[1]
        assert r["better"] == (1 if ranks[0] < ranks[1] else 2)
        assert r["instruction"] == f"Question of {r['parent_id']}?" and r["turn"] == 1
        assert set(r) >= {"id", "instruction", "input", "output_1", "output_2"}  # pairs.jsonl
    assert [r["id"] for r in records] == sorted(r["id"] for r in records)
    assert len({r["id"] for r in records}) == len(records)
    assert 0 < counts["better_is_output_1"] < len(records)  # the better reply in both places


def test_deeper_turns_are_judged_with_the_conversation_so_far(trees: Path) -> None:
    records, counts = select_pairs(
        read_messages(trees), Selection(pairs_per_prompt=0, first_turn_only=False)
    )
    assert counts["pairs"] == FIRST_TURN_PAIRS + 1
    (deep,) = [r for r in records if r["parent_id"] == "t0-q2"]
    assert deep["turn"] == 2
    assert deep["instruction"] == (
        "User: Question of t0?\n\nAssistant: Answer 0 of t0, human rank 0.\n\n"
        "User: And a follow-up?"
    )


def test_the_prompts_filters_choose_the_trees(trees: Path) -> None:
    records, counts = select_pairs(
        read_messages(trees), Selection(pairs_per_prompt=0), PromptFilter(languages=("en",))
    )
    assert Counter(r["parent_id"] for r in records) == {"t0": 3, "t2": 1}
    assert counts["parents"]["prompt_dropped"] == 2  # t1 (de) and t3 (fr)
    rows = ranked_rows()
    rows[0]["review_result"] = False  # t0's root fails review: its tree is left out
    records, counts = select_pairs(
        (m for m in rows_messages(rows)), Selection(pairs_per_prompt=0, first_turn_only=False)
    )
    assert "t0" not in {r["parent_id"] for r in records} and "t0-q2" not in {
        r["parent_id"] for r in records
    }
    assert counts["parents"]["prompt_dropped"] == 2  # t0 and its follow-up


def rows_messages(rows: list[dict]) -> list:
    from salmon_wf.data.oasst import to_message

    return [to_message(r, f"row {i}") for i, r in enumerate(rows)]


def test_caps_and_seed_choose_deterministically_whatever_the_layout(
    trees: Path, tmp_path: Path
) -> None:
    one, counts = select_pairs(read_messages(trees), Selection(seed=3))
    assert counts["pairs"] == 4 and counts["dropped"]["per_prompt_cap"] == FIRST_TURN_PAIRS - 4
    assert sorted(r["parent_id"] for r in one) == ["t0", "t1", "t2", "t3"]
    capped, counts = select_pairs(read_messages(trees), Selection(seed=3, max_pairs=2))
    assert counts["dropped"]["max_pairs_cap"] == 2 and len(capped) == 2
    assert {r["id"] for r in capped} <= {r["id"] for r in one}  # the same keys, fewer kept
    shuffled = write_lines(tmp_path / "shuffled.jsonl", ranked_rows()[::-1])
    as_trees = write_trees(tmp_path / "trees.jsonl", ranked_rows())
    for other in (shuffled, as_trees):
        assert select_pairs(read_messages(other), Selection(seed=3))[0] == one
    seeds = {
        tuple(r["id"] for r in select_pairs(read_messages(trees), Selection(seed=s))[0])
        for s in range(8)
    }
    assert len(seeds) > 1  # the seed changes the choice


def test_the_pairs_command_writes_judge_input_and_names_bad_input(
    trees: Path, tmp_path: Path
) -> None:
    out, summary = tmp_path / "pairs.jsonl", tmp_path / "pairs.summary.json"
    argv = ["calibrate", "pairs", "--input", str(trees), "--output", str(out)]
    assert run_command([*argv, "--summary", str(summary), "--pairs-per-prompt", "0"]) == 0
    assert len(list(read_jsonl(out))) == FIRST_TURN_PAIRS
    written = json.loads(summary.read_text())
    assert written["selection"]["pairs_per_prompt"] == 0 and written["layout"] == "messages"
    assert written["prompt_filter"]["min_chars"] == 4  # clean-prompts' defaults
    assert run_command([*argv, "--languages", "de", "--pairs-per-prompt", "0"]) == 0
    assert {r["lang"] for r in read_jsonl(out)} == {"de"}
    rows = ranked_rows()
    rows[3]["rank"] = "first"
    bad = write_lines(tmp_path / "bad.jsonl", rows)
    with pytest.raises(OasstFormatError, match=r"bad.jsonl line 4: field 'rank' must be"):
        run_command(["calibrate", "pairs", "--input", str(bad), "--output", str(out)])
    no_pair = [r for r in rows if r["message_tree_id"] in ("t4", "t5")]
    unpaired = write_lines(tmp_path / "unpaired.jsonl", no_pair)
    with pytest.raises(OasstFormatError, match=r"unpaired.jsonl: no pair of sibling replies"):
        run_command(["calibrate", "pairs", "--input", str(unpaired), "--output", str(out)])


# ---------------------------------------------------------------- the interval


def test_wilson_interval_against_a_hand_computation() -> None:
    # 8 of 10, z = 1.959964: z^2 = 3.841459; centre (0.8 + 0.192073) / 1.384146 = 0.716740;
    # half 1.959964 * sqrt(0.016 + 0.009604) / 1.384146 = 0.313617 / 1.384146 = 0.226578
    # (tables give 0.4902 to 0.9433).
    assert wilson(8, 10) == pytest.approx([0.490162, 0.943318], abs=1e-6)
    # 0 of 10: [0, z^2 / (n + z^2)] = [0, 3.841459 / 13.841459]
    assert wilson(0, 10) == pytest.approx([0.0, 0.277533], abs=1e-6)
    assert wilson(10, 10) == pytest.approx([0.722467, 1.0], abs=1e-6)
    # 1 of 2: centre 0.5, half 1.959964 * sqrt(0.125 + 0.240091) / 2.920729 = 0.405469
    assert wilson(1, 2) == pytest.approx([0.094531, 0.905469], abs=1e-6)
    assert wilson(0, 0) is None
    low, high = wilson(50, 100)
    assert low < 0.5 < high and math.isclose(0.5 - low, high - 0.5)
    with pytest.raises(ValueError):
        wilson(3, 2)


def test_wilson_ends_are_exact_and_every_interval_holds_its_share() -> None:
    # the formula alone gives 5e-17 at 0 of 3 and 1 - 1.1e-16 at 10 of 10
    assert wilson(0, 3)[0] == 0.0 and wilson(10, 10)[1] == 1.0
    for n in range(1, 60):
        for k in range(n + 1):
            low, high = wilson(k, n)
            assert 0.0 <= low <= k / n <= high <= 1.0, (k, n)


def test_figures_draw_shares_at_the_interval_ends(tmp_path: Path) -> None:
    """0 of 3 and 10 of 10 agreeing (a small calibration): matplotlib refuses negative error
    bars, which an interval end an ulp past its share would give."""
    from salmon_wf.report.calibration import AGGREGATES, write_figures
    from salmon_wf.stages.calibrate.summary import proportion

    gap = {"1": {"mean_score_toward_better": 0.1, "pairs": 3}}
    principles = {
        "Honest": {"agreement": proportion(0, 3), "consistent_share": 0.5, "by_rank_gap": gap},
        "Creative": {"agreement": proportion(10, 10), "consistent_share": 1.0, "by_rank_gap": gap},
    }
    aggregate = {key: {"agreement": proportion(10, 10)} for key in AGGREGATES}
    written = write_figures({"principles": principles, "aggregate": aggregate}, tmp_path)
    assert sorted(p.name for p in written) == ["agreement.png", "rank_gap.png"]
    assert all(p.stat().st_size > 1000 for p in written)


# ---------------------------------------------------------------- the summary maths


def made_up(tmp_path: Path) -> tuple[Path, Path, Path]:
    """Four pairs (better 1, 2, 1, 2; languages en, en, de, en; rank gaps 1, 2, 1, 3) judged
    under two principles with chosen scores."""
    pairs = [
        {"id": "p0", "better": 1, "ranks": [0, 1], "lang": "en"},
        {"id": "p1", "better": 2, "ranks": [2, 0], "lang": "en"},
        {"id": "p2", "better": 1, "ranks": [1, 2], "lang": "de"},
        {"id": "p3", "better": 2, "ranks": [3, 0], "lang": "en"},
    ]
    scores = {  # (s12, s21): A agrees on p0, p1, p2 and is inconsistent on p3
        ("p0", "A"): [1.0, 2.0],
        ("p1", "A"): [-1.0, -3.0],
        ("p2", "A"): [0.5, 0.5],
        ("p3", "A"): [2.0, -1.0],
        ("p0", "B"): [-1.0, -1.0],  # B disagrees on p0, p2 (consistent), p1 inconsistent
        ("p1", "B"): [-1.0, 4.0],
        ("p2", "B"): [-2.0, -2.0],
        ("p3", "B"): [-3.0, -1.0],  # and agrees on p3
    }
    judgments = [
        {"id": i, "dimension": d, "relative_score": s, "preference": pref(*s)}
        for (i, d), s in sorted(scores.items(), key=lambda kv: (kv[0][0], kv[0][1]))
    ]
    principles = tmp_path / "principles.json"
    entries = [{"dimension": d, "definition": d, "negative_definition": d} for d in "AB"]
    principles.write_text(json.dumps(entries))
    return (
        write_jsonl(tmp_path / "pairs.jsonl", pairs),
        write_jsonl(tmp_path / "judgments.jsonl", judgments),
        principles,
    )


def pref(s12: float, s21: float) -> int:
    return 1 if s12 > 0 and s21 > 0 else 2 if s12 < 0 and s21 < 0 else 0


def test_the_summary_counts_consistency_agreement_and_sign(tmp_path: Path) -> None:
    pairs, judgments, principles = made_up(tmp_path)
    result = summarise(pairs, judgments, principles, Settings(dimensions=("A", "B")))
    a, b = result["principles"]["A"], result["principles"]["B"]
    assert (a["pairs"], a["consistent"], a["consistent_share"]) == (4, 3, 0.75)
    assert (a["position_a_both_orders"], a["position_b_both_orders"]) == (1, 0)  # p3
    assert (b["position_a_both_orders"], b["position_b_both_orders"]) == (0, 1)  # p1
    assert a["agreement"] == {"n": 3, "agree": 3, "share": 1.0, "ci95": wilson(3, 3)}
    # score sign (s12 + s21 toward the better): p0 +3, p1 +4, p2 +1, p3 -1 (better is 2)
    assert a["score_sign"] == {"n": 4, "agree": 3, "share": 0.75, "ci95": wilson(3, 4)}
    assert a["mean_score_toward_better"] == pytest.approx((1.5 + 2 + 0.5 - 0.5) / 4)
    assert (b["consistent"], b["agreement"]["agree"], b["agreement"]["n"]) == (3, 1, 3)
    assert b["score_sign"]["agree"] == 1  # only p3 (-4 favours 2); p1: -1 + 4 favours 1
    assert list(a["by_language"]) == ["en", "de"]
    assert a["by_language"]["de"]["agreement"]["agree"] == 1
    assert a["by_language"]["en"]["consistent"] == 2
    assert list(a["by_rank_gap"]) == ["1", "2", "3"]
    assert a["by_rank_gap"]["1"]["pairs"] == 2 and a["by_rank_gap"]["3"]["consistent"] == 0
    assert result["pairs"] == result["pairs_judged"] == 4
    assert result["interval"].startswith("Wilson")


def test_the_aggregated_decision_is_salmons_normalisation_and_dominant_principle(
    tmp_path: Path,
) -> None:
    """By hand: variance of A's eight scores (1, -1, .5, 2, 2, -3, .5, -1) and of B's; z is the
    mean over the variance where the orders agree, else 0; the larger |z| decides."""
    pairs, judgments, principles = made_up(tmp_path)
    result = summarise(pairs, judgments, principles, Settings(dimensions=("A", "B")))
    aggregate = result["aggregate"]
    var_a = float(_var([1, -1, 0.5, 2, 2, -3, 0.5, -1]))
    var_b = float(_var([-1, -1, -2, -3, -1, 4, -2, -1]))
    assert aggregate["variance"] == pytest.approx({"A": var_a, "B": var_b})
    z = {  # (z_A, z_B) per pair
        "p0": (1.5 / var_a, -1 / var_b),
        "p1": (-2 / var_a, 0.0),
        "p2": (0.5 / var_a, -2 / var_b),
        "p3": (0.0, -2 / var_b),
    }
    better = {"p0": 1, "p1": 2, "p2": 1, "p3": 2}
    decided = {p: (1 if (za if abs(za) >= abs(zb) else zb) > 0 else 2) for p, (za, zb) in z.items()}
    every = aggregate["all_principles"]
    assert every["pairs"] == every["decided"] == 4
    assert every["agreement"]["agree"] == sum(decided[p] == better[p] for p in z)
    assert sum(every["dominant"].values()) == 4
    assert aggregate["settings"]["negation_prob"] == 0.0
    assert aggregate["salmon_draw"]["pairs"] == 4
    assert set(aggregate["salmon_draw"]["by_language"]) == {"en", "de"}


def _var(values: list[float]) -> float:
    mean = sum(values) / len(values)
    return sum((v - mean) ** 2 for v in values) / len(values)


def test_bad_judgments_name_file_line_and_field(tmp_path: Path) -> None:
    pairs, judgments, principles = made_up(tmp_path)
    lines = judgments.read_text().splitlines()
    cases = {
        "id": (0, {"id": "nope"}, r"judgments.jsonl line 1: id: 'nope' is not a calibration"),
        "dimension": (1, {"dimension": "C"}, r"line 2: dimension: 'C' is not in the principle"),
        "score": (2, {"relative_score": [1.0]}, r"line 3: relative_score: must be a list"),
        "preference": (3, {"preference": 1}, r"line 4: preference: is 1, the scores give 0"),
    }
    for where, (row, change, expected) in cases.items():
        broken = list(lines)
        broken[row] = json.dumps(json.loads(broken[row]) | change)
        bad = tmp_path / "judgments.jsonl"
        bad.write_text("\n".join(broken) + "\n")
        with pytest.raises(RecordError, match=expected):
            summarise(pairs, bad, principles, Settings(dimensions=("A", "B")))
        assert where
    wrong = {"id": "p0", "better": 2, "ranks": [0, 1], "lang": "en"}
    bad_pairs = write_jsonl(tmp_path / "bad_pairs.jsonl", [wrong])
    with pytest.raises(RecordError, match=r"bad_pairs.jsonl line 1: better: ranks \[0, 1\]"):
        summarise(bad_pairs, judgments, principles, Settings(dimensions=("A", "B")))


def test_figures_are_drawn_from_the_summary(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    pairs, judgments, principles = made_up(tmp_path)
    result = summarise(pairs, judgments, principles, Settings(dimensions=("A", "B")))
    rows = figures.agreement_data(result)
    assert [r["name"] for r in rows] == ["A", "B", *figures.AGGREGATES.values()]
    assert rows[0]["share"] == 1.0 and rows[1]["share"] == pytest.approx(1 / 3)
    gaps = figures.rank_gap_data(result)
    assert [g for g, _, _ in gaps["A"]] == [1, 2, 3]
    assert gaps["A"][0] == (1, pytest.approx((1.5 + 0.5) / 2), 2)
    written = figures.write_figures(result, tmp_path / "figs")
    assert [p.name for p in written] == [f"{n}.png" for n in figures.FIGURES]
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


# ---------------------------------------------------------------- the workflow


def calibrate_config(workdir: Path, trees: Path, **changes: object) -> Path:
    return write_config(
        workdir,
        **{"calibrate.input": str(trees), "calibrate.pairs_per_prompt": 0, **changes},
    )


def planned(workdir: Path, target: str = "calibrate") -> Counter:
    text = snakemake(workdir, "-n", target)
    rules = re.findall(r"^(?:local)?rule (\w+):$", text, flags=re.MULTILINE)
    return Counter(r for r in rules if r != target)


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("calibrate")
    trees = write_lines(workdir / "messages.jsonl", ranked_rows())
    calibrate_config(workdir, trees)
    snakemake(workdir, "--cores", "2", "calibrate")
    return workdir


@pytest.mark.slow
def test_snakemake_calibrate_judges_every_pair_in_both_orders(calibrated: Path) -> None:
    folder = calibrated / "results" / "calibration"
    pairs = list(read_jsonl(folder / "pairs.jsonl"))
    judgments = list(read_jsonl(folder / "judgments.jsonl"))
    assert len(pairs) == FIRST_TURN_PAIRS
    assert len(judgments) == len(pairs) * len(DIMENSIONS)
    assert [j["id"] for j in judgments[:: len(DIMENSIONS)]] == [p["id"] for p in pairs]
    for j in judgments:
        (a12, b12), (a21, b21) = j["logits_12"], j["logits_21"]
        assert j["relative_score"] == [a12 - b12, b21 - a21]
    result = json.loads((calibrated / "results" / "calibration.json").read_text())
    assert list(result["principles"]) == DIMENSIONS
    for stats in result["principles"].values():
        assert stats["pairs"] == len(pairs)
        assert set(stats["by_language"]) == {"en", "de", "fr"}
        assert stats["by_language"]["de"]["pairs"] == 6
    consistent = sum(j["preference"] != 0 for j in judgments if j["dimension"] == DIMENSIONS[0])
    assert result["principles"][DIMENSIONS[0]]["consistent"] == consistent
    assert result["selection"]["pairs"] == len(pairs) and result["judge"]["judged_pairs"] == 12
    assert result["aggregate"]["all_principles"]["pairs"] == len(pairs)
    template = REPO / "src/salmon_wf/resources/judge_template.txt"
    assert result["setup"]["model"] == "models/tiny"
    assert result["setup"]["template_sha256"] == hashlib.sha256(template.read_bytes()).hexdigest()
    for name in figures.FIGURES:
        assert (folder / f"{name}.png").stat().st_size > 5000
    assert not (calibrated / "results" / "prompts.jsonl").exists()  # no main-workflow job ran


@pytest.mark.slow
def test_the_judge_sees_both_orders_of_each_pair(calibrated: Path, tmp_path: Path) -> None:
    """Judging the pairs with output_1 and output_2 swapped runs the same two prompts per
    principle: s12' = -s21 and s21' = -s12 (the letters' roles change with the order)."""
    folder = calibrated / "results" / "calibration"
    swapped = [
        r | {"output_1": r["output_2"], "output_2": r["output_1"]}
        for r in list(read_jsonl(folder / "pairs.jsonl"))[:3]
    ]
    write_jsonl(tmp_path / "swapped.jsonl", swapped)
    argv = ["judge", "--model", str(calibrated / "models" / "tiny"), "--pairs"]
    argv += [str(tmp_path / "swapped.jsonl"), "--principles", str(PRINCIPLES), "--template"]
    argv += [str(REPO / "src/salmon_wf/resources/judge_template.txt")]
    argv += ["--output", str(tmp_path / "j.jsonl"), "--device", "cpu"]
    try:
        assert main(argv) == 0
    finally:
        teardown_model_parallel()
    original = {(j["id"], j["dimension"]): j for j in read_jsonl(folder / "judgments.jsonl")}
    for j in read_jsonl(tmp_path / "j.jsonl"):
        s12, s21 = original[(j["id"], j["dimension"])]["relative_score"]
        assert j["relative_score"] == pytest.approx([-s21, -s12], rel=1e-4, abs=1e-5)


@pytest.mark.slow
def test_a_sampling_change_plans_nothing_and_a_calibration_change_reruns_it(
    calibrated: Path,
) -> None:
    trees = calibrated / "messages.jsonl"
    calibrate_config(calibrated, trees)
    assert planned(calibrated) == Counter()
    calibrate_config(calibrated, trees, **{"sampling.defaults.temperature": 0.3})
    assert planned(calibrated) == Counter()
    calibrate_config(calibrated, trees, **{"sampling.runs.response0.seed": 7})
    assert planned(calibrated) == Counter()
    calibrate_config(calibrated, trees, **{"calibrate.seed": 5})
    assert planned(calibrated) == Counter(
        calibrate_fingerprint=1,
        calibrate_pairs=1,
        calibrate_judge_shard=2,
        calibrate_gather=1,
        calibrate_summary=1,
        calibrate_figures=1,
    )
    calibrate_config(calibrated, trees, **{"aggregate.seed": 5})
    assert planned(calibrated) == Counter(calibrate_summary=1, calibrate_figures=1)
    calibrate_config(calibrated, trees)
    everything = planned(calibrated, "all")  # the main workflow: not run here
    assert everything["judge_shard"] == 2
    assert not [rule for rule in everything if rule.startswith("calibrate")]


@pytest.mark.slow
def test_the_report_of_the_calibrate_target_has_its_section(calibrated: Path) -> None:
    calibrate_config(calibrated, calibrated / "messages.jsonl")
    snakemake(calibrated, "--report", str(calibrated / "report.zip"), "calibrate")
    with zipfile.ZipFile(calibrated / "report.zip") as archive:
        names = {Path(n).name: archive.getinfo(n).file_size for n in archive.namelist()}
    for name in figures.FIGURES:
        assert names.get(f"{name}.png", 0) > 5000, sorted(names)


@pytest.mark.slow
def test_a_killed_calibration_judge_resumes_to_the_same_bytes(
    calibrated: Path, tmp_path: Path
) -> None:
    calibrate_config(tmp_path, calibrated / "messages.jsonl")  # the same input file
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")]
    command += ["--directory", str(tmp_path), "--configfile", str(tmp_path / "config.yaml")]
    env = os.environ | {"SALMON_WF_TEST_KILL_AT": "shard.append:3"}  # after 3 pairs
    killed = subprocess.run(
        [*command, "--cores", "2", "calibrate"], env=env, capture_output=True, timeout=600
    )
    assert killed.returncode != 0
    partial = list((tmp_path / "results/calibration/judgments").glob("*.partial"))
    assert partial and all(p.read_text().count("\n") == 3 * len(DIMENSIONS) for p in partial)
    snakemake(tmp_path, "--cores", "2", "calibrate")
    name = "calibration/judgments.jsonl"
    assert (tmp_path / "results" / name).read_bytes() == (
        calibrated / "results" / name
    ).read_bytes()
    resumed, fresh = (
        json.loads((d / "results/calibration.json").read_text()) for d in (tmp_path, calibrated)
    )
    assert resumed["judge"].pop("resumed") == 3 * len(partial)
    assert fresh["judge"].pop("resumed") == 0
    assert resumed == fresh
    logs = "".join(p.read_text() for p in (tmp_path / "logs/calibrate/judge").glob("*.log"))
    assert len(re.findall(r"\b3 resumed", logs)) >= len(partial)


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_SAMPLE.exists(), reason=f"{SHARED_SAMPLE} absent")
def test_the_real_oasst1_sample_gives_every_principle(tmp_path: Path) -> None:
    write_config(tmp_path, **{"calibrate.input": str(SHARED_SAMPLE), "calibrate.max_pairs": 4})
    snakemake(tmp_path, "--cores", "2", "calibrate")
    result = json.loads((tmp_path / "results" / "calibration.json").read_text())
    assert result["pairs"] == 4 and result["selection"]["candidate_pairs"] > 400
    assert list(result["principles"]) == DIMENSIONS
    assert result["pairs_judged"] >= 1
    for stats in result["principles"].values():
        assert stats["pairs"] == result["pairs_judged"]
        assert 0 <= stats["consistent"] <= stats["pairs"]
    assert set(result["languages"]) == {"en"}


@pytest.mark.slow
def test_the_whole_report_with_the_calibrate_target_has_both(tmp_path: Path) -> None:
    """The default target's report stays as it was; naming calibrate too adds its section."""
    write_config(tmp_path)
    snakemake(tmp_path, "--cores", "2")
    snakemake(tmp_path, "--report", str(tmp_path / "plain.zip"))
    snakemake(tmp_path, "--cores", "2", "calibrate")
    snakemake(tmp_path, "--report", str(tmp_path / "both.zip"), "all", "calibrate")
    for report, calibration in (("plain.zip", False), ("both.zip", True)):
        with zipfile.ZipFile(tmp_path / report) as archive:
            names = {Path(n).name for n in archive.namelist()}
        assert {"labels.png", "consistency.png", "examples.html"} <= names, report
        assert ({f"{n}.png" for n in figures.FIGURES} <= names) is calibration, report
