"""Kills and preemption: a stage killed at a chosen point, then rerun, gives the same bytes.

Each stage runs as its own process (`python -m salmon_wf.cli ...`) on the tiny model; the kill
is SIGKILL at a named point (SALMON_WF_TEST_KILL_AT, src/salmon_wf/killpoint.py) or a SIGTERM
sent from here. After the rerun every output is compared byte for byte with an uninterrupted
run, and the rerun's log says how many records it resumed: that many were not computed again.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from salmon_wf.cli import main
from salmon_wf.model.parallel import teardown_model_parallel

RESOURCES = Path(__file__).resolve().parents[1] / "src" / "salmon_wf" / "resources"
PRINCIPLES = RESOURCES / "principles.json"
N_PRINCIPLES = len(json.loads(PRINCIPLES.read_text()))
PROMPTS = 10
KILL = "SALMON_WF_TEST_KILL_AT"


def sample_argv(model: Path, d: Path, run: int, fingerprint: str = "fp", **changes: str) -> list:
    flags = {"--seed": str(3 + run), "--max-new-tokens": "12", "--batch-size": "3"} | changes
    argv = ["sample", "--model", str(model), "--prompts", str(d / "prompts.jsonl")]
    argv += ["--output", str(d / f"r{run}.jsonl"), "--temperature", "0.9"]
    argv += ["--fingerprint", f"{fingerprint}-{run}", "--stop", "###"]
    return argv + [x for kv in flags.items() for x in kv]


def gather_argv(d: Path, run: int) -> list[str]:
    out = ["--output", str(d / f"responses{run}.jsonl")]
    return [
        "gather",
        "--prompts",
        str(d / "prompts.jsonl"),
        "--shards",
        str(d / f"r{run}.jsonl"),
        *out,
    ]


def judge_argv(model: Path, d: Path) -> list[str]:
    argv = ["judge", "--model", str(model), "--pairs", str(d / "pairs.jsonl")]
    argv += ["--principles", str(PRINCIPLES), "--template", str(RESOURCES / "judge_template.txt")]
    argv += ["--output", str(d / "j.jsonl"), "--summary", str(d / "j.summary.json")]
    return [*argv, "--fingerprint", "fj", "--max-rows", "5"]


def aggregate_argv(d: Path) -> list[str]:
    argv = ["aggregate", "--pairs", str(d / "pairs.jsonl"), "--judgments", str(d / "j.jsonl")]
    argv += ["--principles", str(PRINCIPLES), "--output", str(d / "preferences.json")]
    argv += ["--output-jsonl", str(d / "preferences.jsonl"), "--stats", str(d / "stats.json")]
    return [*argv, "--workers", "1", "--passes", "2"]


def in_process(argv: list[str]) -> None:
    try:
        assert main(argv) == 0
    finally:
        teardown_model_parallel()


def stage(argv: list[str], kill: str | None = None) -> subprocess.CompletedProcess[str]:
    """The stage as its own process; SIGKILLed at `kill` (<point>:<n>) when given."""
    env = {k: v for k, v in os.environ.items() if k != KILL}
    if kill is not None:
        env[KILL] = kill
    command = [sys.executable, "-m", "salmon_wf.cli", *argv]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=180)


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True) if path.exists() else []


@pytest.fixture(scope="module")
def reference(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every stage once, uninterrupted: the bytes each killed-and-rerun stage must give."""
    d = tmp_path_factory.mktemp("reference")
    with (d / "prompts.jsonl").open("w") as f:
        for i in range(PROMPTS):
            f.write(json.dumps({"id": f"p{i:02d}", "instruction": f"Say {i} things."}) + "\n")
    for run in (0, 1):
        in_process(sample_argv(tiny_dir, d, run))
        in_process(gather_argv(d, run))
    pair = ["pair", "--responses", str(d / "responses0.jsonl"), str(d / "responses1.jsonl")]
    in_process([*pair, "--output", str(d / "pairs.jsonl"), "--min-chars", "0"])
    in_process(judge_argv(tiny_dir, d))
    in_process(aggregate_argv(d))
    assert len(lines(d / "pairs.jsonl")) >= 5 and len(lines(d / "preferences.jsonl")) > 0
    return d


def inputs_of(reference: Path, tmp: Path, *names: str) -> Path:
    for name in names:
        shutil.copy(reference / name, tmp / name)
    return tmp


def assert_same(reference: Path, tmp: Path, *names: str) -> None:
    for name in names:
        assert (tmp / name).read_bytes() == (reference / name).read_bytes(), name


# point, complete records left in the partial file (all of them: 10)
SAMPLE_POINTS = [
    ("shard.start:1", 0),  # partial file written, no record yet
    ("shard.append:1", 1),  # right after the first flush
    ("shard.append:4", 4),  # mid-batch: other prompts half decoded
    ("shard.append:10", 10),  # every record flushed, the shard not yet finished
    ("shard.rename:1", 10),  # the ordered shard written, the partial file not yet removed
    ("atomic.rename:1", 10),  # the ordered shard fsynced under its temporary name
]


@pytest.mark.parametrize(("point", "left"), SAMPLE_POINTS)
def test_sample_shard_killed_resumes_to_the_same_bytes(
    tiny_dir: Path, reference: Path, tmp_path: Path, point: str, left: int
) -> None:
    d = inputs_of(reference, tmp_path, "prompts.jsonl")
    argv = sample_argv(tiny_dir, d, 0)
    killed = stage(argv, kill=point)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    partial = d / "r0.jsonl.partial"
    assert len(lines(partial)) == left and all(x.endswith("\n") for x in lines(partial))
    rerun = stage(argv)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"{PROMPTS} prompts ({left} resumed)" in rerun.stdout  # the rest only was sampled
    assert re.search(rf"'prompts': {PROMPTS - left}\b", rerun.stdout)  # the sampler's own count
    assert_same(reference, d, "r0.jsonl")  # in prompt order, resumed or not
    assert not partial.exists()
    in_process(gather_argv(d, 0))
    assert_same(reference, d, "responses0.jsonl")


def test_uninterrupted_shard_is_in_prompt_order(reference: Path) -> None:
    ids = [json.loads(x)["id"] for x in lines(reference / "r0.jsonl")]
    assert ids == [f"p{i:02d}" for i in range(PROMPTS)]


JUDGE_POINTS = ["shard.start:1", "shard.append:2", "shard.append:-1", "shard.rename:1"]
JUDGE_POINTS += ["atomic.rename:1", "atomic.rename:2"]  # the summary's, then the shard's


@pytest.mark.parametrize("point", JUDGE_POINTS)
def test_judge_shard_killed_resumes_to_the_same_bytes(
    tiny_dir: Path, reference: Path, tmp_path: Path, point: str
) -> None:
    d = inputs_of(reference, tmp_path, "pairs.jsonl")
    pairs = len(lines(d / "pairs.jsonl"))
    name, n = point.split(":")
    point = f"{name}:{pairs}" if n == "-1" else point  # -1: right after the last pair
    left = {"shard.start": 0, "shard.append": min(int(point.split(":")[1]), pairs)}.get(name, pairs)
    argv = judge_argv(tiny_dir, d)
    killed = stage(argv, kill=point)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert len(lines(d / "j.jsonl.partial")) == left * N_PRINCIPLES
    rerun = stage(argv)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"'resumed': {left}," in rerun.stdout
    scored = (pairs - left) * 2 * N_PRINCIPLES  # the scorer's own count of prompts run
    assert re.search(rf"'prompts': {scored}\b", rerun.stdout)
    summary = json.loads((d / "j.summary.json").read_text())
    assert summary["resumed"] == left and summary["shard_pairs"] == pairs
    assert_same(reference, d, "j.jsonl")


def test_gather_killed_while_writing_leaves_no_output_and_reruns_the_same(
    reference: Path, tmp_path: Path
) -> None:
    d = inputs_of(reference, tmp_path, "prompts.jsonl", "r0.jsonl")
    killed = stage(gather_argv(d, 0), kill="atomic.rename:1")
    assert killed.returncode == -signal.SIGKILL
    assert not (d / "responses0.jsonl").exists()  # a half output never has the name
    in_process(gather_argv(d, 0))
    assert_same(reference, d, "responses0.jsonl")


@pytest.mark.parametrize("point", ["aggregate.chunk:1", "aggregate.chunk:2", "atomic.rename:1",
                                   "atomic.rename:2", "atomic.rename:3"])  # fmt: skip
def test_aggregation_killed_reruns_to_the_same_bytes(
    reference: Path, tmp_path: Path, point: str
) -> None:
    names = ("preferences.json", "preferences.jsonl", "stats.json")
    d = inputs_of(reference, tmp_path, "pairs.jsonl", "j.jsonl", *names)
    for name in names:  # an older aggregation's outputs: kept whole until replaced whole
        (d / name).write_text("OLD\n")
    killed = stage(aggregate_argv(d), kill=point)
    assert killed.returncode == -signal.SIGKILL
    replaced = {"atomic.rename:2": 1, "atomic.rename:3": 2}.get(point, 0)  # jsonl, json, stats
    order = ("preferences.jsonl", "preferences.json", "stats.json")
    for i, name in enumerate(order):
        new = (d / name).read_bytes() == (reference / name).read_bytes()
        assert new == (i < replaced) and (new or (d / name).read_text() == "OLD\n"), name
    in_process(aggregate_argv(d))
    assert_same(reference, d, *names)


def test_a_torn_last_line_is_dropped_and_redone(
    tiny_dir: Path, reference: Path, tmp_path: Path
) -> None:
    d = inputs_of(reference, tmp_path, "prompts.jsonl", "pairs.jsonl")
    argv = sample_argv(tiny_dir, d, 0)
    assert stage(argv, kill="shard.append:5").returncode == -signal.SIGKILL
    partial = d / "r0.jsonl.partial"
    with partial.open("a") as f:
        f.write('{"id": "p09", "generation": "TORN')  # a kill inside a write
    rerun = stage(argv)
    assert "dropped a torn last line (redone)" in rerun.stderr
    assert f"({5} resumed)" in rerun.stdout
    assert_same(reference, d, "r0.jsonl")
    # judge: the last pair's group torn inside its last line: that pair is judged again
    argv = judge_argv(tiny_dir, d)
    assert stage(argv, kill="shard.append:3").returncode == -signal.SIGKILL
    partial = d / "j.jsonl.partial"
    text = partial.read_text()
    partial.write_text(text[: len(text) - 10])
    rerun = stage(argv)
    assert "dropped a torn last line (redone)" in rerun.stderr and "'resumed': 2," in rerun.stdout
    assert_same(reference, d, "j.jsonl")


def test_a_partial_file_of_another_setting_is_not_reused(
    tiny_dir: Path, reference: Path, tmp_path: Path
) -> None:
    d = inputs_of(reference, tmp_path, "prompts.jsonl")
    killed = stage(sample_argv(tiny_dir, d, 0, "old"), kill="shard.append:5")
    assert killed.returncode == -signal.SIGKILL
    stale = lines(d / "r0.jsonl.partial")
    assert len(stale) == 5
    # another seed (the workflow's fingerprint names the model, tokenizer and settings)
    rerun = stage(sample_argv(tiny_dir, d, 0, "new", **{"--seed": "11"}))
    assert "not reused: its stamp names fingerprint 'old-0', this job is 'new-0'" in rerun.stderr
    assert f"{PROMPTS} prompts (0 resumed)" in rerun.stdout
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    inputs_of(reference, fresh, "prompts.jsonl")
    in_process(sample_argv(tiny_dir, fresh, 0, "new", **{"--seed": "11"}))
    assert (d / "r0.jsonl").read_bytes() == (fresh / "r0.jsonl").read_bytes()
    assert not set(stale) & set(lines(d / "r0.jsonl"))  # none of the old records mixed in


def slow_sample(model: Path, d: Path) -> list[str]:
    """A shard slow enough to be signalled mid-run: long generations, one prompt at a time."""
    changes = {"--max-new-tokens": "200", "--batch-size": "1", "--stop": "<never>"}
    return [*sample_argv(model, d, 0, "slow", **changes), "--cut-at", "###"]


def terminate_after(command: list[str], partial: Path, records: int) -> subprocess.Popen[str]:
    """Start `command`, SIGTERM it once `partial` holds `records` lines; it has then ended."""
    run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len(lines(partial)) < records:
        assert run.poll() is None and time.monotonic() < deadline, run.communicate()[1][-2000:]
        time.sleep(0.05)
    run.send_signal(signal.SIGTERM)
    run.wait(timeout=60)
    return run


@pytest.mark.slow
@pytest.mark.parametrize("ranks", [1, 2])
def test_sigterm_flushes_the_partial_file_and_the_rerun_resumes(
    tiny_dir: Path, tiny_dir_mp2: Path, reference: Path, tmp_path: Path, ranks: int
) -> None:
    """SIGTERM (SLURM preemption, scancel, requeue) to the job, or to torchrun, which forwards
    it to every rank: the shard stops between records, exits non-zero, the rerun resumes."""
    model = tiny_dir if ranks == 1 else tiny_dir_mp2
    whole = tmp_path / "whole"
    whole.mkdir()
    inputs_of(reference, whole, "prompts.jsonl")
    d = inputs_of(reference, tmp_path, "prompts.jsonl")
    argv = slow_sample(model, d)
    launch = [sys.executable, "-m", "salmon_wf.launch", "--ranks-per-node", str(ranks), "--"]
    run = terminate_after([*launch, *argv], d / "r0.jsonl.partial", 2)
    err = run.stderr.read()
    assert run.returncode != 0, err[-2000:]
    stopped = re.search(r"stopped by SIGTERM: (\d+) records in .* \(0 resumed, (\d+) new\)", err)
    assert stopped is not None, err[-2000:]
    left = lines(d / "r0.jsonl.partial")
    assert len(left) == int(stopped.group(1)) >= 2 and all(x.endswith("\n") for x in left)
    assert "Traceback" not in err
    rerun = subprocess.run([*launch, *argv], capture_output=True, text=True, timeout=180)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"{PROMPTS} prompts ({len(left)} resumed)" in rerun.stdout
    done = subprocess.run([*launch, *slow_sample(model, whole)], capture_output=True, timeout=180)
    assert done.returncode == 0
    assert (d / "r0.jsonl").read_bytes() == (whole / "r0.jsonl").read_bytes()


@pytest.mark.slow
def test_a_rank_whose_peer_dies_ends_in_one_line_and_the_rerun_resumes(
    tiny_dir_mp2: Path, reference: Path, tmp_path: Path
) -> None:
    """Two torchrun agents, one per "node" as the multi-node launcher starts them; node 1's rank
    is SIGKILLed after its third record. The surviving rank fails in one line naming the broken
    group (no traceback), keeps its partial file, and the rerun resumes to the same bytes."""
    d = inputs_of(reference, tmp_path, "prompts.jsonl")
    one_per_step = {"--batch-size": "1"}  # one record per step: the kill lands mid-shard
    argv = sample_argv(tiny_dir_mp2, d, 0, **one_per_step)
    port = str(29_500 + os.getpid() % 1000)
    env = {k: v for k, v in os.environ.items() if k != KILL} | {"SALMON_WF_DIST_TIMEOUT": "60"}
    agents = []
    for node in (0, 1):
        command = [sys.executable, "-m", "salmon_wf.torchrun", "--nnodes=2"]  # as launch does
        command += ["--nproc-per-node=1", f"--node-rank={node}", "--master-addr=127.0.0.1"]
        command += [f"--master-port={port}", "-m", "salmon_wf.cli", *argv]
        node_env = env | ({KILL: "shard.append:3"} if node == 1 else {})
        agents.append(subprocess.Popen(command, env=node_env, stderr=subprocess.PIPE, text=True))
    errs = [agent.communicate(timeout=240)[1] for agent in agents]
    assert agents[0].returncode != 0 and agents[1].returncode != 0, errs[0][-2000:]
    ours = [x for x in errs[0].splitlines() if x.startswith("salmon-wf sample: error: ")]
    assert len(ours) == 1, errs[0][-3000:]
    assert ours[0].startswith("salmon-wf sample: error: rank 0 of 2 lost its process group (")
    assert ours[0].endswith("a rerun resumes from them")
    assert "Traceback" not in errs[0], errs[0][-3000:]
    left = lines(d / "r0.jsonl.partial")
    assert len(left) >= 3 and all(x.endswith("\n") for x in left)
    launch = [sys.executable, "-m", "salmon_wf.launch", "--ranks-per-node", "2", "--"]
    rerun = subprocess.run([*launch, *argv], capture_output=True, text=True, timeout=180)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"{PROMPTS} prompts ({len(left)} resumed)" in rerun.stdout
    whole = tmp_path / "whole"
    whole.mkdir()
    inputs_of(reference, whole, "prompts.jsonl")
    fresh = sample_argv(tiny_dir_mp2, whole, 0, **one_per_step)
    done = subprocess.run([*launch, *fresh], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (d / "r0.jsonl").read_bytes() == (whole / "r0.jsonl").read_bytes()
