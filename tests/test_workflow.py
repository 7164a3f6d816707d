"""The workflow end to end on tests/smoke.yaml, dry runs, and partial rebuilds after a change."""

from __future__ import annotations

import ast
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from helpers import REPO, planned_jobs, planned_outputs, snakemake, write_config

from salmon_wf.data.jsonl import read_jsonl
from salmon_wf.data.pairs_file import read_pairs_file
from salmon_wf.data.scores_file import read_scores_file
from salmon_wf.stages.aggregate.tables import PAIR_SCHEMA

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def done_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("workflow")
    write_config(workdir)
    snakemake(workdir, "--cores", "2")
    return workdir


def test_every_output_has_the_right_counts_and_schema(done_run: Path) -> None:
    results = done_run / "results"
    summary = json.loads((results / "prompts.summary.json").read_text())
    prompts = list(read_jsonl(results / "prompts.jsonl"))
    assert len(prompts) == summary["n_prompts"] > 20
    assert sum(summary["dropped"].values()) >= 5  # the sample's deliberate bad cases
    ids = [p["id"] for p in prompts]
    runs = {}
    for run in ("response0", "response1"):
        records = list(read_jsonl(results / "responses" / f"{run}.jsonl"))
        assert [r["id"] for r in records] == ids
        assert all(set(r) >= {"generation", "response", "finish_reason"} for r in records)
        runs[run] = records
    assert [r["generation"] for r in runs["response0"]] != [
        r["generation"] for r in runs["response1"]
    ]
    principles = json.loads((REPO / "src/salmon_wf/resources/principles.json").read_text())
    pairs = list(read_jsonl(results / "pairs.jsonl"))
    pair_counts = json.loads((results / "pairs.summary.json").read_text())
    assert pair_counts["pairs"] == len(pairs)
    assert len(pairs) + pair_counts["too_short"] + pair_counts["skipped_generation"] == len(ids)
    # The aggregation's pairs: the same records, in order, as Arrow columns (rule pairs_table).
    assert read_pairs_file(results / "pairs.arrow", PAIR_SCHEMA).to_pylist() == pairs
    judgments = list(read_jsonl(results / "judgments.jsonl"))
    judged = sorted({j["id"] for j in judgments}, key=ids.index)
    assert judged == [p["id"] for p in pairs]  # every pair judged, in prompt order
    assert len(judgments) == len(judged) * len(principles) and len(judged) > 10
    for j in judgments:
        s12, s21 = j["relative_score"]
        assert j["preference"] == (1 if s12 > 0 and s21 > 0 else 2 if s12 < 0 and s21 < 0 else 0)
    # The aggregation's input: the same judgments, in order, as Arrow columns.
    score_ids, dims, scores = read_scores_file(results / "judgments.scores.arrow")
    assert score_ids.to_pylist() == [j["id"] for j in judgments]
    assert dims.to_pylist() == [j["dimension"] for j in judgments]
    assert scores.tolist() == [j["relative_score"] for j in judgments]
    records = json.loads((results / "preferences.json").read_text())
    assert records == list(read_jsonl(results / "preferences.jsonl"))
    assert records
    for record in records:
        dims = ast.literal_eval(record["dimensions"])
        negs = ast.literal_eval(record["negative_definitions"])
        assert isinstance(dims, tuple) and all(isinstance(d, str) for d in dims)
        assert isinstance(negs, tuple) and all(type(n) is int for n in negs)
        assert len(dims) == len(negs) and record["preference"] in (1, 2)
        scores = ast.literal_eval(record["dimension_scores"])
        assert isinstance(scores, tuple) and len(scores) == len(dims)
        assert type(record["flip"]) is bool and type(record["rule_flag"]) is bool
        assert len(record["lang"]) == 3 and type(record["swapped"]) is bool
    stats = json.loads((results / "preferences.stats.json").read_text())
    assert stats["pairs"] == len(pairs)
    for reason, count in pair_counts["dropped"].items():  # the pair stage's reasons, kept
        assert stats["pairs_dropped"][reason] == count
    codes = [json.loads(line) for line in (results / "pairs.languages.jsonl").open()]
    assert [c["id"] for c in codes] == [p["id"] for p in pairs]
    assert all(list(c) == ["id", "instruction", "output_1", "output_2"] for c in codes)
    for rule in ("clean_prompts", "pair_responses", "languages", "pairs_table", "aggregate"):
        assert (done_run / "logs" / f"{rule}.log").exists()
        assert (done_run / "benchmarks" / f"{rule}.tsv").exists()


def test_every_result_is_readable_as_the_umask_allows(done_run: Path) -> None:
    """Every stage's files (sample and judge shards too) get 0o666 less the umask, not 0600."""
    umask = os.umask(0o022)
    os.umask(umask)
    files = [p for p in (done_run / "results").rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"prompts.jsonl", "pairs.jsonl", "judgments.jsonl", "preferences.json"} <= names
    assert {"shard-0-of-2.jsonl", "judgments.summary.json", "preferences.stats.json"} <= names
    assert {"judgments.scores.arrow", "pairs.arrow"} <= names
    modes = {p.relative_to(done_run).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in files}
    assert modes == dict.fromkeys(modes, 0o666 & ~umask)


FINAL = ["prompts.jsonl", "responses/response0.jsonl", "responses/response1.jsonl",
         "pairs.jsonl", "judgments.jsonl", "preferences.json", "preferences.jsonl",
         "preferences.stats.json"]  # fmt: skip


def test_kill_9_of_everything_mid_sampling_then_unlock_and_rerun_gives_the_same_bytes(
    done_run: Path, tmp_path: Path
) -> None:
    """A user's kill -9 of Snakemake and its jobs mid-sampling, `--unlock`, rerun: the final
    outputs are the uninterrupted run's bytes, and the rerun resumes the flushed prompts."""
    write_config(tmp_path)
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")]
    command += ["--directory", str(tmp_path), "--configfile", str(tmp_path / "config.yaml")]
    run = subprocess.Popen(
        [*command, "--cores", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the kill takes its jobs too
    )
    shards = tmp_path / "results" / "responses"
    deadline = time.monotonic() + 300
    while sum(p.read_text().count("\n") for p in shards.rglob("*.partial")) < 3:
        assert run.poll() is None and time.monotonic() < deadline, "sampling never started"
        time.sleep(0.05)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    flushed = sum(p.read_text().count("\n") for p in shards.rglob("*.partial"))
    snakemake(tmp_path, "--unlock")
    snakemake(tmp_path, "--cores", "2")
    for name in FINAL:
        assert (tmp_path / "results" / name).read_bytes() == (
            done_run / "results" / name
        ).read_bytes(), name
    logs = "".join(p.read_text() for p in (tmp_path / "logs" / "sample").rglob("*.log"))
    resumed = sum(int(n) for n in re.findall(r"\((\d+) resumed\)", logs))
    assert resumed >= flushed >= 3  # the prompts flushed before the kill were not redone


def test_dry_run_after_a_complete_run_has_nothing_to_do(done_run: Path) -> None:
    write_config(done_run)
    assert planned_jobs(done_run) == Counter()


def test_rulegraph_renders_every_stage(done_run: Path) -> None:
    graph = snakemake(done_run, "--rulegraph")
    stages = ("clean_prompts", "sample_shard", "gather_responses", "judge_shard", "languages")
    for rule in (*stages, "pairs_table", "aggregate"):
        assert rule in graph
    assert "ledger" in graph
    assert graph.lstrip().startswith("digraph") or "digraph" in graph


def test_sampling_parameter_of_one_run_reruns_that_run_judge_and_aggregate(done_run: Path):
    write_config(done_run, **{"sampling.runs.response0.temperature": 0.5})
    assert planned_jobs(done_run) == Counter(
        sample_shard=2,
        gather_responses=1,
        fingerprint=3,  # response0's, the pairs' and the judge's stamps
        pair_responses=1,
        languages=1,  # the new pairs' texts
        pairs_table=1,  # and their Arrow copy
        judge_shard=2,
        gather_judgments=1,
        aggregate=1,
        ledger=1,
        report_figures=1,
    )
    outputs = " ".join(planned_outputs(done_run))
    assert "response0/shard-0-of-2" in outputs and "response1" not in outputs.replace(
        "results/responses/response0.jsonl", ""
    ).replace("response1.jsonl", "")


def test_principle_file_change_reruns_judge_and_aggregate_only(done_run: Path, tmp_path: Path):
    principles = tmp_path / "principles.json"
    entries = json.loads((REPO / "src/salmon_wf/resources/principles.json").read_text())
    entries[0]["definition"] += " Edited."
    principles.write_text(json.dumps(entries))
    write_config(done_run, **{"judge.principles": str(principles)})
    expected = Counter(fingerprint=1, judge_shard=2, gather_judgments=1, aggregate=1, ledger=1)
    expected["report_figures"] = 1
    assert planned_jobs(done_run) == expected


def test_judge_mp_change_reruns_judging_and_after_never_sampling(done_run: Path) -> None:
    """The judge's own group shape reaches the judge shards only (SALMON judges at MP 8)."""
    write_config(done_run, **{"judge.mp": 2})
    expected = Counter(fingerprint=1, judge_shard=2, gather_judgments=1, aggregate=1, ledger=1)
    expected["report_figures"] = 1
    assert planned_jobs(done_run) == expected  # the judge's stamp: no sample shard
    write_config(done_run, **{"judge.mp": 1})  # the value it followed: nothing changes
    assert planned_jobs(done_run) == Counter()


def test_model_mp_change_resamples_and_everything_after_reads_the_new_responses(done_run: Path):
    """model.mp rewrites the checkpoint and resamples (another MP can flip a near-tie token), so
    the pairs and the judge follow, whether judge.mp follows model.mp or is pinned."""
    sampling = Counter(prepare_model=1, sample_shard=4, gather_responses=2, pair_responses=1)
    sampling["languages"] = sampling["pairs_table"] = 1  # of the new pairs
    write_config(done_run, **{"model.mp": 2})
    judging = Counter(judge_shard=2, gather_judgments=1, aggregate=1, ledger=1, report_figures=1)
    # the stamps of both runs, the pairs' and the judge's (its shape follows model.mp)
    assert planned_jobs(done_run) == sampling + judging + Counter(fingerprint=4)
    write_config(done_run, **{"model.mp": 2, "judge.mp": 1})
    assert planned_jobs(done_run) == sampling + judging + Counter(fingerprint=3)


def test_aggregation_parameter_reruns_aggregate_only(done_run: Path) -> None:
    """Not the language identification: it depends on the texts and langid settings only."""
    for change in ({"aggregate.seed": 7}, {"aggregate.noise": 0.5, "aggregate.passes": 2}):
        write_config(done_run, **change)
        assert planned_jobs(done_run) == Counter(aggregate=1, ledger=1, report_figures=1)


def test_langid_setting_reruns_languages_and_aggregate(done_run: Path) -> None:
    write_config(done_run, **{"aggregate.langid_max_chars": 60})
    expected = Counter(languages=1, aggregate=1, ledger=1, report_figures=1)
    assert planned_jobs(done_run) == expected


def test_shard_count_of_one_run_reruns_only_its_sampling_with_same_bytes(done_run: Path):
    before = (done_run / "results/responses/response1.jsonl").read_bytes()
    judgments = (done_run / "results/judgments.jsonl").stat().st_mtime_ns
    write_config(done_run, **{"sampling.runs.response1.shards": 3})
    assert planned_jobs(done_run) == Counter(sample_shard=3, gather_responses=1)
    snakemake(done_run, "--cores", "2")
    assert (done_run / "results/responses/response1.jsonl").read_bytes() == before
    assert (done_run / "results/judgments.jsonl").stat().st_mtime_ns == judgments
    write_config(done_run, **{"sampling.runs.response1.shards": 3})
    assert planned_jobs(done_run) == Counter()
