"""Workflow benchmark: `snakemake -n` on the smoke config with 1,000 shards per run.

The config is tests/smoke.yaml with absolute resource paths, `sampling.defaults.shards: 1000`
and `judge.shards: 1000` (~3,000 jobs). The target is a ratio to Snakemake's own floor on the
machine that runs it: the dry run of a generated minimal Snakefile with the same rules, the same
file patterns and wildcards, the same dependency shape (two 1,000-input gathers, one
2,000-input gather) and the same number of jobs, every rule a bare `touch`. The two are timed
interleaved (ours, minimal, ours, ...), best of each. A 2-shard dry run (the smoke config as is)
is timed beside them. When the ratio misses its target, one run is profiled with cProfile and
the hot spots are reported, ours (rules/, Snakefile, salmon_wf) listed apart from snakemake's.
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
TARGET_RATIO = 1.3
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


# The workflow's DAG with trivial rules; RUNS, N and EXTRA are prepended (minimal_snakefile).
MINIMAL_BODY = """
wildcard_constraints:
    run="|".join(RUNS),
    i=r"\\d+",
    n=r"\\d+",
    stage="|".join(["pairs", "judge", *(f"sample-{run}" for run in RUNS)]),

rule all:
    input:
        "results/ledger.json",
        "results/report/figures.txt",
        [f"results/extra/{k}.txt" for k in range(EXTRA)],

rule prepare_model:
    output: "models/m/params.json"
    shell: "touch {output}"

rule clean_prompts:
    output: prompts="results/prompts.jsonl", summary="results/prompts.summary.json"
    shell: "touch {output}"

rule fingerprint:
    output: "results/fingerprints/{stage}.txt"
    shell: "touch {output}"

rule sample_shard:
    input:
        fingerprint="results/fingerprints/sample-{run}.txt",
        prompts="results/prompts.jsonl",
        model="models/m/params.json",
    output: "results/responses/{run}/shard-{i}-of-{n}.jsonl"
    shell: "touch {output}"

rule gather_responses:
    input:
        prompts="results/prompts.jsonl",
        shards=lambda w: [f"results/responses/{w.run}/shard-{i}-of-{N}.jsonl" for i in range(N)],
    output: "results/responses/{run}.jsonl"
    shell: "touch {output}"

rule pair_responses:
    input:
        fingerprint="results/fingerprints/pairs.txt",
        responses=[f"results/responses/{run}.jsonl" for run in RUNS],
    output: pairs="results/pairs.jsonl", summary="results/pairs.summary.json"
    shell: "touch {output}"

rule judge_shard:
    input:
        fingerprint="results/fingerprints/judge.txt",
        pairs="results/pairs.jsonl",
        model="models/m/params.json",
    output:
        judgments="results/judgments/shard-{i}-of-{n}.jsonl",
        summary="results/judgments/shard-{i}-of-{n}.summary.json",
    shell: "touch {output}"

rule gather_judgments:
    input:
        prompts="results/prompts.jsonl",
        shards=[f"results/judgments/shard-{i}-of-{N}.jsonl" for i in range(N)],
        summaries=[f"results/judgments/shard-{i}-of-{N}.summary.json" for i in range(N)],
    output: judgments="results/judgments.jsonl", summary="results/judgments.summary.json"
    shell: "touch {output}"

rule aggregate:
    input: "results/pairs.jsonl", "results/pairs.summary.json", "results/judgments.jsonl"
    output: "results/preferences.jsonl", "results/preferences.stats.json"
    shell: "touch {output}"

rule ledger:
    input:
        "results/preferences.jsonl",
        "results/judgments.summary.json",
        [f"results/responses/{run}.jsonl" for run in RUNS],
    output: "results/ledger.json"
    shell: "touch {output}"

rule report_figures:
    input: "results/ledger.json"
    output: "results/report/figures.txt"
    shell: "touch {output}"

rule extra:
    input: "results/preferences.jsonl"
    output: "results/extra/{k}.txt"
    shell: "touch {output}"
"""
# Jobs of MINIMAL_BODY besides the shards and extras: 4 fingerprints, 2 gathers, 8 singles.
MINIMAL_FIXED_JOBS = 14


def minimal_snakefile(directory: Path, runs: list[str], shards: int, jobs: int) -> Path:
    """A Snakefile with our DAG's shape and `jobs` jobs (padding with single `extra` jobs)."""
    extra = jobs - (len(runs) + 1) * shards - MINIMAL_FIXED_JOBS
    if extra < 0:
        raise RuntimeError(f"the workflow has fewer jobs ({jobs}) than the minimal DAG's shape")
    head = f"RUNS = {runs!r}\nN = {shards}\nEXTRA = {extra}\n"
    path = directory / "Snakefile"
    path.write_text(head + MINIMAL_BODY)
    return path


def job_total(output: str) -> int:
    """The `total` line of a dry run's job table."""
    line = next((line for line in output.splitlines() if line.startswith("total")), "")
    return int(line.split()[-1]) if line else -1


def command(directory: Path, config: Path) -> list[str]:
    snakefile = str(ROOT / "Snakefile")
    return ["--snakefile", snakefile, "--directory", str(directory), "--configfile", str(config)]


def dry_run(directory: Path, config: Path | None, *extra: str) -> tuple[float, str]:
    """One `snakemake -n` on our Snakefile (config given) or on directory/Snakefile (None)."""
    head = command(directory, config) if config is not None else ["--directory", str(directory)]
    if config is None:
        head = ["--snakefile", str(directory / "Snakefile"), *head]
    argv = [sys.executable, "-m", "snakemake", *head, "-n", *extra]
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
    shards = 1000
    details: dict = {}
    with tempfile.TemporaryDirectory(prefix="salmon-bench-wf-") as tmp:
        ours_dir, small_dir, floor_dir = (Path(tmp) / n for n in ("shards_1000", "shards_2", "min"))
        for d in (ours_dir, small_dir, floor_dir):
            d.mkdir()
        config = write_config(ours_dir, shards)
        runs = list(yaml.safe_load(config.read_text())["sampling"]["runs"])
        log("workflow: snakemake -n, 1000 shards (first run: counts the jobs)")
        first, output = dry_run(ours_dir, config)
        jobs = job_total(output)
        minimal_snakefile(floor_dir, runs, shards, jobs)
        ours, floor = [first], []
        log(f"workflow: ours vs a minimal Snakefile, {jobs} jobs each, interleaved, {repeats} runs")
        floor_jobs = -1
        for k in range(repeats):
            seconds, out = dry_run(floor_dir, None)
            floor.append(seconds)
            floor_jobs = job_total(out)
            if k + 1 < repeats:
                ours.append(dry_run(ours_dir, config)[0])
        small_config = write_config(small_dir, None)
        small = [dry_run(small_dir, small_config)[0] for _ in range(repeats)]
        best, floor_best = min(ours), min(floor)
        ratio = best / floor_best
        details |= {
            "shards_1000": {"best_s": best, "all_s": ours, "jobs": jobs},
            "minimal_snakefile": {"best_s": floor_best, "all_s": floor, "jobs": floor_jobs},
            "shards_2": {"best_s": min(small), "all_s": small},
            "ratio": ratio,
        }
        if floor_jobs != jobs:
            raise RuntimeError(f"minimal Snakefile has {floor_jobs} jobs, ours {jobs}")
        if ratio > TARGET_RATIO:
            log("workflow: over target, profiling one 1000-shard dry run")
            details["profile_1000"] = profile(ours_dir, config)
            log("workflow: the same with --quiet all (is it the printing?)")
            quiet = [dry_run(ours_dir, config, "--quiet", "all")[0] for _ in range(repeats)]
            details["shards_1000_quiet_best_s"] = min(quiet)
    note = (
        f"{jobs} jobs; ours {best:.2f} s vs a minimal Snakefile with the same jobs and file "
        f"patterns {floor_best:.2f} s (best of {repeats}, interleaved); 2-shard run "
        f"{min(small):.2f} s"
    )
    return [
        Entry("workflow_dry_run_1000_shards_vs_minimal", ratio, TARGET_RATIO, "x", False, note)
    ], details
