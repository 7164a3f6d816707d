"""The sample and gather stages: shard outputs, resuming after a kill, shard-count independence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from salmon_wf.cli import main
from salmon_wf.data.jsonl import read_jsonl
from salmon_wf.errors import RecordError
from salmon_wf.model.parallel import teardown_model_parallel
from salmon_wf.stages.gather import gather_responses
from salmon_wf.stages.sample import clean_response

TOPICS = ["bread", "the sea", "trains", "sleep", "email", "trees", "a poem", "numbers"]


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.jsonl"
    with path.open("w") as f:
        for i, topic in enumerate(TOPICS):
            record = {"id": f"p{i:02d}", "instruction": f"Tell me about {topic}.", "input": ""}
            f.write(json.dumps(record) + "\n")
    return path


def sample(tiny_dir: Path, prompts: Path, out: Path, shard: int, n: int, *extra: str) -> None:
    argv = ["sample", "--model", str(tiny_dir), "--prompts", str(prompts), "--output", str(out)]
    argv += ["--shard", str(shard), "--num-shards", str(n), "--max-new-tokens", "16"]
    argv += ["--temperature", "0.9", "--seed", "3", "--fingerprint", f"run-{shard}-{n}", *extra]
    try:
        assert main(argv) == 0
    finally:
        teardown_model_parallel()


def test_gathered_responses_do_not_depend_on_shards_or_batch(
    tiny_dir: Path, prompts: Path, tmp_path: Path
) -> None:
    sample(tiny_dir, prompts, tmp_path / "one.jsonl", 0, 1, "--batch-size", "3")
    shards = [tmp_path / f"s{i}.jsonl" for i in range(3)]
    for i, shard in enumerate(shards):
        sample(tiny_dir, prompts, shard, i, 3, "--batch-size", "2")
    assert sorted(r["id"] for r in read_jsonl(shards[1])) == ["p01", "p04", "p07"]
    one = gather_responses(prompts, [tmp_path / "one.jsonl"])
    three = gather_responses(prompts, shards)
    assert [r["id"] for r in three] == [f"p{i:02d}" for i in range(len(TOPICS))]
    assert json.dumps(one) == json.dumps(three)
    record = three[0]
    assert set(record) >= {"id", "instruction", "input", "generation", "response", "finish_reason"}
    assert record["response"] == clean_response(record["generation"], ("###",))


def test_resume_keeps_finished_prompts_and_drops_a_torn_line(
    tiny_dir: Path, prompts: Path, tmp_path: Path
) -> None:
    out = tmp_path / "shard.jsonl"
    sample(tiny_dir, prompts, out, 0, 1)
    full = list(read_jsonl(out))
    # A killed run: two finished prompts (marked, to prove they are not redone), a torn line.
    marked = [dict(r, generation="KEPT") for r in full[:2]]
    partial = out.with_name(out.name + ".partial")
    partial.write_text("".join(json.dumps(r) + "\n" for r in marked) + '{"id": "p0')
    out.with_name(out.name + ".partial.json").write_text(json.dumps({"fingerprint": "run-0-1"}))
    out.unlink()
    sample(tiny_dir, prompts, out, 0, 1)
    resumed = {r["id"]: r for r in read_jsonl(out)}
    assert len(resumed) == len(TOPICS)
    assert [resumed[r["id"]]["generation"] for r in marked] == ["KEPT", "KEPT"]
    for r in full[2:]:
        assert resumed[r["id"]] == r
    assert not partial.exists()


def test_partial_output_of_another_job_is_not_reused(
    tiny_dir: Path, prompts: Path, tmp_path: Path
) -> None:
    out = tmp_path / "shard.jsonl"
    partial = out.with_name(out.name + ".partial")
    partial.write_text(json.dumps({"id": "p00", "generation": "STALE"}) + "\n")
    out.with_name(out.name + ".partial.json").write_text(json.dumps({"fingerprint": "other"}))
    sample(tiny_dir, prompts, out, 0, 1)
    assert all(r["generation"] != "STALE" for r in read_jsonl(out))


def test_clean_response_cuts_at_the_first_stop() -> None:
    assert clean_response("  Paris.\n### User\nmore ### x", ("###",)) == "Paris."
    assert clean_response("a<|im_end|>b###c", ("###", "<|im_end|>")) == "a"
    assert clean_response(" no stop here ", ("###",)) == "no stop here"


def test_gather_rejects_duplicates_and_missing_prompts(prompts: Path, tmp_path: Path) -> None:
    shard = tmp_path / "s.jsonl"
    shard.write_text(json.dumps({"id": "p00"}) + "\n" + json.dumps({"id": "p00"}) + "\n")
    with pytest.raises(RecordError, match="duplicate record"):
        gather_responses(prompts, [shard])
    shard.write_text(json.dumps({"id": "p00"}) + "\n")
    with pytest.raises(RecordError, match="7 prompt"):
        gather_responses(prompts, [shard])
    shard.write_text('{"id": "p00"}\n{"oops": 1}\n')
    with pytest.raises(RecordError, match=r"s.jsonl line 2: field 'id' missing"):
        gather_responses(prompts, [shard])
