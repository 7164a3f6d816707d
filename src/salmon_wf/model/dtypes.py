"""The dtype names flags and config use (`--dtype`, `model.dtype`), for loading and storing alike.

One table, so a name the loader accepts is one an import can store, and the other way round.
`auto` is a compute choice only (`resolve_dtype`): a checkpoint is stored in a named dtype and the
loader casts it to whatever `auto` picked on the machine that runs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}

AUTO = "auto"
# What `--dtype` / `model.dtype` accept for computing: the stored dtypes plus auto.
COMPUTE_DTYPES: list[str] = [*sorted(DTYPES), AUTO]
# /proc/cpuinfo flags of the bf16 matrix instructions oneDNN's bf16 GEMMs use.
BF16_CPU_FLAGS: tuple[str, ...] = ("amx_bf16", "avx512_bf16")


@dataclass(frozen=True)
class DtypeChoice:
    """The compute dtype a run uses and why (the stage logs `reason`)."""

    name: str
    reason: str

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.name]


def cpu_bf16_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> list[str]:
    """The bf16 matrix instructions this CPU has, in BF16_CPU_FLAGS order.

    torch's own probes (torch.cpu._is_amx_tile_supported, _is_avx512_bf16_supported) are asked
    first; /proc/cpuinfo is the fallback where a torch build lacks them.
    """
    found: set[str] = set()
    probes = {
        "amx_bf16": getattr(torch.cpu, "_is_amx_tile_supported", None),
        "avx512_bf16": getattr(torch.cpu, "_is_avx512_bf16_supported", None),
    }
    for flag, probe in probes.items():
        if probe is not None and probe():
            found.add(flag)
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        if line.startswith("flags"):
            found.update(f for f in line.split(":", 1)[-1].split() if f in BF16_CPU_FLAGS)
            break
    return [f for f in BF16_CPU_FLAGS if f in found]


def resolve_dtype(
    name: str,
    device: torch.device | str,
    cpu_flags: list[str] | None = None,
    cuda_bf16: bool | None = None,
) -> DtypeChoice:
    """`name` as a stored dtype name; `auto` becomes bf16 where the hardware computes it natively.

    On a CPU that means bf16 matrix instructions (AMX or AVX512-BF16): without them oneDNN
    emulates bf16 and it is slower than fp32. On CUDA it is bf16 where the GPU supports it
    (Ampere and later), fp32 elsewhere. cpu_flags / cuda_bf16 replace the probes (tests).
    """
    if name != AUTO:
        return DtypeChoice(name, "set explicitly")
    kind = torch.device(device).type
    if kind == "cuda":
        ok = torch.cuda.is_bf16_supported() if cuda_bf16 is None else cuda_bf16
        if ok:
            return DtypeChoice("bf16", "auto: this CUDA device supports bf16")
        return DtypeChoice("fp32", "auto: this CUDA device does not support bf16")
    if kind == "cpu":
        flags = cpu_bf16_flags() if cpu_flags is None else cpu_flags
        if flags:
            found = ", ".join(flags)
            return DtypeChoice("bf16", f"auto: the CPU has bf16 matrix instructions ({found})")
        none = ", ".join(BF16_CPU_FLAGS)
        return DtypeChoice("fp32", f"auto: the CPU has no bf16 matrix instructions ({none})")
    return DtypeChoice("fp32", f"auto: device type {kind!r} is not probed for bf16")
