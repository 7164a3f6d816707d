"""Rotary position embeddings: Meta's interleaved-pair layout, with LLaMA 3.1 / linear scaling."""

from __future__ import annotations

import math
from typing import Any

import torch


def scaled_inv_freq(inv: torch.Tensor, scaling: dict[str, Any] | None) -> torch.Tensor:
    """Inverse frequencies after `rope_scaling` (validated by params.check_rope_scaling).

    linear: positions / factor, i.e. every frequency / factor. llama3 (LLaMA 3.1+): wavelengths
    shorter than L / high_freq_factor stay, longer than L / low_freq_factor are divided by the
    factor, and the band between blends the two linearly in L / wavelength (L = the original
    context). It changes logits at every length, so it is applied, never approximated.
    """
    if scaling is None:
        return inv
    factor = float(scaling["factor"])
    if scaling["rope_type"] == "linear":
        return inv / factor
    low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    original = float(scaling["original_max_position_embeddings"])
    wavelength = 2 * math.pi / inv
    blend = ((original / wavelength - low) / (high - low)).clamp(0, 1)
    smoothed = (1 - blend) * inv / factor + blend * inv
    out = torch.where(wavelength > original / low, inv / factor, smoothed)
    return torch.where(wavelength < original / high, inv, out)


class Rotary:
    """cos/sin tables for Meta's interleaved-pair rotary layout.

    Kept as plain tensors (not buffers) so Module.to(dtype) cannot truncate them.
    """

    def __init__(
        self,
        head_dim: int,
        max_positions: int,
        theta: float,
        scaling: dict[str, Any] | None = None,
    ) -> None:
        inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
        inv = scaled_inv_freq(inv, scaling)
        angles = torch.outer(torch.arange(max_positions, dtype=torch.float64), inv)
        self.cos = angles.cos().float()
        self.sin = angles.sin().float()

    def to(self, device: torch.device) -> Rotary:
        self.cos, self.sin = self.cos.to(device), self.sin.to(device)
        return self

    def tables(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [B, T, 1, D/2] at `positions` [B, T]: looked up once per forward."""
        if int(positions.max()) >= self.cos.shape[0]:
            raise ValueError(f"position {int(positions.max())} beyond rotary table")
        return self.cos[positions].unsqueeze(2), self.sin[positions].unsqueeze(2)

    @staticmethod
    def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Each (even, odd) pair of x rotated, in fp32, one rounding per multiply and add.

        Not as a complex multiply (Meta's formulation, ~10% faster here): torch's CPU kernel
        fuses it into FMAs in the scalar tail of each thread's slice only, so some elements' bits
        would depend on the tensor's size and the thread count, i.e. on the batch a row is in.
        """
        pairs = x.float().unflatten(-1, (-1, 2))
        even, odd = pairs[..., 0], pairs[..., 1]
        out = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)
        return out.flatten(-2).type_as(x)
