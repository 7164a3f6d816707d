"""The engine: reproducible sampling under any batching or sharding, stops, prefixes, scoring."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import spawn

from salmon_wf.engine.context import fit_prompt
from salmon_wf.engine.sampler import (
    Completion,
    Request,
    Sampler,
    SamplingParams,
    choose_tokens,
)
from salmon_wf.engine.scorer import PrefixScorer
from salmon_wf.model.dtypes import cpu_bf16_flags
from salmon_wf.model.loader import LoadedModel, load_model
from salmon_wf.model.parallel import ParallelContext

GREEDY = SamplingParams(temperature=0.0, max_new_tokens=24, stop=("###",), seed=7)
SAMPLED = SamplingParams(temperature=0.9, top_p=0.9, max_new_tokens=24, stop=("###",), seed=7)
TOPICS = ["apples", "the sea at night", "a list and a tuple", "bread", "the train", "trees",
          "a poem", "email", "sleep", "printing", "numbers 1 2 3"]  # fmt: skip


def make_requests(tiny: LoadedModel, n: int = 11) -> list[Request]:
    meta = "A user asks a question and an assistant answers it as well as it can.\n"
    return [
        Request(
            f"id-{i}", tiny.tokenizer.encode(f"{meta}Tell me about {TOPICS[i % 11]}.", bos=True)
        )
        for i in range(n)
    ]


def run(sampler: Sampler, requests: list[Request], params: SamplingParams) -> dict[str, Completion]:
    return {c.key: c for c in sampler.generate(requests, params)}


@pytest.mark.parametrize("params", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_same_text_for_batch_sizes_shards_and_prefix_cache(
    tiny: LoadedModel, params: SamplingParams
) -> None:
    requests = make_requests(tiny)
    prefix = tiny.tokenizer.encode("A user asks a question", bos=True)
    reference = run(Sampler(tiny.model, tiny.tokenizer, max_batch=1), requests, params)
    texts = {k: c.text for k, c in reference.items()}
    assert len(set(texts.values())) > 5  # real, varied generations
    for batch in (3, 8):
        got = run(Sampler(tiny.model, tiny.tokenizer, max_batch=batch), requests, params)
        assert {k: c.text for k, c in got.items()} == texts
    sharded: dict[str, str] = {}
    for shard in range(3):  # prompts[i::3], each shard its own engine, as the workflow runs them
        sampler = Sampler(tiny.model, tiny.tokenizer, max_batch=4, shared_prefix=prefix)
        sharded |= {k: c.text for k, c in run(sampler, requests[shard::3], params).items()}
        assert sampler.stats["prefix_hits"] == len(requests[shard::3])
    assert sharded == texts


@pytest.mark.skipif(
    "amx_bf16" not in cpu_bf16_flags(),
    reason="bf16 batch invariance is measured on AMX CPUs only (docs/benchmarks.md)",
)
def test_bf16_attention_reads_each_rows_own_keys(
    tiny_dir: Path, single_rank: ParallelContext
) -> None:
    """Padding a row's keys to its batch's longest changed its bf16 attention's bits (4-5 of 11
    texts here at batch 3 or 8); row by row, the text is the batch-of-one text
    (tests/test_real_model.py checks the prefill on the real model)."""
    bf16 = load_model(tiny_dir, single_rank, dtype="bf16")
    requests = make_requests(bf16)

    def texts(batch: int) -> dict[str, str]:
        got = run(Sampler(bf16.model, bf16.tokenizer, max_batch=batch), requests, SAMPLED)
        return {k: c.text for k, c in got.items()}

    alone = texts(1)
    assert len(set(alone.values())) > 5
    assert texts(3) == alone and texts(8) == alone


def test_same_seed_same_bytes_other_seed_other_text(tiny: LoadedModel) -> None:
    requests = make_requests(tiny)

    def dump(params: SamplingParams) -> bytes:
        got = run(Sampler(tiny.model, tiny.tokenizer, max_batch=4), requests, params)
        return json.dumps({k: got[k].text for k in sorted(got)}).encode()

    assert dump(SAMPLED) == dump(SAMPLED)
    other = SamplingParams(**{**SAMPLED.__dict__, "seed": 8})
    assert dump(other) != dump(SAMPLED)


def test_stop_strings_and_eos_end_each_row(tiny: LoadedModel) -> None:
    requests = make_requests(tiny)
    params = SamplingParams(temperature=1.0, max_new_tokens=60, stop=("e",), seed=3)
    got = run(Sampler(tiny.model, tiny.tokenizer, max_batch=4), requests, params)
    for completion in got.values():
        if completion.finish_reason == "stop":
            assert completion.text.endswith("e") or "e" in completion.text[-4:]
            assert "e" not in tiny.tokenizer.decode(completion.token_ids[:-1])
        elif completion.finish_reason == "length":
            assert len(completion.token_ids) == 60 and "e" not in completion.text
        else:
            assert completion.finish_reason == "eos"
            assert tiny.tokenizer.eos_id not in completion.token_ids
    assert {c.finish_reason for c in got.values()} >= {"stop"}


def reference_nucleus(logits: torch.Tensor, top_p: float, uniforms: torch.Tensor) -> list[int]:
    """Row by row in plain Python: sort by (-p, id), keep while the mass before < top_p, invert."""
    chosen = []
    probs = torch.softmax(logits.double() / 0.7, -1).tolist()
    for row, u in zip(probs, uniforms.tolist(), strict=True):
        ranked = sorted(range(len(row)), key=lambda i: (-row[i], i))
        kept, mass = [], 0.0
        for i in ranked:
            if mass >= top_p:
                break
            kept.append(i)
            mass += row[i]
        target, running = u * mass, 0.0
        chosen.append(kept[-1])
        for i in kept:
            running += row[i]
            if running > target:
                chosen[-1] = i
                break
    return chosen


@pytest.mark.parametrize("vocab", [40, 300, 4000])
def test_nucleus_fast_path_picks_the_sorted_inverse_cdf_token(vocab: int) -> None:
    generator = torch.Generator().manual_seed(vocab)
    for trial in range(12):
        logits = torch.randn(6, vocab, generator=generator) * (1 + trial)
        if trial % 3 == 0:
            logits = logits.round()  # many exact ties, also at the top-k cut
        uniforms = torch.rand(6, generator=generator, dtype=torch.float64)
        for top_p in (0.3, 0.9, 0.99):
            assert choose_tokens(logits, 0.7, top_p, uniforms).tolist() == reference_nucleus(
                logits, top_p, uniforms
            ), (trial, top_p)


def test_full_nucleus_inverts_the_cdf_in_vocabulary_order() -> None:
    probs = torch.tensor([[0.1, 0.2, 0.3, 0.4]] * 4)
    uniforms = torch.tensor([0.05, 0.25, 0.55, 0.95], dtype=torch.float64)
    assert choose_tokens(probs.log() * 0.7, 0.7, 1.0, uniforms).tolist() == [0, 1, 2, 3]


def test_finished_rows_free_their_slot(tiny: LoadedModel) -> None:
    """Continuous batching: decode steps track the total work, not batches x longest member."""
    requests = make_requests(tiny, 24)
    params = SamplingParams(temperature=1.0, max_new_tokens=40, stop=("e",), seed=5)
    sampler = Sampler(tiny.model, tiny.tokenizer, max_batch=4)
    got = run(sampler, requests, params)
    lengths = [len(got[r.key].token_ids) + (got[r.key].finish_reason == "eos") for r in requests]
    static_steps = sum(max(lengths[i : i + 4]) - 1 for i in range(0, len(lengths), 4))
    assert max(lengths) > 2 * min(lengths)
    assert sampler.stats["generated_tokens"] == sum(lengths)
    assert sampler.stats["decode_steps"] < static_steps


def test_long_prompts_are_skipped_or_truncated_and_counted(tiny: LoadedModel) -> None:
    long = Request("long", tiny.tokenizer.encode("word " * 400, bos=True))
    short = make_requests(tiny, 2)
    sampler = Sampler(tiny.model, tiny.tokenizer, max_batch=2, max_seq_len=128)
    got = run(sampler, [long, *short], GREEDY)
    assert got["long"].finish_reason == "skipped" and got["long"].text == ""
    assert sampler.stats["skipped"] == 1 and len(got) == 3
    sampler = Sampler(tiny.model, tiny.tokenizer, 2, max_seq_len=128, long_prompt_policy="truncate")
    got = run(sampler, [long], GREEDY)
    assert got["long"].truncated and got["long"].n_prompt_tokens + len(got["long"].token_ids) <= 128
    assert sampler.stats["truncated"] == 1
    fitted = fit_prompt(list(range(10)), 6, "truncate", keep_head=2)
    assert fitted.ids == [0, 1, 6, 7, 8, 9] and fitted.truncated


def judge_like_prompts(tiny: LoadedModel) -> tuple[list[list[int]], list[int]]:
    tok = tiny.tokenizer
    head = tok.encode("Consider the following two outputs.\n", bos=True)
    prompts = []
    for pair in range(3):
        a, b = tok.encode(f"first answer {pair} " * (pair + 1)), tok.encode(f"second {pair}")
        for first, second in ((a, b), (b, a)):
            for principle in ("concise", "honest", "ethical", "specific"):
                tail = tok.encode(f" The more {principle} output is Output (")
                prompts.append(head + tok.encode(f"Q{pair}: ") + first + second + tail)
    return prompts, [tok.id_after("Output (", "a"), tok.id_after("Output (", "b")]


def test_prefix_shared_scoring_equals_scoring_each_prompt_alone(tiny: LoadedModel) -> None:
    prompts, ids = judge_like_prompts(tiny)
    scorer = PrefixScorer(tiny.model, max_rows=3)
    shared = scorer.score(prompts, ids)
    alone = torch.stack([tiny.model(torch.tensor([p]))[0, -1, ids] for p in prompts])
    torch.testing.assert_close(shared, alone, rtol=1e-5, atol=1e-4)
    assert scorer.stats["tokens_run"] < scorer.stats["prompt_tokens"] / 3
    duplicated = scorer.score([prompts[0], prompts[0][:-3], prompts[0]], ids)
    torch.testing.assert_close(duplicated[0], duplicated[2])
    torch.testing.assert_close(
        duplicated[1], tiny.model(torch.tensor([prompts[0][:-3]]))[0, -1, ids]
    )


def test_two_ranks_sample_and_score_like_one(tiny: LoadedModel, tiny_dir: Path, tmp_path: Path):
    requests = make_requests(tiny, 5)
    prompts, ids = judge_like_prompts(tiny)
    expected = run(Sampler(tiny.model, tiny.tokenizer, max_batch=2), requests, SAMPLED)
    spec = {
        "batch": 2,
        "params": {**SAMPLED.__dict__, "stop": list(SAMPLED.stop)},
        "requests": [[r.key, r.prompt_ids] for r in requests],
    }
    for result in spawn(2, tiny_dir, tmp_path, "sample", spec):
        assert result["texts"] == {k: c.text for k, c in expected.items()}
    scores = PrefixScorer(tiny.model).score(prompts, ids)
    for result in spawn(2, tiny_dir, tmp_path, "score", {"prompts": prompts, "ids": ids}):
        torch.testing.assert_close(torch.tensor(result["scores"]), scores, rtol=0, atol=1e-5)
