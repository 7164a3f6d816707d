"""The launcher's multi-node details without a cluster: the peer timeout and the rendezvous host."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from salmon_wf import launch
from salmon_wf.launch import DEFAULT_TIMEOUT_S, peer_timeout, plan

STAGE = ["sample", "--model", "m"]
ENV = {k: v for k, v in os.environ.items() if k != "SALMON_WF_DIST_TIMEOUT"}
NODE_N1 = (
    "NodeName=n1 Arch=x86_64 CoresPerSocket=1 CPUAlloc=0 CPUTot=2 NodeAddr=127.0.0.1"
    " NodeHostName=box Port=17101 RealMemory=10847 State=IDLE\n"
)


def test_the_peer_timeout_is_600_s_unless_set_and_must_be_whole_seconds() -> None:
    assert peer_timeout({}) == DEFAULT_TIMEOUT_S == 600
    assert peer_timeout({"SALMON_WF_DIST_TIMEOUT": " 45 "}) == 45
    for bad in ["0", "-3", "1.5", "ten"]:
        with pytest.raises(SystemExit, match="SALMON_WF_DIST_TIMEOUT must be a whole number"):
            peer_timeout({"SALMON_WF_DIST_TIMEOUT": bad})


def test_node_agents_get_the_timeout_and_the_first_nodes_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[list[str]] = []

    def scontrol(command: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        calls.append(command)
        out = "n1\nn2\n" if command[2] == "hostnames" else NODE_N1
        return subprocess.CompletedProcess(command, 0, out, "")

    monkeypatch.setattr(launch.subprocess, "run", scontrol)
    env = {"SLURM_JOB_ID": "77", "SLURM_JOB_NODELIST": "n[1-2]", "SLURM_NODEID": "1"}
    command = plan(2, 1, STAGE, env | {"SALMON_WF_DIST_TIMEOUT": "20"}, node_agent=True)
    assert calls == [
        ["scontrol", "show", "hostnames", "n[1-2]"],
        ["scontrol", "show", "node", "-o", "n1"],
    ]
    assert "--master-addr=127.0.0.1" in command and "--node-rank=1" in command
    assert "--rdzv-conf=timeout=20" in command
    assert "--rdzv-conf=timeout=600" in plan(2, 1, STAGE, env, node_agent=True)


def test_a_node_scontrol_does_not_know_is_reached_by_its_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def unknown(command: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(command, 1, "", "Node gpu07 not found\n")

    monkeypatch.setattr(launch.subprocess, "run", unknown)
    assert launch.node_address("gpu07") == "gpu07"


PRINT_TIMEOUTS = """
import sys, torch, torch.distributed as dist
from fairscale.nn.model_parallel import initialize as mp
from salmon_wf.model.parallel import setup_model_parallel
setup_model_parallel("cpu", store=dist.FileStore(sys.argv[1], 1))
for group in (dist.group.WORLD, mp.get_model_parallel_group()):
    print(group._get_backend(torch.device("cpu")).options._timeout.total_seconds())
"""


def test_every_rank_and_fairscales_groups_get_the_peer_timeout(tmp_path: Path) -> None:
    """The world group and the model-parallel group fairscale makes (the model's collectives)
    time out as configured: fairscale passes no timeout, and torch gives gloo 30 minutes."""
    command = [sys.executable, "-c", PRINT_TIMEOUTS, str(tmp_path / "store")]
    for env, seconds in [({"SALMON_WF_DIST_TIMEOUT": "42"}, "42.0"), ({}, "600.0")]:
        done = subprocess.run(command, capture_output=True, text=True, env={**ENV, **env})
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.split() == [seconds, seconds]
