"""The model: cached decoding, model parallelism and resharding, an independent implementation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import spawn

from salmon_wf.model.checkpoint import load_rank_state
from salmon_wf.model.hf_export import to_hf_llama
from salmon_wf.model.kv_cache import KVCache
from salmon_wf.model.loader import LoadedModel, build_model
from salmon_wf.model.params import ModelArgs

TEXT = "Explain why the sky looks blue. ### 你好"


def test_cached_incremental_decoding_equals_full_forward(tiny: LoadedModel) -> None:
    ids = tiny.tokenizer.encode(TEXT, bos=True)
    tokens = torch.tensor([ids, ids[::-1]])
    full = tiny.model(tokens)
    cache = KVCache.allocate(tiny.model, 2, len(ids) + 4)
    parts = [tiny.model(tokens[:, :5], 0, cache)]
    for pos in range(5, len(ids)):
        parts.append(tiny.model(tokens[:, pos : pos + 1], pos, cache))
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-5, atol=1e-4)


def test_rows_at_different_positions_match_their_own_runs(tiny: LoadedModel) -> None:
    """Continuous batching: rows of one decode step sit at different positions and cache rows."""
    a = tiny.tokenizer.encode("short prompt", bos=True)
    b = tiny.tokenizer.encode("a much longer prompt than the other one", bos=True)
    cache = KVCache.allocate(tiny.model, 3, 64)
    tiny.model(torch.tensor([a]), 0, cache, torch.tensor([2]))
    tiny.model(torch.tensor([b]), 0, cache, torch.tensor([0]))
    step = tiny.model(
        torch.tensor([[7], [9]]), torch.tensor([len(a), len(b)]), cache, torch.tensor([2, 0])
    )
    alone_a = tiny.model(torch.tensor([[*a, 7]]))[0, -1]
    alone_b = tiny.model(torch.tensor([[*b, 9]]))[0, -1]
    torch.testing.assert_close(step[:, -1], torch.stack([alone_a, alone_b]), rtol=1e-5, atol=1e-4)


def test_lm_head_only_at_requested_positions(tiny: LoadedModel) -> None:
    ids = tiny.tokenizer.encode(TEXT, bos=True)
    tokens = torch.tensor([ids, ids])
    full = tiny.model(tokens)
    picked = tiny.model(tokens, logits_at=torch.tensor([3, len(ids) - 1]))
    assert picked.shape == (2, tiny.args.vocab_size)
    torch.testing.assert_close(picked, torch.stack([full[0, 3], full[1, -1]]))


@pytest.mark.parametrize("ckpt", ["tiny_dir", "tiny_dir_mp2"])
def test_two_gloo_ranks_match_one_process(
    ckpt: str, request: pytest.FixtureRequest, tiny: LoadedModel, tmp_path: Path
) -> None:
    """MP=2 equals MP=1 (fp32, 1e-5) from an MP=1 checkpoint and from an MP=2 checkpoint."""
    model_dir = request.getfixturevalue(ckpt)
    ids = tiny.tokenizer.encode(TEXT, bos=True)
    reference = tiny.model(torch.tensor([ids]))
    ranks = spawn(2, model_dir, tmp_path, "logits", {"tokens": [ids]})
    for result in ranks:
        torch.testing.assert_close(torch.tensor(result["logits"]), reference, rtol=0, atol=1e-5)


def test_mp2_checkpoint_loads_on_one_rank(tiny_dir: Path, tiny_dir_mp2: Path) -> None:
    args = ModelArgs.load(tiny_dir / "params.json")
    one = load_rank_state(tiny_dir, args, rank=0, world=1)
    two = load_rank_state(tiny_dir_mp2, args, rank=0, world=1)
    assert one.keys() == two.keys()
    for name in one:
        assert torch.equal(one[name], two[name]), name
    assert len(list(tiny_dir_mp2.glob("consolidated.*.pth"))) == 2


def test_hugging_face_llama_gives_the_same_logits(tiny: LoadedModel) -> None:
    """An independent implementation (transformers' LlamaForCausalLM) on the same weights."""
    pytest.importorskip("transformers")
    hf = to_hf_llama(load_rank_state(tiny.model_dir, tiny.args, 0, 1), tiny.args)
    ids = torch.tensor([tiny.tokenizer.encode(TEXT, bos=True)])
    with torch.no_grad():
        theirs = hf(ids).logits
    ours = tiny.model(ids)
    assert ours.abs().max() > 1  # logits of real scale, not a degenerate model
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_every_weight_is_built_on_the_requested_device(tiny: LoadedModel) -> None:
    """fairscale's layers ignore the default-device context: on a GPU they stayed on the CPU.

    The meta device stands in for CUDA here: a weight left elsewhere shows up the same way.
    """
    model = build_model(tiny.args, torch.bfloat16, torch.device("meta"))
    places = {(name, p.device.type, p.dtype) for name, p in model.named_parameters()}
    assert places and all(kind == "meta" and dtype == torch.bfloat16 for _, kind, dtype in places)


def test_fused_norm_and_rotary_equal_the_spelled_out_formulas() -> None:
    """RMSNorm (torch's fused rms_norm) and the rotary are the textbook formulas: equal in fp32,
    and the bf16 norm is the fp32 result rounded once (not five roundings)."""
    from salmon_wf.model.rotary import Rotary
    from salmon_wf.model.transformer import RMSNorm

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 7, 64, generator=gen) * 3
    norm = RMSNorm(64, 1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(64, generator=gen) + 0.5)
    spelled = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * norm.weight
    torch.testing.assert_close(norm(x), spelled, rtol=1e-6, atol=1e-6)
    low = norm.to(torch.bfloat16)(x.bfloat16()).detach()
    assert low.dtype == torch.bfloat16
    exact = x.bfloat16().float()
    exact = exact * torch.rsqrt(exact.pow(2).mean(-1, keepdim=True) + 1e-5)
    exact = exact * norm.weight.detach().float()
    assert float((low.float() - exact).abs().max()) <= float(exact.abs().max()) * 2**-8

    rotary = Rotary(head_dim=16, max_positions=50, theta=10000.0)
    positions = torch.tensor([[0, 5, 49], [1, 2, 3]])
    q = torch.randn(2, 3, 4, 16, generator=gen)
    out = Rotary.rotate(q, *rotary.tables(positions))
    inv = 1.0 / (10000.0 ** (torch.arange(0, 16, 2, dtype=torch.float64) / 16))
    angle = positions[..., None, None].double() * inv  # [B, T, 1, D/2]
    even, odd = q[..., 0::2].double(), q[..., 1::2].double()
    expected = torch.stack(
        (even * angle.cos() - odd * angle.sin(), even * angle.sin() + odd * angle.cos()), -1
    ).flatten(-2)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(out[:, 0, :, :][0], q[0, 0])  # position 0 is the identity


@pytest.mark.parametrize("threads", [1, 5, 7, 8])
def test_rotary_bits_do_not_depend_on_the_batch_or_the_threads(threads: int) -> None:
    """A row's rotated q/k must be the same bits alone and inside a larger batch, at any thread
    count (a complex multiply was not: its kernel's scalar tail uses FMAs, its vector body not)."""
    from salmon_wf.model.rotary import Rotary

    rotary = Rotary(head_dim=64, max_positions=400, theta=10000.0)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(3, 333, 9, 64, generator=gen)
    positions = torch.arange(333).repeat(3, 1) + torch.tensor([[0], [7], [60]])
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        whole = Rotary.rotate(x, *rotary.tables(positions))
        rows = [Rotary.rotate(x[i : i + 1], *rotary.tables(positions[i : i + 1])) for i in range(3)]
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(whole, torch.cat(rows))
