"""Workflow benchmark: `snakemake -n` on the smoke config with 1,000 shards per run.

The config is tests/smoke.yaml with absolute resource paths, `sampling.defaults.shards: 1000`
and `judge.shards: 1000` (3,008 jobs). A 2-shard dry run (the smoke config as is) is timed
beside it: most of that is snakemake's own start-up. When the 1,000-shard run misses its
target, one run is profiled with cProfile and the hot spots are reported, ours (rules/,
Snakefile, salmon_wf) listed apart from snakemake's.
"""

from __future__ import annotations

import pstats
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from common import Entry, log, timed

ROOT = Path(__file__).resolve().parent.parent
RESOURCES = ROOT / "src" / "salmon_wf" / "resources"
TARGET_S = 5.0
OURS = ("/rules/", "Snakefile", "/salmon_wf/")


def write_config(directory: Path, shards: int | None) -> Path:
    config = yaml.safe_load((ROOT / "tests" / "smoke.yaml").read_text())
    config["prompts"]["input"] = str(RESOURCES / "demo_oasst" / "messages.jsonl")
    config["sampling"]["defaults"]["meta_prompt"] = str(RESOURCES / "meta_prompt.txt")
    config.setdefault("judge", {})
    config["judge"]["principles"] = str(RESOURCES / "principles.json")
    config["judge"]["template"] = str(RESOURCES / "judge_template.txt")
    if shards is not None:
        config["sampling"]["defaults"]["shards"] = shards
        config["judge"]["shards"] = shards
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def command(directory: Path, config: Path) -> list[str]:
    snakefile = str(ROOT / "Snakefile")
    return ["--snakefile", snakefile, "--directory", str(directory), "--configfile", str(config)]


def dry_run(directory: Path, config: Path, *extra: str) -> tuple[float, str]:
    argv = [sys.executable, "-m", "snakemake", *command(directory, config), "-n", *extra]
    seconds, done = timed(lambda: subprocess.run(argv, capture_output=True, text=True, cwd=ROOT))
    if done.returncode != 0:  # type: ignore[union-attr]
        raise RuntimeError(f"dry run failed:\n{done.stderr[-3000:]}")  # type: ignore[union-attr]
    return seconds, done.stdout + done.stderr  # type: ignore[union-attr]


def profile(directory: Path, config: Path) -> dict:
    out = directory / "dry-run.prof"
    argv = [sys.executable, "-m", "cProfile", "-o", str(out), "-m", "snakemake"]
    subprocess.run([*argv, *command(directory, config), "-n"], capture_output=True, cwd=ROOT)
    stats = pstats.Stats(str(out))
    rows = []
    for (file, line, func), (_, calls, tottime, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append(
            {
                "where": f"{file}:{line}({func})",
                "calls": calls,
                "tottime_s": round(tottime, 3),
                "cumtime_s": round(cumtime, 3),
                "ours": any(mark in file for mark in OURS),
            }
        )
    by_cum = sorted(rows, key=lambda r: -r["cumtime_s"])

    def cumulative(file_end: str, func: str) -> float:
        found = [
            r["cumtime_s"] for r in rows if r["where"].split(":")[0].endswith(file_end)
            and r["where"].endswith(f"({func})")
        ]  # fmt: skip
        return max(found, default=0.0)

    # IOFile comparisons made by DAG.update: its `file in job.input` scans the producer's
    # whole input list (a gather job has one input per shard) for every consumer job.
    eq_calls = eq_time = 0.0
    for (file, _, func), value in stats.stats.items():  # type: ignore[attr-defined]
        if file.endswith("snakemake/io/__init__.py") and func == "__eq__":
            for (caller_file, _, caller), timing in value[4].items():
                if caller_file.endswith("snakemake/dag.py") and caller == "update":
                    eq_calls, eq_time = timing[1], timing[3]
    summary = {
        "profiled_total_s": round(max(r["cumtime_s"] for r in rows), 3),
        "dag_build_s": cumulative("snakemake/workflow.py", "_build_dag"),
        "dry_run_job_printing_s": cumulative("snakemake/executors/dryrun.py", "printjob"),
        "dag_update_input_scans_calls": eq_calls,
        "dag_update_input_scans_s": round(eq_time, 3),
        "ours_self_s": round(sum(r["tottime_s"] for r in rows if r["ours"]), 3),
        "snakefile_module_s": cumulative("Snakefile", "<module>"),
    }
    by_self = sorted(rows, key=lambda r: -r["tottime_s"])
    return {
        "summary": summary,
        "ours_by_cumulative": [r for r in by_cum if r["ours"]][:12],
        "all_by_self": by_self[:15],
        "all_by_cumulative": by_cum[:25],
    }


def run(quick: bool) -> tuple[list[Entry], dict]:
    repeats = 2 if quick else 3
    details: dict = {}
    with tempfile.TemporaryDirectory(prefix="salmon-bench-wf-") as tmp:
        results = {}
        for label, shards in (("shards_1000", 1000), ("shards_2", None)):
            directory = Path(tmp) / label
            directory.mkdir()
            config = write_config(directory, shards)
            log(f"workflow: snakemake -n, {label} (best of {repeats})")
            times, output = [], ""
            for _ in range(repeats):
                seconds, output = dry_run(directory, config)
                times.append(seconds)
            jobs = next(
                (line.split()[-1] for line in output.splitlines() if line.startswith("total")), "?"
            )
            results[label] = {"best_s": min(times), "all_s": times, "jobs": jobs}
            if label == "shards_1000" and min(times) > TARGET_S:
                log("workflow: over target, profiling one 1000-shard dry run")
                details["profile_1000"] = profile(directory, config)
                log("workflow: the same with --quiet all (is it the printing?)")
                quiet = [dry_run(directory, config, "--quiet", "all")[0] for _ in range(repeats)]
                details["shards_1000_quiet_best_s"] = min(quiet)
        details |= results
    best = results["shards_1000"]["best_s"]
    note = (
        f"{results['shards_1000']['jobs']} jobs; 2-shard run {results['shards_2']['best_s']:.2f} s"
    )
    return [Entry("workflow_dry_run_1000_shards", best, TARGET_S, "s", False, note)], details
