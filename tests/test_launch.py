"""How a shard job starts its model-parallel group, with and without SLURM."""

from __future__ import annotations

import subprocess
import sys

import pytest

from salmon_wf.launch import master_port, plan
from salmon_wf.workflow import group_shape, slurm_resources

STAGE = ["sample", "--model", "m"]


def test_outside_slurm_one_rank_runs_in_process_and_several_use_torchrun() -> None:
    assert plan(1, 1, STAGE, {}, node_agent=False) is None
    command = plan(1, 4, STAGE, {}, node_agent=False)
    assert command[:4] == [sys.executable, "-m", "salmon_wf.torchrun", "--standalone"]
    assert "--nproc-per-node=4" in command and command[-3:] == STAGE
    with pytest.raises(SystemExit, match="SLURM allocation"):
        plan(2, 6, STAGE, {}, node_agent=False)


def test_inside_slurm_srun_starts_one_agent_per_node() -> None:
    command = plan(2, 6, STAGE, {"SLURM_JOB_ID": "1234"}, node_agent=False)
    assert command[:4] == ["srun", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1"]
    agent = command[command.index("salmon_wf.launch") :]
    assert agent[:6] == [
        "salmon_wf.launch",
        "--node-agent",
        "--nodes",
        "2",
        "--ranks-per-node",
        "6",
    ]
    assert agent[-4:] == ["--", *STAGE]


def test_node_agent_takes_the_rendezvous_from_slurm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("salmon_wf.launch.first_host", lambda nodes: "gpu07")
    monkeypatch.setattr("salmon_wf.launch.node_address", lambda node: node)  # no controller
    env = {"SLURM_JOB_ID": "1234", "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_NODEID": "1"}
    command = plan(2, 6, STAGE, env, node_agent=True)
    assert "--nnodes=2" in command and "--node-rank=1" in command
    assert "--master-addr=gpu07" in command and f"--master-port={master_port('1234')}" in command
    assert "--nproc-per-node=6" in command and command[-3:] == STAGE
    assert master_port("1234") != master_port("1235")


def test_slurm_resources_come_from_config() -> None:
    config = {
        "model": {"mp": 12},
        "slurm": {
            "nodes_per_group": 2,
            "gpu_jobs": {
                "partition": "gpu",
                "account": "lab",
                "qos": "",
                "runtime": 600,
                "mem_mb": 200000,
                "cpus_per_task": 12,
                "extra": "--exclusive",
            },
            "cpu_jobs": {"partition": "", "runtime": 30, "mem_mb": 4000, "cpus_per_task": 2},
        },
    }
    assert group_shape(config) == (2, 6)
    gpu = slurm_resources(config, "gpu")
    assert gpu == {
        "slurm_partition": "gpu",
        "slurm_account": "lab",
        "slurm_extra": "--exclusive",
        "runtime": 600,
        "mem_mb": 200000,
        "cpus_per_task": 12,
        "nodes": 2,
        "tasks": 2,
        "tasks_per_gpu": 0,
        "mpi": "srun",
        "gres": "gpu:6",
    }
    assert slurm_resources(config, "cpu") == {"runtime": 30, "mem_mb": 4000, "cpus_per_task": 2}
    config["slurm"]["nodes_per_group"] = 1
    assert "mpi" not in slurm_resources(config, "gpu")  # the plugin wants mpi jobs multi-task
    config["slurm"]["gpu_jobs"]["gpus_per_node"] = 0  # a CPU-only cluster
    assert "gres" not in slurm_resources(config, "gpu")
    config["model"]["mp"], config["slurm"]["nodes_per_group"] = 5, 2
    with pytest.raises(ValueError, match="not divisible"):
        group_shape(config)


class _Resources(dict):
    __getattr__ = dict.__getitem__


class _Job:
    def __init__(self, resources: dict) -> None:
        self.resources = _Resources(resources)
        self.threads = 1


def test_the_slurm_plugin_asks_one_task_per_node_for_shard_jobs() -> None:
    """sbatch gets one task per node: torchrun, not SLURM, starts a rank per GPU."""
    submit = pytest.importorskip("snakemake_executor_plugin_slurm.submit_string")
    config = {
        "model": {"mp": 4},
        "slurm": {
            "nodes_per_group": 1,
            "gpu_jobs": {"runtime": 60, "mem_mb": 1000, "cpus_per_task": 8},
        },
    }
    params = {"run_uuid": "u", "slurm_logfile": "l", "comment_str": "c", "account": ""}
    params |= {"partition": "", "workdir": ""}

    one_node = submit.get_submit_command(_Job(slurm_resources(config, "gpu")), params)
    assert "--ntasks" not in one_node and "--nodes" not in one_node  # SLURM's default: 1 task
    config["slurm"]["nodes_per_group"] = 2
    two_nodes = submit.get_submit_command(_Job(slurm_resources(config, "gpu")), params)
    assert "--nodes=2" in two_nodes and "--ntasks=2" in two_nodes
    assert "--ntasks-per-gpu" not in two_nodes


def test_the_workflow_eases_garbage_collection_for_large_dags() -> None:
    """What the Snakefile calls at parse time: startup objects frozen, rarer collections."""
    code = (
        "import gc; from salmon_wf.workflow import ease_garbage_collection;"
        "before = gc.get_freeze_count(); ease_garbage_collection();"
        "print(before, gc.get_freeze_count() > 1000, gc.get_threshold()[0]);"
        "cycle = []; cycle.append(cycle); del cycle; print(gc.collect() >= 1)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["0", "True", "20000", "True"]  # cycles are still collected
