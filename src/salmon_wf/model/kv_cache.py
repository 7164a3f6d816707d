"""The KV cache the engine addresses by explicit rows (slots) and positions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from salmon_wf.model.transformer import Transformer


@dataclass
class KVCache:
    """Per-layer key/value tensors [rows, local_kv_heads, max_len, head_dim]."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    @classmethod
    def allocate(
        cls,
        model: Transformer,
        rows: int,
        max_len: int,
        device: torch.device | None = None,
        zeroed: bool = True,
    ) -> KVCache:
        """zeroed=False: uninitialised memory, for a caller that writes every position it reads
        before reading it (a masked position must hold a finite value: 0 x NaN is NaN)."""
        shape = (rows, model.local_kv_heads, max_len, model.args.head_dim)
        dtype = model.dtype
        device = device or model.device
        new = torch.zeros if zeroed else torch.empty
        n = model.args.n_layers
        return cls(
            keys=[new(shape, dtype=dtype, device=device) for _ in range(n)],
            values=[new(shape, dtype=dtype, device=device) for _ in range(n)],
        )

    @property
    def rows(self) -> int:
        return self.keys[0].shape[0]

    @property
    def max_len(self) -> int:
        return self.keys[0].shape[2]

    def copy_rows(
        self, src: KVCache, src_rows: torch.Tensor, dst_rows: torch.Tensor, length: int
    ) -> None:
        """Copy the first `length` positions of src rows into our rows (prefix reuse)."""
        for mine, theirs in zip(self.keys + self.values, src.keys + src.values, strict=True):
            mine[dst_rows, :, :length] = theirs[src_rows, :, :length]
