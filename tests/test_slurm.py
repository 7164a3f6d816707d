"""The workflow through `--profile profiles/slurm` on a live one-node SLURM cluster.

The cluster (scripts/local-slurm.sh: slurmctld + slurmd + munge on loopback, 2 fake GPUs) is
started for this module and stopped after it; the module skips, with the reason, where it
cannot start (not root, no apt-get, no Debian packages). .ci/run installs and starts it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import REPO, write_config

from salmon_wf.data.jsonl import read_jsonl

SCRIPT = REPO / "scripts" / "local-slurm.sh"
OUTPUTS = ["prompts.jsonl", "responses/response0.jsonl", "responses/response1.jsonl",
           "pairs.jsonl", "judgments.jsonl", "preferences.json", "preferences.jsonl"]  # fmt: skip
# Small jobs for a 2-CPU node: shard jobs ask for the GPU the config implies (gres gpu:1).
CLUSTER = {
    "model.device": "cpu",
    "slurm.cheap_rules_local": True,
    "slurm.gpu_jobs": {"partition": "gpu", "runtime": 10, "mem_mb": 1500, "cpus_per_task": 1},
    "slurm.cpu_jobs": {"partition": "cpu", "runtime": 10, "mem_mb": 1500, "cpus_per_task": 1},
}

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    """Start the cluster unless it runs already (.ci/run starts it); stop only what we started."""
    running = subprocess.run(["bash", str(SCRIPT), "status"], capture_output=True).returncode == 0
    if not running:
        started = subprocess.run(["bash", str(SCRIPT), "start"], capture_output=True, text=True)
        if started.returncode != 0:
            reason = (started.stdout + started.stderr).strip()[-500:]
            pytest.skip(f"local SLURM cluster cannot start here: {reason}")
    yield
    if not running:
        subprocess.run(["bash", str(SCRIPT), "stop"], capture_output=True, text=True)


def run_profile(workdir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")]
    command += ["--directory", str(workdir), "--configfile", str(workdir / "config.yaml")]
    command += ["--profile", str(REPO / "profiles" / "slurm")]
    # The local cluster has no accounting database: poll with squeue, and poll soon.
    command += [
        "--slurm-status-command",
        "squeue",
        "--slurm-init-seconds-before-status-checks",
        "1",
    ]
    return subprocess.run([*command, *extra], capture_output=True, text=True, timeout=900)


def local_run(workdir: Path, *targets: str) -> None:
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")]
    command += ["--directory", str(workdir), "--configfile", str(workdir / "config.yaml")]
    done = subprocess.run([*command, "--cores", "2", *targets], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]


def jobs_of_cluster() -> list[str]:
    """`scontrol show job` records (completed jobs stay listed for MinJobAge=300 s)."""
    out = subprocess.run(["scontrol", "show", "job", "-o"], capture_output=True, text=True)
    return [line for line in out.stdout.splitlines() if line.startswith("JobId=")]


def test_slurm_run_equals_local_run_and_requests_gpus(cluster: None, tmp_path: Path) -> None:
    on_slurm, local = tmp_path / "slurm", tmp_path / "local"
    for workdir in (on_slurm, local):
        workdir.mkdir()
        write_config(workdir, **CLUSTER)
    done = run_profile(on_slurm)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    local_run(local)
    for name in OUTPUTS:
        assert (on_slurm / "results" / name).read_bytes() == (local / "results" / name).read_bytes()
    shard_jobs = [j for j in jobs_of_cluster() if "sample_shard" in j or "judge_shard" in j]
    assert len(shard_jobs) >= 6  # 2 + 2 sample shards, 2 judge shards
    for job in shard_jobs:
        assert re.search(r"TresPerNode=gres:gpu:1\b", job), job
        assert "Partition=gpu" in job
    logs = "".join(p.read_text() for p in (on_slurm / "logs" / "sample").rglob("*.log"))
    assert "launch: srun" in logs and "salmon_wf.torchrun" in logs  # srun + torchrun path


def test_cancelled_shard_is_retried_and_resumes_without_redoing_prompts(
    cluster: None, tmp_path: Path
) -> None:
    """scancel a shard mid-run: Snakemake retries it; the retry keeps the finished prompts."""
    slow = {"sampling.defaults.max_new_tokens": 160, "sampling.defaults.batch_size": 1}
    slow |= {"sampling.defaults.stop": ["<never>"], "sampling.runs.response0.shards": 1}
    write_config(tmp_path, **CLUSTER, **slow)
    target = "results/responses/response0.jsonl"
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")]
    command += ["--directory", str(tmp_path), "--configfile", str(tmp_path / "config.yaml")]
    command += ["--profile", str(REPO / "profiles" / "slurm"), "--retries", "1", target]
    command += [
        "--slurm-status-command",
        "squeue",
        "--slurm-init-seconds-before-status-checks",
        "1",
    ]
    run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    partial = tmp_path / "results/responses/response0/shard-0-of-1.jsonl.partial"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if partial.exists() and partial.read_text().count("\n") >= 3:
            break
        assert run.poll() is None, run.stdout.read()[-3000:]
        time.sleep(0.2)
    else:
        run.kill()
        pytest.fail("the shard never got going")
    subprocess.run(["scancel", "--state=RUNNING", "--partition=gpu"], check=True)
    before = [json.loads(line) for line in partial.read_text().splitlines()[:3]]
    output, _ = run.communicate(timeout=600)
    assert run.returncode == 0, output[-4000:]
    assert "CANCELLED" in output or "Trying to restart" in output
    final = {r["id"]: r for r in read_jsonl(tmp_path / target)}
    assert len(final) == len(list(read_jsonl(tmp_path / "results/prompts.jsonl")))
    for record in before:
        assert final[record["id"]] == record
    log = (tmp_path / "logs/sample/response0/shard-0-of-1.log").read_text()
    resumed = int(re.search(r"\((\d+) resumed\)", log).group(1))
    assert resumed >= 3  # finished prompts were kept, not sampled again


def by_name(workdir: Path, *extra: str, env: dict[str, str] | None = None) -> str:
    """`snakemake --profile slurm` as the README writes it: from the repo root, by name."""
    command = [sys.executable, "-m", "snakemake", "--profile", "slurm"]
    command += ["--directory", str(workdir), "--configfile", str(workdir / "config.yaml")]
    command += ["--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks"]
    done = subprocess.run(
        [*command, "1", *extra], cwd=REPO, capture_output=True, text=True, timeout=900, env=env
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return done.stdout + done.stderr


def test_profile_by_name_from_the_repo_root_leaves_a_users_own_alone(tmp_path: Path) -> None:
    """The repo root's `slurm` link is found first; a user's profile of that name is named."""
    write_config(tmp_path, **CLUSTER)
    out = by_name(tmp_path, "-n")
    assert "Using profile slurm" in out and "salmon-wf: --profile slurm" not in out
    assert "executor: local" not in (REPO / "slurm" / "config.yaml").read_text()
    assert "slurm_partition=gpu" in out and "Shell command:" in out  # profiles/slurm's
    home = tmp_path / "xdg"
    theirs = home / "snakemake" / "slurm"
    theirs.mkdir(parents=True)
    (theirs / "config.yaml").write_text("executor: local\n")
    env = dict(os.environ, XDG_CONFIG_HOME=str(home))
    out = by_name(tmp_path, "-n", env=env)
    assert f"you have a profile of that name, {theirs}" in out
    assert "Shell command:" in out  # the repo's profile (printshellcmds), not theirs, is used
    assert (theirs / "config.yaml").read_text() == "executor: local\n"


def test_profile_by_name_runs_on_the_cluster(cluster: None, tmp_path: Path) -> None:
    write_config(tmp_path, **CLUSTER)
    target = "results/responses/response0.jsonl"
    out = by_name(tmp_path, target)
    assert "Using profile slurm" in out
    assert len(list(read_jsonl(tmp_path / target))) > 20
    workdir = str(tmp_path)
    shards = [j for j in jobs_of_cluster() if "sample_shard" in j and workdir in j]
    assert len(shards) == 2  # response0's two shards ran as SLURM jobs
    assert all("Partition=gpu" in j for j in shards)


@pytest.mark.parametrize("how", ["scancel --signal=TERM", "scontrol requeue"])
def test_preempted_shard_flushes_on_sigterm_and_the_retry_resumes(
    cluster: None, tmp_path: Path, how: str
) -> None:
    """Preemption as SLURM does it: SIGTERM to the job's steps (srun -> torchrun -> the rank),
    or a requeue (SIGTERM, SIGKILL after KillWait, the job queued again). The shard stops
    between records, and the retry (Snakemake's, or SLURM's requeued job) resumes after them."""
    slow = {"sampling.defaults.max_new_tokens": 60, "sampling.defaults.batch_size": 1}
    slow |= {"sampling.defaults.stop": ["<never>"], "sampling.runs.response0.shards": 1}
    local = tmp_path / "local"
    for workdir in (tmp_path, local):
        workdir.mkdir(exist_ok=True)
        write_config(workdir, **CLUSTER, **slow)
    target = "results/responses/response0.jsonl"
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")]
    command += ["--directory", str(tmp_path), "--configfile", str(tmp_path / "config.yaml")]
    command += ["--profile", str(REPO / "profiles" / "slurm"), "--retries", "1", target]
    command += ["--slurm-status-command", "squeue"]
    command += ["--slurm-init-seconds-before-status-checks", "1"]
    run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    partial = tmp_path / "results/responses/response0/shard-0-of-1.jsonl.partial"
    deadline = time.monotonic() + 120
    while not (partial.exists() and partial.read_text().count("\n") >= 3):
        if run.poll() is not None or time.monotonic() > deadline:
            run.kill()
            pytest.fail(f"the shard never got going: {run.communicate()[0][-3000:]}")
        time.sleep(0.2)
    squeue = ["squeue", "-h", "-o", "%i", "--state=RUNNING", "--partition=gpu"]
    job = subprocess.run(squeue, capture_output=True, text=True, check=True).stdout.split()[0]
    subprocess.run([*how.split(), job], check=True)
    if how == "scontrol requeue":  # a requeued job waits (BeginTime) before it may start again
        time.sleep(2)
        update = ["scontrol", "update", f"JobId={job}", "StartTime=now"]
        subprocess.run(update, capture_output=True)
    time.sleep(1)  # the rank has stopped at its next record: what it wrote is whole
    kept = partial.read_text().splitlines(keepends=True)
    assert len(kept) >= 3 and all(line.endswith("\n") for line in kept)
    output, _ = run.communicate(timeout=300)
    assert run.returncode == 0, output[-4000:]
    log = (tmp_path / "logs/sample/response0/shard-0-of-1.log").read_text()
    resumed = int(re.search(r"\((\d+) resumed\)", log).group(1))
    assert resumed >= len(kept)  # the records flushed on SIGTERM were not sampled again
    local_run(local, target)
    assert (tmp_path / target).read_bytes() == (local / target).read_bytes()
