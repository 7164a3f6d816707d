"""import-hf throughput and peak memory against checkpoint size (run by hand, not in the suite).

    .venv/bin/python bench/import_hf.py [--sizes 0.5 1 2] [--mp 1 4] [--dtype bf16] [--dir DIR]

For each size (GB of fp32 weights) a random LLaMA checkpoint is written as sharded safetensors,
then imported in a fresh interpreter; reported: read throughput (checkpoint GB / import seconds),
the child's peak RSS (VmHWM), the bare interpreter + torch baseline and the largest tensor; each
import runs --repeat times after a sync (best and median: the disk is a shared VM's). Streaming
means the peak follows the largest tensor (the 32000-row embedding here), not the size.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from salmon_wf.model.synthetic import child_peak_rss, llama_config, write_random_checkpoint
from salmon_wf.model.tiny import make_tiny_model

VOCAB, DIM, FFN, HEADS = 32000, 1024, 2816, 16
LAYER_BYTES = (4 * DIM * DIM + 3 * DIM * FFN + 2 * DIM) * 4
HEAD_BYTES = 2 * VOCAB * DIM * 4


def layers_for(gigabytes: float) -> int:
    return max(1, round((gigabytes * 1e9 - HEAD_BYTES) / LAYER_BYTES))


def cpu_model() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    return next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if "Model name" in ln), "?")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    parser.add_argument("--mp", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--dtype", default="bf16", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--repeat", type=int, default=3, help="imports per size and MP")
    parser.add_argument("--dir", type=Path, default=None, help="scratch directory (default: tmp)")
    opts = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(dir=opts.dir, prefix="bench-import-hf-"))
    try:
        tiny = make_tiny_model(scratch / "tiny", mp=1, seed=0)
        baseline = child_peak_rss("import torch, safetensors, salmon_wf.model.hf_import")
        print(f"CPU: {cpu_model()}; baseline (python + torch) {baseline / 1e6:.0f} MB")
        print(f"largest tensor: {VOCAB} x {DIM} fp32 = {VOCAB * DIM * 4 / 1e6:.0f} MB")
        rows = []
        for size in opts.sizes:
            folder = scratch / f"hf-{size}"
            config = llama_config(DIM, layers_for(size), HEADS, FFN, VOCAB)
            total = write_random_checkpoint(folder, config, tiny / "tokenizer.model")
            for mp in opts.mp:
                out = scratch / f"out-{size}-{mp}"
                timing = scratch / "seconds.txt"
                code = (
                    "import pathlib, time\nfrom salmon_wf.model.hf_import import import_hf\n"
                    "start = time.perf_counter()\n"
                    f"import_hf({str(folder)!r}, {str(out)!r}, mp={mp}, dtype={opts.dtype!r}, "
                    f"log=None)\npathlib.Path({str(timing)!r}).write_text("
                    "str(time.perf_counter() - start))\n"
                )
                seconds, peaks = [], []
                for _ in range(opts.repeat):
                    os.sync()  # start with no dirty pages: writeback of earlier runs throttles
                    peaks.append(child_peak_rss(code))
                    seconds.append(float(timing.read_text()))  # the import, not the start-up
                    shutil.rmtree(out)
                best, median = min(seconds), statistics.median(seconds)
                row = {
                    "checkpoint_gb": round(total / 1e9, 3),
                    "layers": config["num_hidden_layers"],
                    "mp": mp,
                    "dtype": opts.dtype,
                    "best_s": round(best, 2),
                    "median_s": round(median, 2),
                    "best_gb_per_s": round(total / 1e9 / best, 2),
                    "median_gb_per_s": round(total / 1e9 / median, 2),
                    "peak_rss_mb": round(max(peaks) / 1e6),
                    "above_baseline_mb": round((max(peaks) - baseline) / 1e6),
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
            shutil.rmtree(folder)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if not rows:
        sys.exit(1)


if __name__ == "__main__":
    main()
