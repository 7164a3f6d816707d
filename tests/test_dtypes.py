"""model.dtype auto: what it picks given a capability, and the bf16 path's fp32 logits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from salmon_wf.errors import ConfigError
from salmon_wf.model.dtypes import COMPUTE_DTYPES, cpu_bf16_flags, resolve_dtype
from salmon_wf.model.loader import LoadedModel, load_model
from salmon_wf.model.parallel import ParallelContext
from salmon_wf.workflow import stored_dtype

TEXT = "Explain why the sky looks blue. ### 你好"


@pytest.mark.parametrize(
    ("flags", "expected"),
    [(["amx_bf16", "avx512_bf16"], "bf16"), (["avx512_bf16"], "bf16"), ([], "fp32")],
)
def test_auto_on_cpu_follows_the_bf16_instructions(flags: list[str], expected: str) -> None:
    choice = resolve_dtype("auto", "cpu", cpu_flags=flags)
    assert choice.name == expected
    assert choice.dtype == {"bf16": torch.bfloat16, "fp32": torch.float32}[expected]
    if flags:
        assert choice.reason == f"auto: the CPU has bf16 matrix instructions ({', '.join(flags)})"
    else:
        assert choice.reason == (
            "auto: the CPU has no bf16 matrix instructions (amx_bf16, avx512_bf16)"
        )


@pytest.mark.parametrize(("supported", "expected"), [(True, "bf16"), (False, "fp32")])
def test_auto_on_cuda_follows_bf16_support(supported: bool, expected: str) -> None:
    assert resolve_dtype("auto", "cuda", cuda_bf16=supported).name == expected


def test_a_named_dtype_is_kept_whatever_the_cpu() -> None:
    for name in ("fp32", "bf16", "fp16"):
        choice = resolve_dtype(name, "cpu", cpu_flags=[])
        assert (choice.name, choice.reason) == (name, "set explicitly")
    assert COMPUTE_DTYPES == ["bf16", "fp16", "fp32", "auto"]
    assert [stored_dtype(n) for n in COMPUTE_DTYPES] == ["bf16", "fp16", "fp32", "fp32"]


def test_cpu_flags_read_from_cpuinfo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The /proc/cpuinfo fallback where torch's probes say no (or are missing)."""
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 amx_tile\n")
    assert cpu_bf16_flags(info) == ["avx512_bf16"]
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2\n")
    assert cpu_bf16_flags(info) == []
    assert cpu_bf16_flags(tmp_path / "missing") == []


def test_unknown_dtype_is_refused(tiny_dir: Path, single_rank: ParallelContext) -> None:
    with pytest.raises(ConfigError, match="must be one of"):
        load_model(tiny_dir, single_rank, dtype="int8")


def test_bf16_logits_are_fp32_and_close_to_fp32s(
    tiny: LoadedModel, tiny_dir: Path, single_rank: ParallelContext
) -> None:
    bf16 = load_model(tiny_dir, single_rank, dtype="bf16")
    assert bf16.model.dtype == torch.bfloat16
    assert bf16.dtype is not None and bf16.dtype.name == "bf16"
    ids = tiny.tokenizer.encode(TEXT, bos=True)
    tokens = torch.tensor([ids, ids[::-1]])
    reference = tiny.model(tokens)
    logits = bf16.model(tokens)
    picked = bf16.model(tokens, logits_at=torch.tensor([3, len(ids) - 1]))
    assert logits.dtype == torch.float32 and picked.dtype == torch.float32
    # bf16 weights and activations (8-bit mantissa) through the tiny random model's layers: on
    # logits up to ~8 (std 2) the mean error is ~0.05, the largest ~0.6, probabilities ~0.03.
    assert float((logits - reference).abs().mean()) < 0.1
    assert float((logits - reference).abs().max()) < 0.15 * float(reference.abs().max())
    probs = (logits.softmax(-1) - reference.softmax(-1)).abs().max()
    assert float(probs) < 0.05
    assert float((logits.argmax(-1) == reference.argmax(-1)).float().mean()) >= 0.85
    # The head itself is fp32: the same positions picked equal the full forward's.
    torch.testing.assert_close(picked, torch.stack([logits[0, 3], logits[1, -1]]))


def test_auto_loads_what_it_reports(tiny_dir: Path, single_rank: ParallelContext) -> None:
    loaded = load_model(tiny_dir, single_rank, dtype="auto")
    assert loaded.dtype is not None
    expected = "bf16" if cpu_bf16_flags() else "fp32"
    assert loaded.dtype.name == expected
    assert loaded.model.dtype == loaded.dtype.dtype


def test_bf16_head_choice_exact_for_the_judge_rounded_for_sampling(
    tiny_dir: Path, single_rank: ParallelContext
) -> None:
    """exact (the judge's): the fp32 product of the bf16 weights; False (sampling): the
    bf16 product, within bf16 rounding of it, still returned as fp32 for the fp32 softmax."""
    bf16 = load_model(tiny_dir, single_rank, dtype="bf16").model
    ids = bf16.args.vocab_size
    tokens = torch.randint(3, ids, (2, 9), generator=torch.Generator().manual_seed(1))
    last = torch.tensor([8, 5])
    exact = bf16(tokens, logits_at=last)
    rounded = bf16(tokens, logits_at=last, exact=False)
    assert exact.dtype == rounded.dtype == torch.float32
    # The exact head multiplies the fp32 final norm by the (exactly representable) bf16 weights.
    hidden = torch.randn(2, bf16.args.dim, generator=torch.Generator().manual_seed(2))
    weight = bf16.output.weight.float()
    torch.testing.assert_close(bf16._head(hidden), hidden @ weight.T, rtol=1e-5, atol=1e-5)
    fast = bf16._head(hidden, exact=False)
    assert not torch.equal(fast, bf16._head(hidden))  # rounded to bf16: not the exact values
    reference = (hidden.bfloat16().float() @ weight.T).abs()
    assert bool(((fast - hidden @ weight.T).abs() <= 2**-7 * reference + 0.05).all())
    assert torch.equal(fast, fast.bfloat16().float())  # 8 bits of mantissa, as stored
    assert float((exact - rounded).abs().max()) < 0.05 * float(exact.abs().max())
