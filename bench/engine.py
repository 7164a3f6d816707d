"""Engine benchmark (run by hand): sampler tokens/s vs transformers `generate`, prefill FLOP/s.

    .venv/bin/python bench/engine.py [--model DIR] [--batch 8] [--new-tokens 64]

Without --model, weights are random in SmolLM2-135M's shape (the speed does not depend on the
values: every row runs exactly --new-tokens, EOS ignored, on both sides). Both sides use the
same weights, prompts, batch size, sampling settings and thread count, in one process.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from salmon_wf.engine.sampler import Request, Sampler, SamplingParams
from salmon_wf.model.checkpoint import load_rank_state
from salmon_wf.model.hf_export import to_hf_llama
from salmon_wf.model.loader import load_model
from salmon_wf.model.parallel import setup_model_parallel
from salmon_wf.model.params import ModelArgs
from salmon_wf.model.tiny import random_weights
from salmon_wf.model.transformer import Transformer, body_flops_per_token

SMOLLM2_SHAPE = ModelArgs(
    dim=576, n_layers=30, n_heads=9, n_kv_heads=3, vocab_size=49152, hidden_dim=1536,
    rope_theta=100000.0, max_seq_len=2048,
)  # fmt: skip


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_flops(n: int = 2048) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    return 2 * n**3 / best_of(lambda: a @ b)


def build(model_dir: str | None) -> tuple[Transformer, dict, ModelArgs]:
    ctx = setup_model_parallel("cpu")
    if model_dir:
        loaded = load_model(model_dir, ctx)
        return loaded.model, load_rank_state(model_dir, loaded.args, 0, 1), loaded.args
    args = SMOLLM2_SHAPE
    state = random_weights(args, seed=0)
    model = Transformer(args)
    with torch.no_grad():
        for name, param in model.state_dict().items():
            param.copy_(state[name])
    return model.eval(), state, args


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prefill-rows", type=int, default=4)
    parser.add_argument("--prefill-tokens", type=int, default=512)
    parser.add_argument("--json", type=Path, help="write the figures here")
    opts = parser.parse_args()
    model, state, args = build(opts.model)
    gen = torch.Generator().manual_seed(0)
    prompts = torch.randint(3, args.vocab_size, (opts.batch, opts.prompt_tokens), generator=gen)
    results: dict[str, float] = {"threads": torch.get_num_threads()}

    results["matmul_gflops"] = matmul_flops() / 1e9
    tokens = torch.randint(
        3, args.vocab_size, (opts.prefill_rows, opts.prefill_tokens), generator=gen
    )
    last = torch.full((opts.prefill_rows,), opts.prefill_tokens - 1)
    model(tokens[:, :32], logits_at=last.clamp(max=31))
    seconds = best_of(lambda: model(tokens, logits_at=last))
    flops = body_flops_per_token(args, opts.prefill_tokens // 2) * tokens.numel()
    flops += 2 * args.dim * args.vocab_size * opts.prefill_rows
    results["prefill_gflops"] = flops / seconds / 1e9
    results["prefill_vs_matmul"] = results["prefill_gflops"] / results["matmul_gflops"]

    params = SamplingParams(
        temperature=0.7, top_p=0.9, max_new_tokens=opts.new_tokens, seed=1, ignore_eos=True
    )

    class _NoStopTokenizer:
        stop_ids = frozenset()

        def decode(self, ids: list[int]) -> str:
            return ""

    requests = [Request(str(i), row.tolist()) for i, row in enumerate(prompts)]

    def ours() -> None:
        sampler = Sampler(model, _NoStopTokenizer(), max_batch=opts.batch)  # type: ignore[arg-type]
        for _ in sampler.generate(requests, params):
            pass

    ours_s = best_of(ours, 2)
    total = opts.batch * opts.new_tokens
    results["ours_tokens_per_s"] = total / ours_s

    hf = to_hf_llama(state, args)

    def theirs() -> None:
        with torch.no_grad():
            hf.generate(
                prompts,
                attention_mask=torch.ones_like(prompts),
                do_sample=True,
                temperature=0.7,
                top_p=0.9,
                max_new_tokens=opts.new_tokens,
                min_new_tokens=opts.new_tokens,
                pad_token_id=0,
            )

    hf_s = best_of(theirs, 2)
    results["hf_tokens_per_s"] = total / hf_s
    results["sampler_vs_hf"] = results["ours_tokens_per_s"] / results["hf_tokens_per_s"]
    for key, value in results.items():
        print(f"{key:>22}: {value:.3f}")
    if opts.json:
        opts.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
