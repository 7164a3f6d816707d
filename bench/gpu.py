"""GPU check of the engine, run by hand on a CUDA machine: `python bench/gpu.py [OUT.json]`.

What the CPU suite cannot show: the process group on NCCL, the model in bf16 on the GPU, the
prefill's share of the GPU's bf16 matmul FLOP/s, and how often bf16 and fp32 weights give the
same judge decision. A SmolLM2-135M-shaped model with random weights (speed does not depend on
the values); the decision check compares the sign of logit(a) - logit(b) at the last position,
as the judge does, on 256 random prompts.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sampling import SMOLLM2_SHAPE

from salmon_wf.model.loader import build_model
from salmon_wf.model.parallel import setup_model_parallel
from salmon_wf.model.tiny import random_weights
from salmon_wf.model.transformer import Transformer, body_flops_per_token


def cuda_seconds(fn, repeats: int = 10) -> float:
    """Mean seconds of `fn` on the GPU (CUDA events, after 3 warm-ups)."""
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3 / repeats


def build(state: dict[str, torch.Tensor], dtype: torch.dtype) -> Transformer:
    model = build_model(SMOLLM2_SHAPE, dtype, torch.device("cuda"))
    with torch.no_grad():
        for name, param in model.state_dict().items():
            param.copy_(state[name])
    return model.eval()


def main() -> int:
    ctx = setup_model_parallel("cuda")
    args = SMOLLM2_SHAPE
    report: dict = {
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "backend": dist.get_backend(),
        "world_size": ctx.world_size,
        "device": str(ctx.device),
    }
    n = 8192
    left = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    right = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    matmul = 2 * n**3 / cuda_seconds(lambda: left @ right)
    report["bf16_matmul_tflops"] = matmul / 1e12

    state = random_weights(args, seed=0)
    bf16, fp32 = build(state, torch.bfloat16), build(state, torch.float32)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for rows, length in ((8, 512), (64, 512)):
            tokens = torch.randint(3, args.vocab_size, (rows, length), generator=gen).cuda()
            last = torch.full((rows,), length - 1, device="cuda")
            seconds = cuda_seconds(lambda t=tokens, lt=last: bf16(t, logits_at=lt))
            flops = body_flops_per_token(args, length // 2) * rows * length
            flops += 2 * args.dim * args.vocab_size * rows
            report[f"prefill_{rows}x{length}_tflops"] = flops / seconds / 1e12
            report[f"prefill_{rows}x{length}_vs_matmul"] = flops / seconds / matmul

        rows, length = 256, 384
        tokens = torch.randint(3, args.vocab_size, (rows, length), generator=gen).cuda()
        last = torch.full((rows,), length - 1, device="cuda")
        choice_a, choice_b = 330, 331  # two token ids standing in for "a" and "b"
        low = bf16(tokens, logits_at=last).float()
        high = fp32(tokens, logits_at=last).float()
    margin_low = low[:, choice_a] - low[:, choice_b]
    margin_high = high[:, choice_a] - high[:, choice_b]
    report["decision_rows"] = rows
    report["bf16_fp32_same_decision"] = int((margin_low.sign() == margin_high.sign()).sum())
    report["bf16_fp32_max_abs_margin_diff"] = float((margin_low - margin_high).abs().max())
    report["fp32_margin_abs_median"] = float(margin_high.abs().median())
    report["bf16_fp32_max_abs_logit_diff"] = float((low - high).abs().max())
    text = json.dumps(report, indent=2)
    print(text)
    if len(sys.argv) > 1:
        Path(sys.argv[1]).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
