"""The benchmark suite of issue #5 (run by hand: `bench/run [--quick]` from the repo root).

Runs every benchmark, prints a table of each figure against its target and writes
bench/results.json (one {"name", "value", "target", "unit", "higher_is_better"} entry per
target; "note" says what was measured, "extrapolated" marks a value read off a line) and
bench/results.details.json (the machine: CPU model, its vector and bf16 instruction sets, the
load average at the start and end; every measurement behind the figures, the growth tables).
Ratios are measured against their peer or this machine's own floor in the same run, on the same
weights, fp32 on the CPU unless the figure says bf16. --quick runs a reduced version with the
same entries (smaller workloads, shorter lengths; the aggregation is extrapolated to 1M pairs and
says so). Nothing here is a test: missed targets are reported, never raised.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
from common import Entry, log  # noqa: E402

SECTIONS = ("prefill", "judge", "sampler", "workflow", "aggregate", "bf16")


# /proc/cpuinfo flags recorded with every run: which matrix and vector instructions it had.
CPU_FLAGS = ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> list[str]:
    """The CPU_FLAGS this machine has: a figure is only comparable on the same instruction set."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return []
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    have = set(line.partition(":")[2].split())
    return [f for f in CPU_FLAGS if f in have]


def machine() -> dict:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(
        (k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lscpu.splitlines())
    )
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        import psutil

        memory = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        memory = None
    return {
        "cpu_model": fields.get("Model name", platform.processor()),
        "cpu_flags": cpu_flags(),
        "load_average_at_start": list(os.getloadavg()),
        "cpus_usable": cpus,
        "threads_per_core": fields.get("Thread(s) per core"),
        "memory_gib": memory,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }


def run_section(name: str, quick: bool) -> tuple[list[Entry], dict]:
    if name == "prefill":
        import sampling

        return sampling.run_prefill(quick)
    if name == "judge":
        import judging

        return judging.run(quick)
    if name == "sampler":
        import sampling

        return sampling.run_sampler(quick)
    if name == "workflow":
        import workflow_dry

        return workflow_dry.run(quick)
    if name == "bf16":
        import bf16

        return bf16.run(quick)
    import aggregation

    return aggregation.run(quick)


def fmt(value: float) -> str:
    if value != value:  # NaN
        return "nan"
    if value == 0 or 0.01 <= abs(value) < 1e5:
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.1f}"
    return f"{value:.2e}"


def table(entries: list[Entry]) -> str:
    rows = [("figure", "value", "target", "unit", "")]
    for e in entries:
        sign = ">=" if e.higher_is_better else "<="
        rows.append(
            (
                e.name,
                fmt(e.value) + (" (extrapolated)" if e.extrapolated else ""),
                f"{sign} {fmt(e.target)}",
                e.unit,
                "met" if e.met else "MISSED",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller workloads, same entries")
    parser.add_argument("--only", action="append", choices=SECTIONS, help="run these sections only")
    parser.add_argument("--output", type=Path, default=HERE / "results.json")
    opts = parser.parse_args()
    torch.manual_seed(0)
    sections = opts.only or list(SECTIONS)
    info = machine()
    log(
        f"{'quick' if opts.quick else 'full'} run on {info['cpu_model']} "
        f"({' '.join(info['cpu_flags']) or 'no avx2/avx512/amx flags'}), {info['cpus_usable']} "
        f"CPUs, torch {info['torch']} ({info['torch_threads']} threads), load average "
        f"{' '.join(f'{x:.2f}' for x in info['load_average_at_start'])}"
    )
    start = time.perf_counter()
    entries: list[Entry] = []
    details: dict = {"mode": "quick" if opts.quick else "full", "machine": info, "sections": {}}
    for name in sections:
        begin = time.perf_counter()
        found, more = run_section(name, opts.quick)
        more["seconds"] = time.perf_counter() - begin
        entries += found
        details["sections"][name] = more
        log(f"{name}: done in {more['seconds']:.0f} s")
    details["total_seconds"] = time.perf_counter() - start
    details["machine"]["load_average_at_end"] = list(os.getloadavg())
    details["date"] = time.strftime("%Y-%m-%d %H:%M:%S")
    opts.output.write_text(json.dumps([e.to_json() for e in entries], indent=2) + "\n")
    detail_path = opts.output.with_name(opts.output.stem + ".details.json")
    detail_path.write_text(json.dumps(details, indent=2) + "\n")
    print()
    print(table(entries))
    print()
    for e in entries:
        if e.note:
            print(f"  {e.name}: {e.note}")
    print(
        f"\n{len(entries)} figures, {sum(not e.met for e in entries)} missed; "
        f"{details['total_seconds']:.0f} s in all. Written: {opts.output}, {detail_path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
