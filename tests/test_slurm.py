"""The workflow through `--profile profiles/slurm` on a live local SLURM cluster.

The cluster (scripts/local-slurm.sh: slurmctld, munge and one slurmd per node on loopback,
nodes n1 and n2 with 2 fake GPUs each) is started for this module and stopped after it; the
module skips, with the reason, where it cannot start (not root, no apt-get, no Debian
packages). .ci/run installs and starts it. One-node shard jobs land on either node; the
model-parallel groups over both nodes (`slurm.nodes_per_group: 2`) skip on a one-node cluster.
"""

from __future__ import annotations

import json
import os
import re
import signal
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


@pytest.fixture(scope="module")
def two_nodes(cluster: None) -> None:
    """The cluster has two nodes (the default); one started with --nodes 1 skips."""
    out = subprocess.run(["sinfo", "-h", "-N", "-p", "gpu", "-o", "%N"], capture_output=True)
    if len(set(out.stdout.split())) < 2:
        pytest.skip("the local SLURM cluster has one node: scripts/local-slurm.sh start --nodes 2")


@pytest.fixture(scope="module")
def local_smoke(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smoke workflow run locally with MP 1: what every run on the cluster must equal."""
    local = tmp_path_factory.mktemp("local-smoke")
    write_config(local, **CLUSTER)
    local_run(local)
    return local


def profile_command(workdir: Path, *extra: str) -> list[str]:
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")]
    command += ["--directory", str(workdir), "--configfile", str(workdir / "config.yaml")]
    command += ["--profile", str(REPO / "profiles" / "slurm")]
    # The local cluster has no accounting database: poll with squeue, and poll soon.
    command += ["--slurm-status-command", "squeue"]
    return [*command, "--slurm-init-seconds-before-status-checks", "1", *extra]


def run_profile(workdir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    command = profile_command(workdir, *extra)
    return subprocess.run(command, capture_output=True, text=True, timeout=900)


def local_start(workdir: Path, *targets: str) -> subprocess.Popen[str]:
    """A local run in the background: the cluster's runs mostly wait for status polls."""
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")]
    command += ["--directory", str(workdir), "--configfile", str(workdir / "config.yaml")]
    command += ["--cores", "2", *targets]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def local_done(run: subprocess.Popen[str]) -> None:
    output, _ = run.communicate(timeout=600)
    assert run.returncode == 0, output[-3000:]


def local_run(workdir: Path, *targets: str) -> None:
    local_done(local_start(workdir, *targets))


def jobs_of_cluster() -> list[str]:
    """`scontrol show job` records (completed jobs stay listed for MinJobAge=300 s)."""
    out = subprocess.run(["scontrol", "show", "job", "-o"], capture_output=True, text=True)
    return [line for line in out.stdout.splitlines() if line.startswith("JobId=")]


def test_slurm_run_equals_local_run_and_requests_gpus(
    cluster: None, local_smoke: Path, tmp_path: Path
) -> None:
    on_slurm, local = tmp_path / "slurm", local_smoke
    on_slurm.mkdir()
    write_config(on_slurm, **CLUSTER)
    done = run_profile(on_slurm)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
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


# A model-parallel group over both nodes: MP 2, one rank per node (gloo on CPU).
OVER_TWO_NODES = {"model.mp": 2, "slurm.nodes_per_group": 2}


def rendezvous_lines(log: str) -> list[tuple[str, str, str]]:
    """(node rank, group size, master address:port) of each node agent that joined."""
    pattern = r"torchrun: rendezvous complete: node rank (\d+) of (\d+) at (\S+),"
    return re.findall(pattern, log)


def test_group_over_two_nodes_equals_the_local_run_of_the_same_mp(
    two_nodes: None, local_smoke: Path, tmp_path: Path
) -> None:
    """Every shard job is one group on n1 and n2 that meets at one rendezvous, and computes the
    bytes the same MP computes on one machine (torchrun --standalone). MP 2 is not bitwise MP 1:
    the row-parallel all-reduce adds the partial products in another order, and on the tiny
    random model (flat distributions) that flips a sampled token now and then (measured: 1 of
    76 responses), so against MP 1 only the records' order and most records are compared."""
    one_shard = {"sampling.defaults.shards": 1, "judge.shards": 1}  # bytes do not depend on it
    on_slurm, local = tmp_path / "slurm", tmp_path / "local"
    for workdir in (on_slurm, local):
        workdir.mkdir()
    write_config(on_slurm, **CLUSTER, **OVER_TWO_NODES, **one_shard)
    write_config(local, **CLUSTER, **{"model.mp": 2})
    reference = local_start(local)  # torchrun --standalone, 2 ranks on this machine
    done = run_profile(on_slurm)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    local_done(reference)
    for name in OUTPUTS:
        ours, theirs = on_slurm / "results" / name, local / "results" / name
        assert ours.read_bytes() == theirs.read_bytes(), name
    for run in ("response0", "response1"):
        ours = list(read_jsonl(on_slurm / f"results/responses/{run}.jsonl"))
        mp1 = list(read_jsonl(local_smoke / f"results/responses/{run}.jsonl"))
        assert [r["id"] for r in ours] == [r["id"] for r in mp1]
        assert sum(a != b for a, b in zip(ours, mp1, strict=True)) <= len(mp1) // 20
    workdir = str(on_slurm)
    shards = [j for j in jobs_of_cluster() if "_shard" in j and workdir in j]
    assert len(shards) == 3  # response0, response1, the judge: one job each
    for job in shards:
        assert "NumNodes=2 " in job and " NodeList=n[1-2] " in job, job
        assert re.search(r"TresPerNode=gres:gpu:1\b", job), job  # MP 2 / 2 nodes: 1 GPU each
    logs = sorted((on_slurm / "logs").glob("*/**/shard-*.log"))
    assert len(logs) == 3
    for log in logs:
        text = log.read_text()
        agents = re.findall(r"launch: node agent .*SLURMD_NODENAME=(n\d) SLURM_NODEID=(\d)", text)
        assert sorted(agents) == [("n1", "0"), ("n2", "1")], (log, text[-2000:])
        assert text.count("SLURM_NNODES=2 SLURM_JOB_NODELIST=n[1-2]") == 2
        joined = rendezvous_lines(text)
        assert sorted(rank for rank, _, _ in joined) == ["0", "1"], (log, text[-2000:])
        assert {(size, at) for _, size, at in joined} == {("2", joined[0][2])}  # one group
        assert joined[0][2].startswith("127.0.0.1:")  # n1's NodeAddr: the names do not resolve


def job_processes(job: str, node: str) -> list[int]:
    """The node agent (torchrun) and rank of SLURM job `job` that run on `node`."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            raw = (proc / "environ").read_bytes().split(b"\0")
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:  # gone meanwhile
            continue
        env = dict(item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item)
        ours = env.get("SLURM_JOB_ID") == job and env.get("SLURMD_NODENAME") == node
        if ours and ("salmon_wf.torchrun" in command or "TORCHELASTIC_RUN_ID" in env):
            found.append(int(proc.name))
    return found


def running_shard_job(deadline: float) -> str:
    while time.monotonic() < deadline:
        squeue = ["squeue", "-h", "-o", "%i", "--state=RUNNING", "--partition=gpu"]
        jobs = subprocess.run(squeue, capture_output=True, text=True).stdout.split()
        if jobs:
            return jobs[0]
        time.sleep(0.2)
    pytest.fail("no shard job is running")


def seconds_until_job_ends(job: str, limit: float) -> float:
    """How long `job` stays RUNNING from now (at most `limit` seconds, then fail)."""
    start = time.monotonic()
    state = ["squeue", "-h", "-o", "%T", "-j", job]
    while subprocess.run(state, capture_output=True, text=True).stdout.strip() == "RUNNING":
        if time.monotonic() - start > limit:
            pytest.fail(f"job {job} still runs {limit} s after losing a node")
        time.sleep(0.2)
    return time.monotonic() - start


def test_a_group_that_loses_a_node_fails_fast_is_retried_and_resumes(
    two_nodes: None, tmp_path: Path
) -> None:
    """Attempt 1: n2's agent and rank are SIGKILLed (the node dies; its sockets close): n1's rank
    fails at once and srun --kill-on-bad-exit ends the job. Attempt 2: n1's agent and rank are
    SIGSTOPped (the node hangs, silent): n2's rank gives up after SALMON_WF_DIST_TIMEOUT. Attempt
    3 resumes after the records both kept and ends with the bytes of a local MP 2 run."""
    timeout = 10
    slow = {"sampling.defaults.max_new_tokens": 40, "sampling.defaults.batch_size": 2}
    slow |= {"sampling.defaults.stop": ["<never>"], "sampling.runs.response0.shards": 1}
    slow |= {"prompts.languages": ["de", "es", "fr", "zh"]}  # 12 of the 38 prompts
    local = tmp_path / "local"
    local.mkdir()
    write_config(local, **CLUSTER, **slow, **{"model.mp": 2})  # torchrun --standalone
    write_config(tmp_path, **CLUSTER, **slow, **OVER_TWO_NODES)
    target = "results/responses/response0.jsonl"
    reference = local_start(local, target)
    env = dict(os.environ, SALMON_WF_DIST_TIMEOUT=str(timeout))
    command = profile_command(tmp_path, "--retries", "2", target)
    run = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    partial = tmp_path / "results/responses/response0/shard-0-of-1.jsonl.partial"
    log = tmp_path / "logs/sample/response0/shard-0-of-1.log"
    stopped: list[int] = []
    try:
        lines, jobs = 0, []
        for attempt, (node, sig) in enumerate([("n2", signal.SIGKILL), ("n1", signal.SIGSTOP)]):
            deadline = time.monotonic() + 240
            while not (partial.exists() and partial.read_text().count("\n") >= lines + 2):
                if run.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"attempt {attempt + 1} never got going: {run.communicate()[0]}")
                time.sleep(0.1)
            job = running_shard_job(deadline)
            victims = job_processes(job, node)
            assert len(victims) == 2, victims  # the node's agent and its rank
            for pid in victims:
                os.kill(pid, sig)
            if sig == signal.SIGSTOP:
                stopped = victims
            took = seconds_until_job_ends(job, limit=timeout + 30)
            lines = partial.read_text().count("\n")  # whole records (a torn one is dropped)
            assert lines >= 2
            text = log.read_text()
            assert len(rendezvous_lines(text)) == 2, text[-3000:]
            jobs.append((job, took, text))
        (_, dead_took, _), (_, hung_took, hung_log) = jobs
        print(f"\njob ended {dead_took:.1f} s after its node died, {hung_took:.1f} s after it hung")
        assert dead_took < timeout  # a dead peer is noticed without waiting out the timeout
        assert timeout - 1 <= hung_took <= timeout + 30
        assert f"Timed out waiting {timeout * 1000}ms" in hung_log, hung_log[-3000:]
        output, _ = run.communicate(timeout=600)
    finally:
        failing = sys.exc_info()[0] is not None
        for process in (run, reference) if failing else (run,):
            if process.poll() is None:
                process.kill()
        for pid in stopped:  # SLURM has killed them; never leave a stopped process behind
            stat = Path(f"/proc/{pid}/stat")
            if stat.exists() and stat.read_text().rsplit(")", 1)[-1].split()[0] == "T":
                os.kill(pid, signal.SIGKILL)
    assert run.returncode == 0, output[-4000:]
    assert output.count("Trying to restart") == 2, output[-4000:]
    resumed = int(re.search(r"\((\d+) resumed\)", log.read_text()).group(1))
    assert resumed >= lines  # what the failed attempts flushed was not sampled again
    local_done(reference)
    assert (tmp_path / target).read_bytes() == (local / target).read_bytes()
