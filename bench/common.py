"""Shared helpers of the benchmark suite: result entries, random models, timing."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from salmon_wf.model.parallel import setup_model_parallel
from salmon_wf.model.params import ModelArgs
from salmon_wf.model.tiny import random_weights
from salmon_wf.model.transformer import Transformer


@dataclass
class Entry:
    """One figure with its target (one per target of issue #5)."""

    name: str
    value: float
    target: float
    unit: str
    higher_is_better: bool
    note: str = ""
    # True where the value is read off a line through smaller measurements (quick mode).
    extrapolated: bool = False

    @property
    def met(self) -> bool:
        if math.isnan(self.value):
            return False
        return self.value >= self.target if self.higher_is_better else self.value <= self.target

    def to_json(self) -> dict:
        out = {
            "name": self.name,
            "value": self.value,
            "target": self.target,
            "unit": self.unit,
            "higher_is_better": self.higher_is_better,
        }
        if self.note:
            out["note"] = self.note
        if self.extrapolated:
            out["extrapolated"] = True
        return out


def random_model(args: ModelArgs, seed: int = 0) -> tuple[Transformer, dict[str, torch.Tensor]]:
    """An fp32 CPU Transformer with random weights (speed does not depend on the values)."""
    setup_model_parallel("cpu")
    state = random_weights(args, seed=seed)
    model = Transformer(args)
    with torch.no_grad():
        for name, param in model.state_dict().items():
            param.copy_(state[name])
    return model.eval(), state


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def best_of(fn: Callable[[], object], repeats: int = 3) -> float:
    return min(timed(fn)[0] for _ in range(repeats))


def matmul_flops(n: int = 2048, repeats: int = 3) -> float:
    """FLOP/s of one n x n x n fp32 matmul (best of `repeats`, after a warm-up)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    return 2 * n**3 / best_of(lambda: a @ b, repeats)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)
