"""SALMON to the letter: the sampler prompt, the sampling window, the judge limit and truncation,
the raw-length pair filter and the OASST1 split (IBM/SALMON step 1, IBM/Dromedary's generate)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import salmon_wf
from salmon_wf.cli import main
from salmon_wf.data.jsonl import read_jsonl
from salmon_wf.data.oasst import choose_split, read_messages
from salmon_wf.data.principles import load_principles
from salmon_wf.engine.chat import format_prompt
from salmon_wf.engine.context import Fitted, fit_prompt
from salmon_wf.engine.sampler import Request, Sampler, SamplingParams
from salmon_wf.errors import OasstFormatError, RecordError
from salmon_wf.model.loader import LoadedModel
from salmon_wf.model.parallel import teardown_model_parallel
from salmon_wf.stages.clean import PromptFilter, clean_prompts
from salmon_wf.stages.gather import merge_summaries
from salmon_wf.stages.judge import load_template, pair_prompts
from salmon_wf.stages.pair import read_pairs
from salmon_wf.stages.sample import context_limit, encode_prompt
from salmon_wf.workflow import profile_names, shadowed_profiles

RESOURCES = Path(__file__).resolve().parents[1] / "src" / "salmon_wf" / "resources"
PRINCIPLES, TEMPLATE = RESOURCES / "principles.json", RESOURCES / "judge_template.txt"
DEMO = Path(salmon_wf.__file__).parent / "resources" / "demo_oasst" / "messages.jsonl"
META = "  Be brief.\n\n"  # SALMON strips the meta prompt file's text


def test_dromedary_prompt_is_salmons_string() -> None:
    """Meta prompt (stripped), newline, instruction, [blank line, input], blank line, cue."""
    with_input = format_prompt("dromedary", " Name a fruit.\n", "\nApple or pear? ", META)
    assert with_input == "Be brief.\nName a fruit.\n\nApple or pear?\n\n### Dromedary"
    without = format_prompt("dromedary", "Name a fruit.", "  ", META)
    assert without == "Be brief.\nName a fruit.\n\n### Dromedary"
    assert format_prompt("dromedary", "Hi?") == "\nHi?\n\n### Dromedary"  # empty meta: its line


def test_dromedary_prompt_token_ids_start_with_bos(tiny: LoadedModel) -> None:
    tok = tiny.tokenizer
    prompt = {"instruction": "Name a fruit.", "input": "Apple or pear?"}
    ids = encode_prompt(tok, "dromedary", prompt, META)
    expected = [1, 440, 494, 441, 281, 448, 445, 387, 456, 13, 498, 444, 458, 441, 260, 288, 448]
    expected += [451, 296, 456, 13, 13, 466, 454, 341, 440, 282, 284, 441, 286, 469, 13, 13, 305]
    expected += [440, 71, 448, 349, 425, 286, 460]
    assert ids == expected
    assert ids[0] == tok.bos_id and ids.count(tok.bos_id) == 1
    assert tok.decode(ids[1:]) == "Be brief.\nName a fruit.\n\nApple or pear?\n\n### Dromedary"
    assert ids[-1] != tok.encode("\n")[-1]  # no newline after the cue
    assert encode_prompt(tok, "chatml", prompt, META)[0] != tok.bos_id


def test_window_counts_tokens_after_the_shared_meta_prefix(tiny: LoadedModel) -> None:
    """Dromedary: prompt + generation within max_seq_len after a shared prefix of <= S tokens."""
    tok = tiny.tokenizer
    meta = "A user asks and the assistant answers. " * 6
    meta_ids = encode_prompt(tok, "dromedary", {"instruction": ""}, meta)
    ids = encode_prompt(tok, "dromedary", {"instruction": "Tell me about trains."}, meta)
    shared = len(tok.encode(meta.strip(), bos=True))  # BOS + the meta prompt, at least
    assert context_limit(ids, meta_ids, None, 640) is None
    assert context_limit(ids, meta_ids, 40, 0) == 40  # no shared prefix: a plain limit
    assert context_limit(ids, meta_ids, 40, 640) >= shared + 40
    assert context_limit(ids, meta_ids, 40, 5) == 45  # the shared part is capped
    requests = [
        Request(k, encode_prompt(tok, "dromedary", {"instruction": q}, meta))
        for k, q in (("a", "Tell me about trains."), ("b", "Why is the sea salty? Say it briefly."))
    ]
    requests = [
        Request(r.key, r.prompt_ids, max_len=context_limit(r.prompt_ids, meta_ids, 60, 640))
        for r in requests
    ]
    params = SamplingParams(temperature=0.9, max_new_tokens=200, seed=1, ignore_eos=True)
    done = {c.key: c for c in Sampler(tiny.model, tok, max_batch=2).generate(requests, params)}
    for r in requests:
        got = done[r.key]
        assert got.finish_reason == "length"
        assert got.n_prompt_tokens + len(got.token_ids) == r.max_len  # the window is filled
        shared_len = r.max_len - 60
        assert len(r.prompt_ids) - shared_len + len(got.token_ids) == 60
    too_long = Request("c", requests[1].prompt_ids, max_len=len(requests[1].prompt_ids))  # no room
    (skipped,) = Sampler(tiny.model, tok, max_batch=1).generate([too_long], params)
    assert skipped.finish_reason == "skipped"


# ---------------------------------------------------------------- judge limit and truncation


def test_fit_prompt_policies() -> None:
    ids = list(range(1, 11))  # 1 plays BOS
    assert fit_prompt(ids, 10, "left") == Fitted(ids)
    assert fit_prompt(ids, 4, "left") == Fitted([7, 8, 9, 10], truncated=True)  # BOS cut too
    assert fit_prompt(ids, 4, "truncate") == Fitted([1, 8, 9, 10], truncated=True)
    assert fit_prompt(ids, 4, "skip") == Fitted(None)


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture
def long_and_short_pairs(tmp_path: Path) -> Path:
    """Two pairs: a short one and one whose judging prompts run past 400 tokens."""
    return write_jsonl(
        tmp_path / "pairs.jsonl",
        [
            {"id": "short", "instruction": "Name a fruit.", "input": ""}
            | {"output_1": "An apple.", "output_2": "A pear, ripe."},
            {"id": "long", "instruction": "Tell me about trains. " * 12, "input": ""}
            | {"output_1": "Trains run on rails. " * 10, "output_2": "They carry people. " * 10},
        ],
    )


def judge_cli(tiny_dir: Path, pairs: Path, out: Path, *extra: str) -> dict:
    argv = ["judge", "--model", str(tiny_dir), "--pairs", str(pairs), "--output", str(out)]
    argv += ["--principles", str(PRINCIPLES), "--template", str(TEMPLATE), "--fingerprint", "f"]
    argv += ["--summary", str(out.with_suffix(".summary.json")), *extra]
    try:
        assert main(argv) == 0
    finally:
        teardown_model_parallel()
    return json.loads(out.with_suffix(".summary.json").read_text())


def test_judge_limit_skip_left_and_middle_are_counted(
    tiny_dir: Path, long_and_short_pairs: Path, tmp_path: Path
) -> None:
    n = len(load_principles(PRINCIPLES))
    skip = judge_cli(tiny_dir, long_and_short_pairs, tmp_path / "skip.jsonl", "--max-length", "400")
    assert skip["skipped_pairs"] == 1 and skip["skipped_ids"] == ["long"]
    assert skip["judged_pairs"] == 1 and skip["truncated_prompts"] == 0
    assert skip["settings"] == {"max_length": 400, "long_prompt_policy": "skip"}
    assert {r["id"] for r in read_jsonl(tmp_path / "skip.jsonl")} == {"short"}
    left = judge_cli(
        tiny_dir, long_and_short_pairs, tmp_path / "left.jsonl",
        "--max-length", "400", "--long-prompt-policy", "left",
    )  # fmt: skip
    assert left["skipped_pairs"] == 0 and left["judged_pairs"] == 2
    assert left["truncated_judgments"] == n and left["truncated_prompts"] == 2 * n
    records = list(read_jsonl(tmp_path / "left.jsonl"))
    assert [r["truncated"] for r in records if r["id"] == "long"] == [[True, True]] * n
    assert [r["truncated"] for r in records if r["id"] == "short"] == [[False, False]] * n
    # The long pair's first score: a plain forward over the last 400 tokens (no BOS), SALMON's.
    from salmon_wf.model.loader import load_model
    from salmon_wf.model.parallel import setup_model_parallel

    loaded = load_model(tiny_dir, setup_model_parallel("cpu"))
    try:
        tok, model = loaded.tokenizer, loaded.model
        pair = next(p for p in read_pairs(long_and_short_pairs) if p.id == "long")
        text = pair_prompts(pair, load_principles(PRINCIPLES), load_template(TEMPLATE, "Output ("))
        ids = tok.encode(text[0], bos=True)
        assert len(ids) > 400
        kept = ids[-400:]
        assert kept[0] != tok.bos_id
        choice = [tok.id_after("Output (", "a"), tok.id_after("Output (", "b")]
        logits = model(torch.tensor([kept]))[0, -1, choice]
    finally:
        teardown_model_parallel()
    first = next(r for r in records if r["id"] == "long")
    assert first["relative_score"][0] == pytest.approx(float(logits[0] - logits[1]), abs=1e-4)
    middle = judge_cli(
        tiny_dir, long_and_short_pairs, tmp_path / "mid.jsonl",
        "--max-length", "400", "--long-prompt-policy", "truncate",
    )  # fmt: skip
    assert middle["truncated_prompts"] == 2 * n and middle["skipped_pairs"] == 0
    # Shard summaries merge into one: counts add up, ids join, settings must agree.
    merged = merge_summaries([tmp_path / "skip.summary.json"] * 2)
    assert merged["shards"] == 2 and merged["skipped_pairs"] == 2 and merged["judged_pairs"] == 2
    assert merged["skipped_ids"] == ["long", "long"] and merged["settings"] == skip["settings"]
    with pytest.raises(RecordError, match="settings"):
        merge_summaries([tmp_path / "skip.summary.json", tmp_path / "left.summary.json"])


# ---------------------------------------------------------------- pair filter


def test_responses_keep_the_raw_generation_and_cut_at(tiny_dir: Path, tmp_path: Path) -> None:
    prompts = write_jsonl(
        tmp_path / "prompts.jsonl",
        [{"id": f"p{i}", "instruction": f"Tell me about {t}.", "input": ""}
         for i, t in enumerate(("bread", "trains", "the sea"))],
    )  # fmt: skip
    out = tmp_path / "r.jsonl"
    argv = ["sample", "--model", str(tiny_dir), "--prompts", str(prompts), "--output", str(out)]
    argv += ["--max-new-tokens", "40", "--temperature", "1.0", "--seed", "5", "--fingerprint", "x"]
    argv += ["--stop", "<never>", "--cut-at", "e"]  # generation runs on, response cut at "e"
    try:
        assert main(argv) == 0
    finally:
        teardown_model_parallel()
    records = list(read_jsonl(out))
    assert len(records) == 3
    for r in records:
        assert r["response"] == r["generation"].split("e")[0].rstrip("\ufffd").strip()
    assert any(len(r["generation"]) > len(r["response"]) for r in records)


# ---------------------------------------------------------------- OASST1 split


def demo_rows() -> list[dict]:
    return [json.loads(line) for line in DEMO.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def hf_folder(tmp_path: Path) -> tuple[Path, list[dict], list[dict]]:
    """An HF snapshot layout: data/train-*.parquet and data/validation-*.parquet, split by tree."""
    rows = demo_rows()
    trees = sorted({r["message_tree_id"] for r in rows})
    val_trees = set(trees[::4])
    train = [r for r in rows if r["message_tree_id"] not in val_trees]
    val = [r for r in rows if r["message_tree_id"] in val_trees]
    data = tmp_path / "oasst1" / "data"
    data.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(train), data / "train-00000-of-00001-1a2b.parquet")
    pq.write_table(pa.Table.from_pylist(val), data / "validation-00000-of-00001-3c4d.parquet")
    return tmp_path / "oasst1", train, val


def clean_cli(tmp_path: Path, source: Path, *extra: str) -> tuple[list[dict], dict]:
    out, summary = tmp_path / "out" / "prompts.jsonl", tmp_path / "out" / "summary.json"
    argv = ["clean-prompts", "--input", str(source), "--output", str(out)]
    assert main([*argv, "--summary", str(summary), *extra]) == 0
    return list(read_jsonl(out)), json.loads(summary.read_text())


def expected_ids(rows: list[dict], tmp_path: Path) -> list[str]:
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    return [r["id"] for r in clean_prompts(read_messages(path), PromptFilter())[0]]


def test_train_split_by_default_from_an_hf_folder(
    hf_folder: tuple[Path, list[dict], list[dict]], tmp_path: Path
) -> None:
    folder, train, val = hf_folder
    records, summary = clean_cli(tmp_path, folder)
    assert [r["id"] for r in records] == expected_ids(train, tmp_path) != []
    assert summary["split"]["requested"] == "train" and summary["split"]["told"] is True
    assert [Path(f).name for f in summary["split"]["files"]] == [
        "train-00000-of-00001-1a2b.parquet"
    ]
    assert summary["n_messages"] == len(train)
    records, summary = clean_cli(tmp_path, folder, "--split", "validation")
    assert [r["id"] for r in records] == expected_ids(val, tmp_path) != []
    records, summary = clean_cli(tmp_path, folder, "--split", "all")
    assert summary["n_messages"] == len(train) + len(val)
    assert summary["split"] == {
        "requested": "all", "told": True, "note": "",
        "files": [str(p) for p in sorted((folder / "data").glob("*.parquet"))],
    }  # fmt: skip
    alone = folder / "data" / "validation-00000-of-00001-3c4d.parquet"
    with pytest.raises(OasstFormatError, match="no parquet file of split 'train'"):
        choose_split(alone, "parquet", "train")


def test_jsonl_exports_mix_splits_and_the_summary_says_so(tmp_path: Path) -> None:
    _, summary = clean_cli(tmp_path, DEMO)
    assert summary["split"]["requested"] == "train" and summary["split"]["told"] is False
    assert "mix the train and validation splits" in summary["split"]["note"]
    assert summary["n_messages"] == len(demo_rows())  # everything was read
    _, every = clean_cli(tmp_path, DEMO, "--split", "all")
    assert every["split"]["told"] is True and every["split"]["note"] == ""
    unnamed = tmp_path / "f"
    unnamed.mkdir()
    pq.write_table(pa.Table.from_pylist(demo_rows()), unnamed / "part-0.parquet")
    choice = choose_split(unnamed, "parquet", "train")
    assert choice.told is False and "no file name tells its split" in choice.note


# ---------------------------------------------------------------- `--profile slurm` by name


def test_profile_names_and_the_profiles_a_repo_profile_hides(tmp_path: Path) -> None:
    argv = ["snakemake", "--profile", "slurm", "--profile=other", "-n"]
    assert profile_names(argv, {}) == ["slurm", "other"]
    assert profile_names(["snakemake"], {"SNAKEMAKE_PROFILE": "slurm"}) == ["slurm"]
    assert profile_names(["snakemake"], {}) == []
    repo = tmp_path / "repo"
    (repo / "profiles" / "slurm").mkdir(parents=True)
    user, site = tmp_path / "user", tmp_path / "site"
    (user / "slurm").mkdir(parents=True)
    dirs = [str(user), str(site)]
    assert shadowed_profiles(["slurm"], repo, dirs) == []  # no repo-root link: nothing to say
    (repo / "slurm").symlink_to("profiles/slurm")
    assert shadowed_profiles(["slurm"], repo, dirs) == [("slurm", user / "slurm")]
    assert shadowed_profiles(["profiles/slurm"], repo, dirs) == []  # a path is unambiguous
    (user / "slurm").rmdir()
    assert shadowed_profiles(["slurm"], repo, dirs) == []
