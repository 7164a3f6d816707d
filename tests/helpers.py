"""Helpers several test modules share (plain functions; the fixtures are in conftest.py).

Test modules import these from here, never from one another.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from importlib import metadata
from pathlib import Path

import torch.multiprocessing as mp
import yaml
from mp_worker import run_rank

from salmon_wf.model.gguf_import import SMOLLM2_PACKAGE

REPO = Path(__file__).resolve().parents[1]
PATH_KEYS = [("prompts", "input"), ("sampling", "defaults", "meta_prompt")]
PATH_KEYS += [("judge", "principles"), ("judge", "template")]

try:
    metadata.distribution(SMOLLM2_PACKAGE)
    HAVE_SMOLLM2 = True
except metadata.PackageNotFoundError:
    HAVE_SMOLLM2 = False


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def spawn(world: int, model_dir: Path, tmp: Path, job: str, spec: dict) -> list[dict]:
    (tmp / "job.json").write_text(json.dumps(spec))
    args = (world, str(tmp / "store"), str(model_dir), str(tmp), job)
    mp.spawn(run_rank, args=args, nprocs=world, join=True)
    return [json.loads((tmp / f"rank{r}.json").read_text()) for r in range(world)]


def write_config(workdir: Path, **changes: object) -> Path:
    """The smoke config with resource paths made absolute, then `changes` ("a.b.c": value)."""
    config = yaml.safe_load((REPO / "tests" / "smoke.yaml").read_text())
    config.setdefault("judge", {}).setdefault(
        "principles", "src/salmon_wf/resources/principles.json"
    )
    config["judge"].setdefault("template", "src/salmon_wf/resources/judge_template.txt")
    for keys in PATH_KEYS:
        node = config
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = str(REPO / node[keys[-1]])
    for dotted, value in changes.items():
        node = config
        *parents, last = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def snakemake(workdir: Path, *args: str) -> str:
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")]
    command += ["--directory", str(workdir), "--configfile", str(workdir / "config.yaml"), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise AssertionError(f"snakemake failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout + done.stderr


def planned_jobs(workdir: Path) -> Counter:
    """Jobs of a dry run, counted by rule."""
    text = snakemake(workdir, "-n")
    rules = re.findall(r"^(?:local)?rule (\w+):$", text, flags=re.MULTILINE)
    return Counter(r for r in rules if r != "all")  # the target rule always "runs"


def planned_outputs(workdir: Path) -> list[str]:
    text = snakemake(workdir, "-n")
    return re.findall(r"^\s+output: (.+)$", text, flags=re.MULTILINE)
