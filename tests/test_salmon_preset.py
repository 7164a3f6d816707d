"""presets/salmon.yaml end to end on the tiny model, with texts written here in SALMON's formats.

SALMON's own meta prompt, judging template and principle file are not shipped: the preset
takes them from salmon_prompts_dir, and without it the workflow stops at start naming them.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import REPO, write_config

from salmon_wf.data.jsonl import read_jsonl
from salmon_wf.engine.chat import dromedary_prompt
from salmon_wf.engine.context import common_prefix
from salmon_wf.model.tokenizer import load_tokenizer

pytestmark = pytest.mark.slow

META = """# Dromedary

## System Overview

A test assistant called Dromedary answers the user's questions briefly and politely.

## User Conversation

### User
"""
TEMPLATE = """# Preference test

### User
Compare two answers to the request below on one aspect only.

Request: {UserInstruction}

Output (a): {OutputA}

Output (b): {OutputB}

Aspect. {Dimension}: {Definition}

### Dromedary
Having read both, the more {Dimension} output is Output ("""
PRINCIPLES = [
    {"dimension": "Overall Helpful", "definition": "It helps most.",
     "negative_definition": "It helps least."},
    {"dimension": "Concise", "definition": "It says it in few words.",
     "negative_definition": "It rambles."},
    {"dimension": "Honest", "definition": "It states only what it knows.",
     "negative_definition": "It makes things up."},
    {"dimension": "Polite", "definition": "It is courteous.",
     "negative_definition": "It is rude."},
]  # fmt: skip


def salmon_texts(folder: Path) -> Path:
    (folder / "principles").mkdir(parents=True)
    (folder / "dromedary_inference_prompt.txt").write_text(META)
    (folder / "synthetic_preference_prompt.txt").write_text(TEMPLATE + "\n")
    (folder / "principles" / "principle_collection_rm.json").write_text(json.dumps(PRINCIPLES))
    return folder


def run_preset(
    workdir: Path, *args: str, texts: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """The smoke config (tiny model), then the preset, then the test's own overrides."""
    smoke = yaml.safe_load((workdir / "config.yaml").read_text())
    overrides = {"model": smoke["model"], "prompts": {"input": smoke["prompts"]["input"]}}
    if texts is not None:
        overrides["salmon_prompts_dir"] = str(texts)
    overrides["sampling"] = {"defaults": {"shards": 2}}
    (workdir / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")]
    command += ["--directory", str(workdir), "--configfile", str(workdir / "config.yaml")]
    command += [str(REPO / "presets" / "salmon.yaml"), str(workdir / "overrides.yaml"), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=900)


def test_preset_without_salmon_texts_stops_at_start_naming_them(tmp_path: Path) -> None:
    write_config(tmp_path)
    done = run_preset(tmp_path, "-n")
    assert done.returncode != 0
    message = done.stdout + done.stderr
    assert "salmon_prompts_dir" in message and "not shipped" in message
    for name in ("dromedary_inference_prompt.txt", "synthetic_preference_prompt.txt"):
        assert name in message
    assert "principles/principle_collection_rm.json" in message
    assert "judge.template" in message and "sampling.defaults.meta_prompt" in message


def test_preset_runs_salmons_settings_end_to_end(tmp_path: Path) -> None:
    texts = salmon_texts(tmp_path / "SALMON" / "prompts")
    workdir = tmp_path / "run"
    workdir.mkdir()
    write_config(workdir)
    done = run_preset(workdir, "--cores", "2", texts=texts)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    results = workdir / "results"
    prompts = json.loads((results / "prompts.summary.json").read_text())
    assert prompts["options"]["drop_deleted"] is False and prompts["options"]["dedupe"] is False
    assert prompts["options"]["min_chars"] == 0 and prompts["split"]["requested"] == "train"
    assert prompts["split"]["told"] is False  # the demo is a jsonl export
    assert sum(prompts["dropped"].values()) == prompts["dropped"]["no_reply"]
    tok = load_tokenizer(workdir / "models" / "tiny")
    head = tok.encode(dromedary_prompt("", "", META), bos=True)
    for run in ("response0", "response1"):
        records = list(read_jsonl(results / "responses" / f"{run}.jsonl"))
        assert len(records) == prompts["n_prompts"]
        for r in records:
            ids = tok.encode(dromedary_prompt(r["instruction"], r["input"], META), bos=True)
            assert r["n_prompt_tokens"] == len(ids)  # SALMON's prompt, BOS first
            assert r["finish_reason"] in ("eos", "length")  # no stop string: SALMON's decode
            shared = len(common_prefix([ids, head]))  # BOS, the meta prompt, its newline
            assert shared == len(tok.encode(META.strip() + "\n", bos=True))
            room = min(768, 768 + shared - len(ids))  # Dromedary's window after the prefix
            if r["finish_reason"] == "length":
                assert r["n_generated_tokens"] == room
            assert r["n_generated_tokens"] <= room
            cut = r["generation"].split("###")[0].rstrip("\ufffd").strip()
            assert r["response"] == cut
    pairs = json.loads((results / "pairs.summary.json").read_text())
    assert pairs["min_chars"] == 16 and pairs["min_chars_of"] == "raw"
    judged = json.loads((results / "judgments.summary.json").read_text())
    assert judged["settings"] == {"max_length": 1536, "long_prompt_policy": "left"}
    assert judged["shards"] == 2 and judged["skipped_pairs"] == 0
    assert judged["judged_pairs"] == pairs["pairs"] > 0
    judgments = list(read_jsonl(results / "judgments.jsonl"))
    assert len(judgments) == pairs["pairs"] * len(PRINCIPLES)
    # (left truncation itself is checked in test_salmon.py: these prompts fit in 1536 tokens)
    assert judged["truncated_prompts"] == sum(sum(j["truncated"]) for j in judgments)
    assert pairs["pairs"] + sum(pairs["dropped"].values()) == prompts["n_prompts"]
    records = json.loads((results / "preferences.json").read_text())
    assert records and all(r["preference"] in (1, 2) for r in records)
    used = {d for r in records for d in ast.literal_eval(r["dimensions"])}
    assert used <= {"Concise", "Honest", "Polite"}  # "Overall Helpful" is not used, as SALMON
