"""Dromedary-style "expanded" Meta shards built from a small model, for the loader's tests.

The scheme (shared/reference/checkpoints.md, IBM/Dromedary's expanded converter): repeat the KV
heads to n_heads (plain multi-head attention), add whole zero heads up to `qkv_dim`, zero FFN
units up to `ffn_dim` and zero vocabulary rows up to `model_vocab_size`, then cut every parallel
tensor into `mp` slices of size // mp rounded up to a multiple of 8 (the last slice may be
shorter; sizes whose slices would not cover the tensor are refused: they would lose rows).
params.json carries the padded sizes, `vocab_size: -1` and no n_kv_heads.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from salmon_wf.model.params import ModelArgs

SLICE_MULTIPLE = 8
# Split dim of each parallel tensor in Dromedary's files; the embedding is split by vocab row.
_ROWS = ("tok_embeddings", "output", "wq", "wk", "wv", "w1", "w3")
_COLUMNS = ("wo", "w2")


def _pad(tensor: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    extra = list(tensor.shape)
    extra[dim] = size - tensor.shape[dim]
    if extra[dim] < 0:
        raise ValueError(f"cannot pad {tuple(tensor.shape)} down to {size} along dim {dim}")
    return torch.cat([tensor, tensor.new_zeros(extra)], dim=dim)


def expand_state(
    state: dict[str, torch.Tensor],
    args: ModelArgs,
    qkv_dim: int,
    ffn_dim: int,
    model_vocab_size: int,
) -> tuple[dict[str, torch.Tensor], dict]:
    """Full (unsharded) expanded weights and the params.json that describes them."""
    hd, group = args.head_dim, args.n_heads // args.kv_heads
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        kind = name.split(".")[-2]
        if kind in ("wk", "wv"):  # query head h reads KV head h // group (GQA)
            heads = tensor.view(args.kv_heads, hd, -1).repeat_interleave(group, dim=0)
            tensor = heads.reshape(args.n_heads * hd, -1)
        if kind in ("wq", "wk", "wv"):
            tensor = _pad(tensor, 0, qkv_dim)
        elif kind == "wo":
            tensor = _pad(tensor, 1, qkv_dim)
        elif kind in ("w1", "w3"):
            tensor = _pad(tensor, 0, ffn_dim)
        elif kind == "w2":
            tensor = _pad(tensor, 1, ffn_dim)
        elif kind in ("tok_embeddings", "output"):
            tensor = _pad(tensor, 0, model_vocab_size)
        out[name] = tensor.contiguous()
    params = {
        "dim": args.dim,
        "multiple_of": args.multiple_of,
        "n_heads": args.n_heads,
        "n_layers": args.n_layers,
        "norm_eps": args.norm_eps,
        "vocab_size": -1,
        "qkv_dim": qkv_dim,
        "ffn_dim": ffn_dim,
        "model_vocab_size": model_vocab_size,
    }
    return out, params


def slice_bounds(total: int, mp: int, rank: int) -> tuple[int, int]:
    """Dromedary's slice of `rank`: equal sizes rounded up to a multiple of 8, the last shorter."""
    size = -(-(total // mp) // SLICE_MULTIPLE) * SLICE_MULTIPLE
    if size * mp < total:
        raise ValueError(f"{mp} slices of {size} do not cover {total}")
    return rank * size, min((rank + 1) * size, total)


def write_expanded(
    state: dict[str, torch.Tensor], params: dict, out_dir: Path, mp: int, tokenizer: Path
) -> Path:
    """Cut the expanded weights into `mp` consolidated.NN.pth files beside params.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for rank in range(mp):
        shard = {}
        for name, tensor in state.items():
            kind = name.split(".")[-2]
            dim = 0 if kind in _ROWS else 1 if kind in _COLUMNS else None
            if dim is not None:
                start, end = slice_bounds(tensor.shape[dim], mp, rank)
                tensor = tensor.narrow(dim, start, end - start)
            shard[name] = tensor.clone()
        torch.save(shard, out_dir / f"consolidated.{rank:02d}.pth")
    (out_dir / "params.json").write_text(json.dumps(params) + "\n")
    shutil.copy(tokenizer, out_dir / tokenizer.name)
    return out_dir
