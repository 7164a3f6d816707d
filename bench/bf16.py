"""bf16 vs fp32 on the embedded default: sample and judge stage time, and the judge's agreement.

The model is the one config.yaml's workflow runs (SmolLM2-135M-Instruct converted from the PyPI
package's GGUF by the same command the prepare_model rule runs), the prompts are the demo prompts
cleaned as the clean_prompts rule cleans them, and every stage runs as its rule runs it: one
`salmon-wf` subprocess per job with config.yaml's flags (command_flags, as rules/common.smk builds
them), only `--dtype` changed. A subset of the prompts keeps the run short: shard 0 of
PROMPT_STRIDE (`--shard 0 --num-shards k`, the stage's own split).

Time is each job's wall clock (start-up and model load included, as a shard job pays them). The
two sampling runs (response0, response1) run in each dtype, interleaved fp32, bf16; bf16 samples
different tokens, so tokens per second are reported beside the seconds. The judge runs on ONE set
of pairs, the fp32 responses paired by the pair stage, in both dtypes: the agreement measures the
judge alone. The full run judges twice per dtype (fp32, bf16, bf16, fp32) and keeps each dtype's
best time; the repeats' decisions are compared too (each dtype must agree with itself).

Agreement is the share of (pair, principle) decisions equal to fp32's. A decision can only change
where a relative score changes sign, i.e. where its fp32 |score| is below the bf16 error; the
share of such near ties (fp32 margin min(|s12|, |s21|) below the run's largest |score| difference)
bounds how far the agreement can fall and is reported with it.
"""

from __future__ import annotations

import ast
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from common import Entry, log

from salmon_wf.config import command_flags, run_settings, validate
from salmon_wf.model.dtypes import cpu_bf16_flags
from salmon_wf.workflow import conversion_command

ROOT = Path(__file__).resolve().parent.parent
SPEEDUP_TARGET, AGREEMENT_TARGET = 2.0, 0.97
PYTHON = [sys.executable, "-m", "salmon_wf.cli"]


def load_config() -> dict:
    """config.yaml with the schema's defaults filled in: the embedded default as rules see it."""
    return validate(yaml.safe_load((ROOT / "config.yaml").read_text()))


def model_flags(config: dict, dtype: str) -> list[str]:
    """The rules' model flags with only --dtype changed, so the two runs differ in nothing else."""
    return shlex.split(command_flags("model", config["model"] | {"dtype": dtype}))


def sample_argv(config: dict, model: Path, dtype: str, run: str, shard: list[str]) -> list[str]:
    """The sample_shard rule's command for `run`, with this dtype and shard split."""
    argv = [*PYTHON, "sample", "--model", str(model), *model_flags(config, dtype)]
    argv += shlex.split(command_flags("sample", run_settings(config, run)))
    return [*argv, "--label", run, *shard]


def job(argv: list[str], log_path: Path) -> float:
    """One stage job as a rule runs it (cwd = the repo, output to its log); wall seconds."""
    start = time.perf_counter()
    with log_path.open("w") as sink:
        done = subprocess.run(argv, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} failed:\n{log_path.read_text()[-3000:]}")
    return seconds


def judgments(path: Path) -> dict[tuple[str, str], dict]:
    """A judgments file by (pair id, principle): both dtypes' runs are compared key by key."""
    rows = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return {(r["id"], r["dimension"]): r for r in rows}


def compare(reference: Path, other: Path) -> dict:
    """Decisions equal to the reference's, score differences, and the near ties that bound them."""
    ref, got = judgments(reference), judgments(other)
    if ref.keys() != got.keys():
        raise RuntimeError(f"{other} judged other (pair, principle)s than {reference}")
    diffs, margins, flips = [], [], []
    for key, r in ref.items():
        scores, theirs = r["relative_score"], got[key]["relative_score"]
        error = max(abs(a - b) for a, b in zip(scores, theirs, strict=True))
        margin = min(abs(a) for a in scores)
        diffs.append(error)
        margins.append(margin)
        if r["preference"] != got[key]["preference"]:
            flips.append({"id": key[0], "dimension": key[1], "fp32": scores, "other": theirs,
                          "fp32_margin": margin, "score_difference": error})  # fmt: skip
    max_diff = max(diffs)
    near = sum(m < max_diff for m in margins)
    ordered = sorted(diffs)
    return {
        "decisions": len(ref),
        "equal": len(ref) - len(flips),
        "agreement": (len(ref) - len(flips)) / len(ref),
        "max_abs_score_difference": max_diff,
        "median_abs_score_difference": ordered[len(ordered) // 2],
        "median_fp32_abs_score": sorted(abs(s) for r in ref.values() for s in r["relative_score"])[
            len(ref)
        ],
        "near_ties": near,
        "near_tie_share": near / len(ref),
        "flips_within_own_error": sum(f["fp32_margin"] < f["score_difference"] for f in flips),
        "flips": flips,
    }


def sample_stats(path: Path) -> dict:
    """The sampler's counts from the stage's last log line (`done: ... {stats}`)."""
    line = path.read_text().strip().splitlines()[-1]
    return ast.literal_eval(line[line.index("{") :]) if "{" in line else {}


def run(quick: bool) -> tuple[list[Entry], dict]:
    config = load_config()
    stride = 4 if quick else 2
    shard = ["--shard", "0", "--num-shards", str(stride)]
    runs = list(config["sampling"]["runs"])
    flags = cpu_bf16_flags()
    details: dict = {
        "model": config["model"]["name"],
        "source": config["model"]["source"],
        "threads": config["model"]["threads"],
        "prompt_subset": f"shard 0 of {stride} of the cleaned demo prompts",
        "cpu_bf16_flags": flags,
        "load_average_at_start": list(os.getloadavg()),
    }
    with tempfile.TemporaryDirectory(prefix="salmon-bench-bf16-") as tmp:
        work = Path(tmp)
        model = work / "model"
        convert = shlex.split(conversion_command(config["model"], str(model), "salmon"))[1:]
        log(f"bf16: converting {config['model']['name']} ({config['model']['source']})")
        details["convert_s"] = job([*PYTHON, *convert], work / "convert.log")
        prompts = work / "prompts.jsonl"
        clean = ["clean-prompts", "--input", config["prompts"]["input"], "--output", str(prompts)]
        clean += ["--summary", str(work / "prompts.summary.json")]
        clean += shlex.split(command_flags("clean-prompts", config["prompts"]))
        job([*PYTHON, *clean], work / "clean.log")
        total = sum(1 for line in prompts.read_text().splitlines() if line.strip())
        details["prompts"] = len(range(0, total, stride))
        details["prompts_cleaned"] = total

        sampled: dict[str, dict[str, dict]] = {"fp32": {}, "bf16": {}}
        for name in runs:
            for dtype in ("fp32", "bf16"):
                out = work / f"{name}-{dtype}.jsonl"
                argv = sample_argv(config, model, dtype, name, shard)
                argv += ["--prompts", str(prompts), "--output", str(out)]
                log(f"bf16: sample {name} in {dtype} ({details['prompts']} prompts)")
                seconds = job(argv, work / f"{name}-{dtype}.log")
                stats = sample_stats(work / f"{name}-{dtype}.log")
                tokens = int(stats.get("generated_tokens", 0))
                sampled[dtype][name] = {"seconds": seconds, "generated_tokens": tokens,
                                        "tokens_per_s": tokens / seconds}  # fmt: skip

        # A job's fixed cost (interpreter, torch, loading and casting the weights): one prompt
        # and one new token, so that both dtypes do the same work (with the run's own length,
        # each dtype's sample of that prompt had its own length: 3.8 vs 8.6 s in one run).
        startup: dict[str, float] = {}
        for dtype in ("fp32", "bf16"):
            name, out = runs[0], work / f"one-{dtype}.jsonl"
            one = ["--shard", "0", "--num-shards", str(total)]
            argv = sample_argv(config, model, dtype, name, one)
            argv += ["--prompts", str(prompts), "--output", str(out), "--max-new-tokens", "1"]
            log(f"bf16: one-prompt sample job in {dtype} (a job's fixed cost)")
            startup[dtype] = job(argv, work / f"one-{dtype}.log")
        details["one_prompt_job_s"] = startup

        pairs = work / "pairs.jsonl"
        pair = ["pair", "--responses", *(str(work / f"{n}-fp32.jsonl") for n in runs)]
        pair += shlex.split(command_flags("pair", config["judge"]))
        pair += ["--output", str(pairs), "--summary", str(work / "pairs.summary.json")]
        job([*PYTHON, *pair], work / "pair.log")
        details["pairs"] = sum(1 for line in pairs.read_text().splitlines() if line.strip())

        judge_base = ["judge", "--model", str(model)]
        judge_tail = shlex.split(command_flags("judge", config["judge"]))
        judge_tail += ["--pairs", str(pairs), "--principles", config["judge"]["principles"]]
        judge_tail += ["--template", config["judge"]["template"]]
        order = ["fp32", "bf16"] if quick else ["fp32", "bf16", "bf16", "fp32"]
        judged: dict[str, list[dict]] = {"fp32": [], "bf16": []}
        for dtype in order:
            k = len(judged[dtype])
            out = work / f"judgments-{dtype}-{k}.jsonl"
            argv = [*PYTHON, *judge_base, *model_flags(config, dtype), *judge_tail]
            argv += ["--output", str(out), "--summary", str(out.with_suffix(".summary.json"))]
            log(f"bf16: judge {details['pairs']} pairs in {dtype} (run {k + 1})")
            seconds = job(argv, work / f"judge-{dtype}-{k}.log")
            judged[dtype].append({"seconds": seconds, "path": out})

        reference = judged["fp32"][0]["path"]
        agreement = compare(reference, judged["bf16"][0]["path"])
        repeats = {
            f"{dtype}_run2_vs_run1_equal": compare(runs_[0]["path"], runs_[1]["path"])["agreement"]
            for dtype, runs_ in judged.items()
            if len(runs_) > 1
        }
    sample_s = {d: sum(r["seconds"] for r in sampled[d].values()) for d in sampled}
    judge_s = {d: min(r["seconds"] for r in judged[d]) for d in judged}
    tokens = {d: sum(r["generated_tokens"] for r in sampled[d].values()) for d in sampled}
    total_s = {d: sample_s[d] + judge_s[d] for d in sampled}
    speedup = total_s["fp32"] / total_s["bf16"]
    details |= {
        "sample": sampled,
        "judge_s": {d: [r["seconds"] for r in judged[d]] for d in judged},
        "judge_order": order,
        "sample_s": sample_s,
        "judge_best_s": judge_s,
        "sample_plus_judge_s": total_s,
        "speedup": speedup,
        "sample_speedup": sample_s["fp32"] / sample_s["bf16"],
        "sample_tokens_per_s_speedup": (tokens["bf16"] / sample_s["bf16"])
        / (tokens["fp32"] / sample_s["fp32"]),
        "judge_speedup": judge_s["fp32"] / judge_s["bf16"],
        # Less each job's fixed cost (the one-prompt job; 2 sample jobs and 1 judge job each).
        "speedup_less_fixed_cost": (total_s["fp32"] - (len(runs) + 1) * startup["fp32"])
        / (total_s["bf16"] - (len(runs) + 1) * startup["bf16"]),
        "agreement": agreement,
        "repeat_agreement": repeats,
    }
    capable = "bf16-capable CPU" if flags else "NO bf16 instructions: emulated, target n/a"
    speed_note = (
        f"{capable}; {details['prompts']} prompts x {len(runs)} runs, {details['pairs']} pairs; "
        f"sample {sample_s['fp32']:.1f} vs {sample_s['bf16']:.1f} s "
        f"({tokens['fp32']} vs {tokens['bf16']} tokens), judge {judge_s['fp32']:.1f} vs "
        f"{judge_s['bf16']:.1f} s (fp32 vs bf16, job wall times); a one-prompt, one-token job "
        f"{startup['fp32']:.1f} vs {startup['bf16']:.1f} s"
    )
    agree_note = (
        f"{agreement['equal']} of {agreement['decisions']} decisions; judged the same fp32-sampled "
        f"pairs; max |score diff| {agreement['max_abs_score_difference']:.3g}; near ties "
        f"(fp32 margin < that) {agreement['near_tie_share']:.1%}"
    )
    share = agreement["agreement"]
    return [
        Entry("bf16_sample_judge_speedup", speedup, SPEEDUP_TARGET, "x", True, speed_note),
        Entry("bf16_judge_agreement", share, AGREEMENT_TARGET, "share", True, agree_note),
    ], details
