"""bf16 CPU models run their projections on weights packed once for oneDNN (cpu_packing.py):
the same logits as the dense bf16 products, with and without a KV cache, biases included."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from salmon_wf.model import loader
from salmon_wf.model.cpu_packing import pack_projections, packing_available
from salmon_wf.model.kv_cache import KVCache
from salmon_wf.model.loader import build_model, load_model
from salmon_wf.model.parallel import ParallelContext
from salmon_wf.model.params import ModelArgs
from salmon_wf.model.transformer import Transformer

needs_packing = pytest.mark.skipif(not packing_available(), reason="no oneDNN bf16 packing here")


def _random_bf16(**overrides: object) -> Transformer:
    shape = {"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "vocab_size": 97}
    args = ModelArgs(**{**shape, "max_seq_len": 64, **overrides})  # type: ignore[arg-type]
    model = build_model(args, torch.float32, torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.2)
    return model.to(torch.bfloat16).eval()


def _assert_same_bf16_maths(packed: torch.Tensor, dense: torch.Tensor) -> None:
    """Equal up to bf16 rounding of intermediate sums (a product's blocking may differ)."""
    scale = float(dense.abs().max())
    assert float((packed - dense).abs().max()) <= 0.02 * scale
    assert float((packed.argmax(-1) == dense.argmax(-1)).float().mean()) >= 0.9


@needs_packing
@pytest.mark.parametrize("bias", [False, True])
def test_packed_projections_give_the_dense_logits(bias: bool, single_rank: ParallelContext) -> None:
    dense = _random_bf16(qkv_bias=bias, o_bias=bias)
    packed = copy.deepcopy(dense)
    assert pack_projections(packed) == 4 * 2  # qkv, wo, w13, w2 per layer
    block = packed.layers[0]
    assert block.attention.wq.weight is None and block.feed_forward.w1.weight is None
    assert (block.attention.packed_qkv_bias is not None) is bias
    assert packed.output.weight is not None  # the LM head stays dense (the judge's fp32 copy)
    tokens = torch.randint(3, 97, (3, 11), generator=torch.Generator().manual_seed(1))
    _assert_same_bf16_maths(packed(tokens), dense(tokens))
    _assert_same_bf16_maths(packed(tokens, exact=False), dense(tokens, exact=False))
    # Decoding with a KV cache: a 9-token prefill, then two steps of one token per row.
    outs = []
    for model in (packed, dense):
        cache = KVCache.allocate(model, 3, 32)
        last = torch.full((3,), 8)
        steps = [model(tokens[:, :9], 0, cache, logits_at=last, exact=False)]
        for pos in (9, 10):
            step = model(tokens[:, pos : pos + 1], pos, cache, logits_at=torch.zeros(3).long())
            steps.append(step)
        outs.append(torch.stack(steps))
    _assert_same_bf16_maths(*outs)


@needs_packing
def test_packing_leaves_fp32_models_alone(single_rank: ParallelContext) -> None:
    model = _random_bf16().float()
    before = {name: t.clone() for name, t in model.state_dict().items()}
    assert pack_projections(model) == 0
    assert not hasattr(model.layers[0].attention, "packed_qkv")
    assert all(torch.equal(before[n], t) for n, t in model.state_dict().items())


@needs_packing
def test_load_model_packs_bf16_on_cpu_only(
    tiny_dir: Path, single_rank: ParallelContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    bf16 = load_model(tiny_dir, single_rank, dtype="bf16").model
    fp32 = load_model(tiny_dir, single_rank, dtype="fp32").model
    assert hasattr(bf16.layers[0].attention, "packed_qkv")
    assert not hasattr(fp32.layers[0].attention, "packed_qkv")
    monkeypatch.setattr(loader, "pack_projections", lambda model: 0)
    dense = load_model(tiny_dir, single_rank, dtype="bf16").model
    tokens = torch.arange(3, 40).reshape(1, -1)
    _assert_same_bf16_maths(bf16(tokens), dense(tokens))


@needs_packing
def test_the_sampling_heads_packed_copy_follows_a_changed_weight(
    single_rank: ParallelContext,
) -> None:
    model = _random_bf16()
    pack_projections(model)
    tokens = torch.randint(3, 97, (2, 5), generator=torch.Generator().manual_seed(3))
    before = model(tokens, exact=False)
    with torch.no_grad():
        model.output.weight.mul_(2)  # in place: same storage, a new version
    after = model(tokens, exact=False)
    torch.testing.assert_close(after, 2 * before)  # x 2 is exact in bf16
