"""The judge stage: pairing by id, prompt rendering, SALMON's scores, sharding and resuming."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from salmon_wf.cli import main
from salmon_wf.data.jsonl import read_jsonl
from salmon_wf.data.principles import load_principles
from salmon_wf.model.loader import LoadedModel
from salmon_wf.model.parallel import teardown_model_parallel
from salmon_wf.stages.gather import gather
from salmon_wf.stages.judge import decide, load_template, pair_prompts, render
from salmon_wf.stages.pair import Pair, make_pairs, read_pairs

RESOURCES = Path(__file__).resolve().parents[1] / "src" / "salmon_wf" / "resources"
TEMPLATE = RESOURCES / "judge_template.txt"


def write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture
def runs(tmp_path: Path) -> tuple[Path, Path, Path]:
    answers = [
        "Bread needs flour, water, salt and yeast.",
        "Trains run on rails between cities.",
        "Sleep helps the body recover.",
        "ok",
        "The sea is salty because of minerals.",
    ]
    run0 = [
        {"id": f"p{i}", "instruction": f"Question {i}?", "input": "", "response": a}
        for i, a in enumerate(answers)
    ]
    run1 = [dict(r, response=r["response"][::-1] + " More words here.") for r in run0]
    run1 = [*run1[1:][::-1], {"id": "extra", "instruction": "x", "response": "only in run 1"}]
    prompts = write(tmp_path / "prompts.jsonl", [{"id": r["id"]} for r in run0])
    return write(tmp_path / "r0.jsonl", run0), write(tmp_path / "r1.jsonl", run1), prompts


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


def test_rendering_is_single_pass_and_orders_swap_outputs() -> None:
    template = load_template(TEMPLATE, "Output (")
    values = {"UserInstruction": "Say {OutputB}", "OutputA": "A {Dimension}", "OutputB": "B"}
    text = render(template, values | {"Dimension": "Concise", "Definition": "short"})
    assert "Say {OutputB}" in text and "A {Dimension}" in text
    assert text.endswith("the more Concise output is Output (")
    principles = load_principles(RESOURCES / "principles.json")
    prompts = pair_prompts(Pair("x", "Q", "", "first", "second"), principles, template)
    n = len(principles)
    assert len(prompts) == 2 * n
    assert prompts[0].index("first") < prompts[0].index("second")
    assert prompts[n].index("second") < prompts[n].index("first")


def test_template_must_end_with_the_answer_context(tmp_path: Path) -> None:
    bad = tmp_path / "t.txt"
    bad.write_text("{OutputA} {OutputB} which is better?")
    with pytest.raises(ValueError, match="must end with 'Output \\('"):
        load_template(bad, "Output (")
    bad.write_text("{OutputA} only, Output (")
    with pytest.raises(ValueError, match="lacks placeholder"):
        load_template(bad, "Output (")


def test_decide_follows_salmon() -> None:
    assert (decide(1.0, 2.0), decide(-1.0, -0.5), decide(1.0, -1.0), decide(0.0, 3.0)) == (
        1,
        2,
        0,
        0,
    )


def judge(tiny_dir: Path, runs: tuple[Path, Path, Path], out: Path, shard: int, n: int) -> None:
    pairs = out.with_name(out.name + ".pairs.jsonl")
    assert main(["pair", "--responses", str(runs[0]), str(runs[1]), "--output", str(pairs)]) == 0
    argv = ["judge", "--model", str(tiny_dir), "--pairs", str(pairs)]
    argv += ["--principles", str(RESOURCES / "principles.json"), "--template", str(TEMPLATE)]
    argv += ["--output", str(out), "--shard", str(shard), "--num-shards", str(n)]
    argv += ["--fingerprint", "f", "--max-rows", "5"]
    try:
        assert main(argv) == 0
    finally:
        teardown_model_parallel()


def test_scores_match_a_plain_forward_and_do_not_depend_on_shards(
    tiny_dir: Path, tiny: LoadedModel, runs: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    teardown_model_parallel()  # the judge command sets up its own process group
    judge(tiny_dir, runs, tmp_path / "one.jsonl", 0, 1)
    shards = [tmp_path / f"s{i}.jsonl" for i in range(2)]
    for i, shard in enumerate(shards):
        judge(tiny_dir, runs, shard, i, 2)
    principles = load_principles(RESOURCES / "principles.json")
    one = gather(runs[2], [tmp_path / "one.jsonl"], RESOURCES / "principles.json")
    two = gather(runs[2], shards, RESOURCES / "principles.json")
    assert json.dumps(one) == json.dumps(two)  # same bytes whatever the shard count
    assert len(one) == 3 * len(principles)
    # The first record against a plain full forward of its prompt (order 1-2).
    from salmon_wf.stages.common import setup_model_parallel

    setup_model_parallel("cpu")
    pairs, _ = make_pairs(runs[0], runs[1], 16)
    template = load_template(TEMPLATE, "Output (")
    text = pair_prompts(pairs[0], principles, template)[0]
    tok = tiny.tokenizer
    ids = [tok.id_after("Output (", "a"), tok.id_after("Output (", "b")]
    logits = tiny.model(torch.tensor([tok.encode(text, bos=True)]))[0, -1, ids]
    first = one[0]
    assert first["dimension"] == principles[0].dimension
    assert first["relative_score"][0] == pytest.approx(float(logits[0] - logits[1]), abs=1e-4)
    assert first["preference"] == decide(*first["relative_score"])


def test_resume_skips_judged_pairs_and_redoes_incomplete_ones(
    tiny_dir: Path, runs: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "j.jsonl"
    judge(tiny_dir, runs, out, 0, 1)
    records = list(read_jsonl(out))
    n = len(load_principles(RESOURCES / "principles.json"))
    kept = [dict(r, relative_score=[9.0, 9.0]) for r in records[:n]]  # a finished pair
    torn = records[n : n + 3]  # a pair cut short by a kill
    partial = out.with_name(out.name + ".partial")
    partial.write_text("".join(json.dumps(r) + "\n" for r in kept + torn))
    out.with_name(out.name + ".partial.json").write_text(json.dumps({"fingerprint": "f"}))
    out.unlink()
    judge(tiny_dir, runs, out, 0, 1)
    again = list(read_jsonl(out))
    assert len(again) == len(records)
    assert [r["relative_score"] for r in again[:n]] == [[9.0, 9.0]] * n
    by_key = {(r["id"], r["dimension"]): r for r in again}
    for r in records[n:]:
        assert by_key[(r["id"], r["dimension"])] == r
