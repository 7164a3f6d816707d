"""`salmon-wf status`: shard states, counts and ETA from the files, on made-up and killed runs."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO, write_config

from salmon_wf.status import count_lines, slice_size, status_lines


def lines_of(path: Path, n: int, torn: bool = False) -> None:
    text = "".join(json.dumps({"id": f"p{k}"}) + "\n" for k in range(n))
    path.write_text(text + ('{"id": "to' if torn else ""))


def test_states_counts_and_eta_from_the_partial_files_rate(tmp_path: Path) -> None:
    results = tmp_path / "results"
    run = results / "responses" / "response0"
    run.mkdir(parents=True)
    lines_of(results / "prompts.jsonl", 10)
    lines_of(run / "shard-0-of-3.jsonl", 4)  # done: prompts[0::3] = 4
    partial = run / "shard-1-of-3.jsonl.partial"
    lines_of(partial, 2, torn=True)  # the torn last line is not a record
    stamp = run / "shard-1-of-3.jsonl.partial.json"
    stamp.write_text("{}\n")
    now = 1_000_000.0
    os.utime(stamp, (now - 100, now - 100))
    os.utime(partial, (now - 20, now - 20))  # 2 records in 80 s: 0.025/s, 1 left: 40 s
    lines = status_lines(results, now=now)
    assert lines == [
        f"results: {results}",
        "prompts: 10",
        "sample response0: 3 shards: 1 done, 1 partial, 1 not started; 6/10 prompts",
        "  shard-0-of-3  done         4/4 prompts",
        "  shard-1-of-3  partial      2/3 prompts  (0.03/s, eta 40s, last write 20s ago)",
        "  shard-2-of-3  not started  0/3 prompts",
        "judge: not started",
        "languages: not started",
        "aggregate: not started",
    ]


def test_judge_counts_pairs_not_lines_and_no_folder(tmp_path: Path) -> None:
    results = tmp_path / "results"
    (results / "judgments").mkdir(parents=True)
    lines_of(results / "pairs.jsonl", 5)
    records = [{"id": f"p{k}", "dimension": d} for k in (0, 2) for d in ("a", "b")]
    partial = results / "judgments" / "shard-0-of-2.jsonl.partial"
    partial.write_text("".join(json.dumps(r) + "\n" for r in records))
    lines = status_lines(results, now=time.time())
    judge = lines.index(next(x for x in lines if x.startswith("judge")))
    assert lines[judge] == "judge: 2 shards: 0 done, 1 partial, 1 not started; 2/5 pairs"
    assert lines[judge + 1].startswith("  shard-0-of-2  partial      2/3 pairs  (last write")
    assert lines[judge + 2] == "  shard-1-of-2  not started  0/2 pairs"
    assert status_lines(tmp_path / "none") == [
        f"{tmp_path / 'none'}: no results folder (the workflow has not started)"
    ]


def test_calibration_shards_are_listed_once_the_calibration_has_started(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    assert not any(x.startswith("calibrate") for x in status_lines(results))
    judgments = results / "calibration" / "judgments"
    judgments.mkdir(parents=True)
    lines_of(results / "calibration" / "pairs.jsonl", 3)
    records = [{"id": "p1", "dimension": d} for d in ("a", "b")]
    (judgments / "shard-1-of-2.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    lines = status_lines(results, now=time.time())
    assert lines[-4:] == [
        "calibrate judge: 2 shards: 1 done, 0 partial, 1 not started; 1/3 pairs",
        "  shard-0-of-2  not started  0/2 pairs",
        "  shard-1-of-2  done         1/1 pairs",
        "calibrate: not finished",
    ]


@pytest.mark.slow
def test_status_of_a_killed_smoke_run_matches_its_files(tmp_path: Path) -> None:
    # one prompt per batch and longer answers: the shard job runs long enough to be caught
    write_config(tmp_path, **{"sampling.defaults.batch_size": 1})
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")]
    command += ["--directory", str(tmp_path), "--configfile", str(tmp_path / "config.yaml")]
    command += ["--cores", "1"]
    log = (tmp_path / "snakemake.out").open("w")
    job = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    responses = tmp_path / "results" / "responses"
    deadline = time.monotonic() + 300
    caught = None
    while time.monotonic() < deadline and job.poll() is None and caught is None:
        for partial in responses.glob("*/shard-*.jsonl.partial"):
            if partial.exists() and count_lines(partial) >= 2:
                caught = partial
        time.sleep(0.02)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    assert caught is not None, (tmp_path / "snakemake.out").read_text()[-2000:]
    results = tmp_path / "results"
    done = subprocess.run(
        [sys.executable, "-m", "salmon_wf.cli", "status", "--results", str(results)],
        capture_output=True,
        text=True,
        check=True,
    )
    out = done.stdout.splitlines()
    n_prompts = count_lines(results / "prompts.jsonl")
    assert out[1] == f"prompts: {n_prompts}"
    run = caught.parent.name
    header = next(x for x in out if x.startswith(f"sample {run}:"))
    assert re.match(rf"sample {run}: 2 shards: \d done, [12] partial, \d not started; ", header)
    block = out[out.index(header) + 1 : out.index(header) + 3]
    for i, line in enumerate(block):
        assert line.startswith(f"  shard-{i}-of-2  ")
        output = caught.parent / f"shard-{i}-of-2.jsonl"
        partial = output.with_name(output.name + ".partial")
        total = slice_size(n_prompts, i, 2)
        if output.exists():
            assert f"done         {count_lines(output)}/{total} prompts" in line
        elif partial.exists():
            records = count_lines(partial)
            assert f"partial      {records}/{total} prompts  (" in line
            assert "/s, eta " in line and "last write" in line
        else:
            assert line.endswith(f"not started  0/{total} prompts")
    assert out[-3:] == ["judge: not started", "languages: not started", "aggregate: not started"]
