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
from salmon_wf.stages.gather import gather_judgments
from salmon_wf.stages.judge import decide, load_template, pair_prompts, render
from salmon_wf.stages.pair import Pair, make_pairs

RESOURCES = Path(__file__).resolve().parents[1] / "src" / "salmon_wf" / "resources"
TEMPLATE = RESOURCES / "judge_template.txt"


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
    one = gather_judgments(runs[2], [tmp_path / "one.jsonl"], RESOURCES / "principles.json")
    two = gather_judgments(runs[2], shards, RESOURCES / "principles.json")
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
