"""Sampler benchmark (ours vs Hugging Face `generate` vs a static batch) and prefill FLOP/s.

Random weights never produce a meaningful EOS, so stopping is emulated with per-prompt target
lengths drawn like SALMON's responses (20-768 tokens, skewed towards short):

- ours: the engine's Sampler, every Request carrying its target as `max_new_tokens`
  (continuous batching: a finished row takes the next prompt at once);
- HF: `generate` on static batches of B prompts in input order, each batch running to the longest
  target among its rows (what EOS-stopping static batching costs);
- static: SALMON's sampler, every batch running to max_new_tokens (768), here our own engine with
  every prompt's budget at the maximum, so only the scheduling differs from ours.

All three share the model, prompts, batch size and sampling settings (temperature 0.7, top_p 1.0,
SALMON's); the figure is useful tokens (sum of the targets) per second.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial

import numpy as np
import torch
from common import Entry, best_of, log, matmul_flops, random_model, timed

from salmon_wf.engine.sampler import Request, Sampler, SamplingParams, choose_tokens
from salmon_wf.model.cpu_packing import (
    pack_projections,
    pack_weight,
    packed_linear,
    packing_available,
)
from salmon_wf.model.hf_export import to_hf_llama
from salmon_wf.model.kv_cache import KVCache
from salmon_wf.model.params import ModelArgs
from salmon_wf.model.transformer import Transformer, body_flops_per_token

# SmolLM2-135M (the project's default model): prefill.
SMOLLM2_SHAPE = ModelArgs(
    dim=576, n_layers=30, n_heads=9, n_kv_heads=3, vocab_size=49152, hidden_dim=1536,
    rope_theta=100000.0, max_seq_len=2048,
)  # fmt: skip
# SmolLM2-135M's width with 1/3 of its layers and 1/3 of its vocabulary, which keeps its ratio of
# layer to LM-head FLOPs (3.75): the sampler runs (thousands of decode steps per side) stay
# within minutes on 2 cores.
SAMPLER_SHAPE = ModelArgs(
    dim=576, n_layers=10, n_heads=9, n_kv_heads=3, vocab_size=16384, hidden_dim=1536,
    rope_theta=100000.0, max_seq_len=1024,
)  # fmt: skip
TEMPERATURE, TOP_P = 0.7, 1.0
REPEATS = 2  # ours and HF on the length mix


class _NoStop:
    """A tokenizer stand-in: no stop ids, every logit row a candidate, nothing to decode."""

    stop_ids: frozenset[int] = frozenset()

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size

    def decode(self, ids: list[int]) -> str:
        return ""


def target_lengths(n: int, max_new: int, seed: int = 0) -> list[int]:
    """Skewed like SALMON's responses: log-normal, median max_new/3, clipped to [20, max_new]."""
    rng = np.random.default_rng(seed)
    raw = rng.lognormal(np.log(max_new / 3), 0.6, n)
    return np.clip(np.round(raw), min(20, max_new), max_new).astype(int).tolist()


def prompts_of(n: int, vocab: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed + 1)
    return [rng.integers(3, vocab, int(rng.integers(16, 81))).tolist() for _ in range(n)]


class ForwardClock:
    """Counts and times the model's forwards, prefill (T > 1) apart from decode (T = 1)."""

    def __init__(self, model: Transformer) -> None:
        self.totals = {"prefill_forwards": 0, "prefill_s": 0.0, "decode_forwards": 0}
        self.totals |= {"decode_s": 0.0, "decode_rows": 0}
        self._start = 0.0
        self._handles = [
            model.register_forward_pre_hook(self._before),
            model.register_forward_hook(self._after),
        ]

    def _before(self, module: object, inputs: tuple) -> None:
        self._start = time.perf_counter()

    def _after(self, module: object, inputs: tuple, output: object) -> None:
        elapsed = time.perf_counter() - self._start
        rows, length = inputs[0].shape
        kind = "prefill" if length > 1 else "decode"
        self.totals[f"{kind}_forwards"] += 1
        self.totals[f"{kind}_s"] += elapsed
        if kind == "decode":
            self.totals["decode_rows"] += rows

    def close(self) -> dict:
        for handle in self._handles:
            handle.remove()
        return self.totals


def run_ours(
    model: Transformer,
    prompts: list[list[int]],
    budgets: list[int | None],
    batch: int,
    max_new: int,
    clock: bool = False,
) -> tuple[float, int, dict]:
    """Seconds, generated tokens and (with `clock`) forward timings of one generate call."""
    params = SamplingParams(
        temperature=TEMPERATURE, top_p=TOP_P, max_new_tokens=max_new, seed=1, ignore_eos=True
    )
    requests = [
        Request(str(i), p, b) for i, (p, b) in enumerate(zip(prompts, budgets, strict=True))
    ]
    sampler = Sampler(model, _NoStop(model.args.vocab_size), max_batch=batch)  # type: ignore[arg-type]
    watch = ForwardClock(model) if clock else None
    try:
        seconds, done = timed(lambda: list(sampler.generate(requests, params)))
    finally:
        forwards = watch.close() if watch else {}
    return seconds, sum(len(c.token_ids) for c in done), forwards  # type: ignore[union-attr]


def run_hf(hf, prompts: list[list[int]], lengths: list[int], batch: int) -> tuple[float, int]:
    """Static batches in input order, each run to its longest target (left-padded prompts)."""
    total, generated = 0.0, 0
    for start in range(0, len(prompts), batch):
        rows = prompts[start : start + batch]
        new = max(lengths[start : start + batch])
        width = max(len(p) for p in rows)
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, p in enumerate(rows):
            ids[r, width - len(p) :] = torch.tensor(p)
            mask[r, width - len(p) :] = 1

        def go(ids=ids, mask=mask, new=new) -> torch.Tensor:
            with torch.no_grad():
                return hf.generate(
                    ids,
                    attention_mask=mask,
                    do_sample=True,
                    temperature=TEMPERATURE,
                    top_p=TOP_P,
                    max_new_tokens=new,
                    min_new_tokens=new,
                    pad_token_id=0,
                )

        seconds, out = timed(go)
        total += seconds
        generated += (out.shape[1] - width) * len(rows)  # type: ignore[union-attr]
    return total, generated


def step_breakdown(model: Transformer, hf, batch: int, context: int, repeats: int = 20) -> dict:
    """One decode step at `context` tokens: our forward, our token choice, HF's forward."""
    vocab = model.args.vocab_size
    gen = torch.Generator().manual_seed(3)
    prompt = torch.randint(3, vocab, (batch, context), generator=gen)
    token = torch.randint(3, vocab, (batch, 1), generator=gen)
    cache = KVCache.allocate(model, batch, context + 1)
    model(prompt, 0, cache, None, torch.full((batch,), context - 1))
    starts = torch.full((batch,), context)

    def ours() -> torch.Tensor:
        return model(token, starts, cache, None, torch.zeros_like(starts))

    logits = ours()
    uniforms = torch.rand(batch, dtype=torch.float64, generator=gen)
    forward = best_of(lambda: [ours() for _ in range(repeats)], 2) / repeats
    choose = best_of(
        lambda: [choose_tokens(logits, TEMPERATURE, TOP_P, uniforms) for _ in range(repeats)], 2
    )
    with torch.no_grad():
        past = hf(prompt, use_cache=True)["cache"]

        def theirs() -> None:
            for _ in range(repeats):  # the cache grows by `repeats` positions: close enough
                hf(token, cache=past, use_cache=True)

        hf_forward = best_of(theirs, 1) / repeats
    return {
        "batch": batch,
        "context": context,
        "ours_forward_ms": 1000 * forward,
        "ours_choose_tokens_ms": 1000 * choose / repeats,
        "hf_forward_ms": 1000 * hf_forward,
    }


def run_sampler(quick: bool) -> tuple[list[Entry], dict]:
    args = SAMPLER_SHAPE
    model, state = random_model(args, seed=0)
    hf = to_hf_llama(state, args)
    batch = 8
    n = 32
    max_new = 192 if quick else 768
    lengths = target_lengths(n, max_new)
    prompts = prompts_of(n, args.vocab_size)
    useful = sum(lengths)
    warm = prompts[:2]
    run_ours(model, warm, [4, 4], 2, 4)
    run_hf(hf, warm, [4, 4], 2)

    ours_all, hf_all = [], []
    for attempt in range(REPEATS):  # interleaved, best of each: the machine is noisy
        log(f"sampler: ours, {n} prompts, batch {batch}, targets {min(lengths)}-{max(lengths)}")
        seconds, ours_tokens, clocked = run_ours(
            model, prompts, list(lengths), batch, max_new, clock=True
        )
        assert ours_tokens == useful, (ours_tokens, useful)
        if not ours_all or seconds < min(ours_all):
            forwards = clocked | {"total_s": seconds}
        ours_all.append(seconds)
        log(
            f"sampler: HF generate, static batches each run to their longest target ({attempt + 1})"
        )
        seconds, hf_tokens = run_hf(hf, prompts, lengths, batch)
        hf_all.append(seconds)
    ours_s, hf_s = min(ours_all), min(hf_all)
    log(f"sampler: static batches run to max_new_tokens={max_new} (SALMON)")
    static_s, static_tokens, _ = run_ours(model, prompts, [None] * n, batch, max_new)
    details: dict = {
        "shape": args.to_json(),
        "batch": batch,
        "prompts": n,
        "max_new_tokens": max_new,
        "target_lengths": lengths,
        "useful_tokens": useful,
        "ours_s": ours_s,
        "hf_s": hf_s,
        "ours_all_s": ours_all,
        "ours_forwards": forwards,
        "hf_decode_steps": sum(max(lengths[i : i + batch]) for i in range(0, n, batch)),
        "hf_all_s": hf_all,
        "static_s": static_s,
        "ours_useful_tokens_per_s": useful / ours_s,
        "hf_useful_tokens_per_s": useful / hf_s,
        "static_useful_tokens_per_s": useful / static_s,
        "hf_generated_tokens": hf_tokens,
        "static_generated_tokens": static_tokens,
        "hf_generated_tokens_per_s": hf_tokens / hf_s,
        "static_generated_tokens_per_s": static_tokens / static_s,
    }

    log("sampler: growth with the batch size (equal work: every row the same length)")
    steps = 16 if quick else 48
    growth = []
    for b in (1, 4, 8, 16):
        rows = prompts_of(b, args.vocab_size, seed=7)
        rows = [r[:32] + [5] * (32 - len(r[:32])) for r in rows]  # 32-token prompts
        ours_b, _, _ = run_ours(model, rows, [steps] * b, b, steps)
        hf_b, _ = run_hf(hf, rows, [steps] * b, b)
        growth.append(
            {
                "batch": b,
                "new_tokens_per_row": steps,
                "ours_s": ours_b,
                "hf_s": hf_b,
                "ours_tokens_per_s": b * steps / ours_b,
                "hf_tokens_per_s": b * steps / hf_b,
                "ours_ms_per_step": 1000 * ours_b / steps,
            }
        )
    details["growth_batch"] = growth
    log("sampler: one decode step, split into forward and token choice")
    details["decode_step"] = [step_breakdown(model, hf, batch, ctx) for ctx in (64, 400)]
    note = f"{n} prompts, batch {batch}, targets 20-{max_new}"
    entries = [
        Entry("sampler_vs_hf_generate", useful / ours_s / (useful / hf_s), 1.5, "x", True, note),
        Entry("sampler_vs_static_max_length", static_s / ours_s, 2.0, "x", True, note),
    ]
    return entries, details


def gemm_shapes(
    args: ModelArgs, rows: int, length: int, fused: bool = False
) -> list[tuple[int, int, int, int]]:
    """The prefill's matmuls as (M, K, N, count): every layer's projections and FFN at M = rows x
    tokens, and the LM head at M = rows (the prefill applies it at each row's last position).
    fused: as a packed bf16 model runs them (cpu_packing): q/k/v as one product, w1/w3 as one."""
    m, hd = rows * length, args.head_dim
    q, kv, ffn = args.attn_heads * hd, args.kv_heads * hd, args.ffn_hidden_dim
    if fused:
        layer = [(args.dim, q + 2 * kv), (q, args.dim), (args.dim, 2 * ffn), (ffn, args.dim)]
    else:
        layer = [(args.dim, q), (args.dim, kv), (args.dim, kv), (q, args.dim)]
        layer += [(args.dim, ffn), (args.dim, ffn), (ffn, args.dim)]
    shapes = [(m, k, n, args.n_layers) for k, n in layer]
    return [*shapes, (rows, args.dim, args.vocab_size, 1)]


def gemm_floor(
    shapes: list[tuple[int, int, int, int]], dtype: torch.dtype, repeats: int
) -> dict[str, float]:
    """Seconds and FLOP/s of the given shapes in `dtype` (best of `repeats` each), by the kernel
    the model uses: F.linear, or for bf16 weights packed once where the CPU packs them.

    The LM head (the last shape) runs in fp32 whatever `dtype`, as the engine runs it.
    """
    gen = torch.Generator().manual_seed(0)
    seconds = flops = 0.0
    for index, (m, k, n, count) in enumerate(shapes):
        kind = torch.float32 if index == len(shapes) - 1 else dtype
        x = torch.randn(m, k, generator=gen).to(kind)
        w = torch.randn(n, k, generator=gen).to(kind)
        if kind == torch.bfloat16 and packing_available():
            product = partial(packed_linear, x, pack_weight(w))
        else:
            product = partial(torch.nn.functional.linear, x, w)
        product()
        seconds += count * best_of(product, repeats)
        flops += count * 2.0 * m * k * n
    return {"seconds": seconds, "flops": flops, "flop_s": flops / seconds}


def matmul_flops_of(dtype: torch.dtype, n: int, repeats: int) -> float:
    """FLOP/s of one n^3 matmul in `dtype` (best of `repeats`, after a warm-up)."""
    if dtype == torch.float32:
        return matmul_flops(n, repeats)
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    return 2 * n**3 / best_of(lambda: a @ b, repeats)


def op_profile(fn: Callable[[], object], top: int = 10) -> list[dict]:
    """The torch ops taking the most self time in one call of fn (torch.profiler, CPU)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:top]
    return [{"op": e.key, "calls": e.count, "self_s": round(e.self_cpu_time_total / 1e6, 4)}
            for e in rows]  # fmt: skip


def run_prefill(quick: bool) -> tuple[list[Entry], dict]:
    """Prefill (rows x tokens, LM head at the last position), fp32 and bf16, against the FLOP/s of
    the same GEMM shapes in the same dtype and against a 2048^3 matmul, in the same run."""
    args = SMOLLM2_SHAPE
    rows, length = 4, 512
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(3, args.vocab_size, (rows, length), generator=gen)
    last = torch.full((rows,), length - 1)
    repeats = 2 if quick else 3
    flops = body_flops_per_token(args, length // 2) * rows * length
    flops += 2 * args.dim * args.vocab_size * rows
    shapes = {
        torch.float32: gemm_shapes(args, rows, length),
        torch.bfloat16: gemm_shapes(args, rows, length, fused=packing_available()),
    }
    details: dict = {"shape": args.to_json(), "rows": rows, "tokens_per_row": length,
                     "gemm_shapes_mknc": {str(k)[6:]: v for k, v in shapes.items()},
                     "threads": torch.get_num_threads()}  # fmt: skip
    entries = []
    model, _ = random_model(args, seed=0)
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        model = model.to(dtype)
        pack_projections(model)  # bf16 on a CPU that packs: as load_model runs it
        model(tokens[:, :32], logits_at=last.clamp(max=31))
        log(f"prefill {name}: SmolLM2-135M shape, {rows} x {length} tokens vs its GEMMs, 2048^3")
        floor = gemm_floor(shapes[dtype], dtype, repeats)
        matmul = matmul_flops_of(dtype, 2048, repeats)
        seconds = best_of(lambda model=model: model(tokens, logits_at=last), repeats)
        floor2 = gemm_floor(shapes[dtype], dtype, repeats)  # both sides of the prefill
        matmul = max(matmul, matmul_flops_of(dtype, 2048, repeats))
        own = max(floor["flop_s"], floor2["flop_s"])
        prefill = flops / seconds
        details[name] = {
            "prefill_gflops": prefill / 1e9,
            "prefill_s": seconds,
            "own_gemm_gflops": own / 1e9,
            "own_gemm_s": min(floor["seconds"], floor2["seconds"]),
            "matmul_2048_gflops": matmul / 1e9,
            "ratio_to_own_gemms": prefill / own,
            "ratio_to_2048_matmul": prefill / matmul,
        }
        if prefill / own < 0.5:  # where does the rest of the time go? (one profiled forward)
            forward = lambda m=model: m(tokens, logits_at=last)  # noqa: E731
            details[name]["profile_ops_by_self_s"] = op_profile(forward)
        note = (
            f"{rows}x{length}, {name}: {prefill / 1e9:.0f} GFLOP/s vs its GEMM shapes "
            f"{own / 1e9:.0f}; vs a 2048^3 matmul ({matmul / 1e9:.0f}): {prefill / matmul:.2f}"
        )
        entries.append(
            Entry(f"prefill_vs_own_gemm_flops_{name}", prefill / own, 0.5, "fraction", True, note)
        )
    return entries, details
