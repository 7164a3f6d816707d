"""bf16 projection weights packed once into oneDNN's blocked layout, for CPU decode steps.

F.linear on a bf16 CPU tensor hands the plain weight to oneDNN, which reorders it into its
blocked layout on every call. At the 1-8 rows of a decode step that reorder costs as much as the
product: 576 x 1536 took 0.12 ms per call against 0.06 ms prepacked (one thread, Intel(R) Xeon(R)
Processor with amx_bf16), so a bf16 decode step ran no faster than an fp32 one once a batch had
drained to a row or two. Packing at load time removes it; the dense weight is dropped, so memory
stays one copy. At prefill sizes (hundreds of rows) the two are within noise of each other.

Packed products are the same maths as F.linear's bf16 oneDNN call; like any batched product
their last bits may depend on the batch shape (README, Reproducibility). fp32 models are never
packed: their products, and so the recorded outputs, stay exactly as they were.
"""

from __future__ import annotations

from functools import cache

import torch
import torch.nn.functional as F
from torch import nn

# The row count oneDNN is told to expect when it picks the blocked layout. Any row count runs on
# it; measured at 1-1200 rows on SmolLM2's shapes, 256 matched F.linear's bits at every size tried
# and was as fast as the smaller hints at 1-8 rows.
PACK_HINT_ROWS = 256


@cache
def packing_available() -> bool:
    """Whether this torch build packs bf16 weights for oneDNN on this CPU: the ops exist and a
    small packed product runs and matches F.linear's (anything else keeps the dense path)."""
    ops = torch.ops.mkldnn
    if not (
        torch.backends.mkldnn.is_available()
        and hasattr(ops, "_reorder_linear_weight")
        and hasattr(ops, "_linear_pointwise")
    ):
        return False
    try:
        gen = torch.Generator().manual_seed(0)
        weight = torch.randn(48, 64, generator=gen).bfloat16()
        x = torch.randn(3, 64, generator=gen).bfloat16()
        product = packed_linear(x, pack_weight(weight)).float()
        return bool(torch.allclose(product, F.linear(x, weight).float(), rtol=2e-2, atol=2e-2))
    except (RuntimeError, NotImplementedError):
        return False


def pack_weight(weight: torch.Tensor) -> torch.Tensor:
    """weight [out, in] (bf16, CPU) in oneDNN's layout: an opaque tensor for packed_linear."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), PACK_HINT_ROWS)


def packed_linear(
    x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """x @ weight.T (+ bias) with a weight from pack_weight; x is [..., in], bf16."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def pack_projections(model: nn.Module) -> int:
    """Pack the projections of a bf16 CPU model (not the LM head); returns the products left.

    wq, wk and wv become one packed matrix (`attention.packed_qkv`, with `packed_qkv_bias`), w1
    and w3 another (`feed_forward.packed_w13`): a decode step then makes 4 products per layer,
    not 7, and rotates q and k in one go. wo and w2 keep their own (`packed_weight`). Every
    packed layer's `weight` becomes None, so nothing reads a stale dense copy, and memory stays
    one copy. The LM head stays dense: the judge multiplies an fp32 copy of it and sampling packs
    its own (Transformer._head). A model that is not bf16 on a CPU, or a torch without the ops,
    is left alone (returns 0). A packed model is for inference: its state_dict lacks the packed
    projections, and packed tensors cannot be copied (deepcopy, pickle) or moved to a GPU.
    """
    blocks = [m for m in model.modules() if hasattr(m, "attention") and hasattr(m, "feed_forward")]
    if not blocks or not packing_available():
        return 0
    first = blocks[0].attention.wq.weight
    if first is None or first.dtype != torch.bfloat16 or first.device.type != "cpu":
        return 0
    with torch.no_grad():
        for block in blocks:
            _pack_block(block)
    return 4 * len(blocks)


def _pack_block(block: nn.Module) -> None:
    """One layer's four packed products (see pack_projections)."""
    attention, ffn = block.attention, block.feed_forward
    projections = (attention.wq, attention.wk, attention.wv)
    attention.packed_qkv = pack_weight(torch.cat([p.weight for p in projections]))
    biases = [p.bias for p in projections]
    attention.packed_qkv_bias = None if biases[0] is None else torch.cat(biases)
    ffn.packed_w13 = pack_weight(torch.cat([ffn.w1.weight, ffn.w3.weight]))
    for layer in (attention.wo, ffn.w2):
        layer.packed_weight = pack_weight(layer.weight)
    for layer in (*projections, attention.wo, ffn.w1, ffn.w2, ffn.w3):
        layer.weight = None
