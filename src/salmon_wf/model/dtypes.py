"""The dtype names flags and config use (`--dtype`, `model.dtype`), for loading and storing alike.

One table, so a name the loader accepts is one an import can store, and the other way round.
"""

from __future__ import annotations

import torch

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}
