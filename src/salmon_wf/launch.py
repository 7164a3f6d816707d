"""Start one model-parallel group: one rank per GPU (or gloo rank on CPU), on one or more nodes.

    python -m salmon_wf.launch --nodes N --ranks-per-node G -- <salmon-wf sub-command and args>

Outside SLURM: one rank runs in this process; several ranks run under `torchrun --standalone`
(one node only). Inside a SLURM allocation (SLURM_JOB_ID set): `srun` starts one task per node
and each task runs `torchrun` with the rendezvous taken from SLURM's environment (first node of
the step's node list as master, reached at that node's NodeAddr; SLURM_NODEID as node rank; a
port derived from the job id), so a group can span nodes as in SALMON (e.g. MP=12 over 2 nodes
of 6 GPUs). The CPU/gloo path uses the same launcher, which is how the local test cluster
exercises it (scripts/local-slurm.sh: two nodes on one machine).

How long a rank waits for a peer that has died or hangs: SALMON_WF_DIST_TIMEOUT seconds
(default 600, NCCL's own default). It bounds the node agents' rendezvous (torchrun's static
rendezvous `timeout`) and, in every rank, the process group's store and each collective
(`init_process_group(timeout=...)`, see salmon_wf.model.parallel). A peer that exits closes its
sockets and the others fail at once; the timeout is for a peer that is gone without a word (a
hung process, a node off the network). srun's --kill-on-bad-exit then ends the other nodes' tasks.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence

PORT_BASE, PORT_SPAN = 20000, 20000
TORCHRUN = "salmon_wf.torchrun"  # torch.distributed.run, ending a failed group in one line
TIMEOUT_ENV, DEFAULT_TIMEOUT_S = "SALMON_WF_DIST_TIMEOUT", 600


def peer_timeout(env: Mapping[str, str]) -> int:
    """Seconds a rank or node agent waits for a silent peer (SALMON_WF_DIST_TIMEOUT)."""
    value = env.get(TIMEOUT_ENV, "").strip()
    if not value:
        return DEFAULT_TIMEOUT_S
    if not value.isdigit() or int(value) < 1:
        raise SystemExit(f"launch: {TIMEOUT_ENV} must be a whole number of seconds >= 1: {value!r}")
    return int(value)


def master_port(job_id: str) -> int:
    """A port per job: two groups of one user on one node must not collide."""
    return PORT_BASE + int(job_id) % PORT_SPAN if job_id.isdigit() else 29500


def torchrun(
    nodes: int, per_node: int, node_rank: int, master: str, port: int, timeout: int
) -> list[str]:
    """torchrun for one node of the group; `timeout` bounds the wait for the other nodes."""
    command = [sys.executable, "-m", TORCHRUN, f"--nnodes={nodes}"]
    command += [f"--nproc-per-node={per_node}", f"--node-rank={node_rank}"]
    command += [f"--master-addr={master}", f"--master-port={port}"]
    return [*command, f"--rdzv-conf=timeout={timeout}"]


def plan(
    nodes: int, per_node: int, stage: Sequence[str], env: Mapping[str, str], node_agent: bool
) -> list[str] | None:
    """The command to exec, or None to run the stage in this process."""
    cli = ["-m", "salmon_wf.cli", *stage]
    job_id = env.get("SLURM_JOB_ID", "")
    if node_agent:  # one srun task per node
        first = node_address(first_host(env["SLURM_JOB_NODELIST"]))
        node_rank = int(env.get("SLURM_NODEID", "0"))
        port, timeout = master_port(job_id), peer_timeout(env)
        return torchrun(nodes, per_node, node_rank, first, port, timeout) + cli
    if job_id and env.get("SALMON_WF_LAUNCHER", "srun") == "srun":
        agent = [sys.executable, "-m", "salmon_wf.launch", "--node-agent"]
        agent += ["--nodes", str(nodes), "--ranks-per-node", str(per_node), "--", *stage]
        srun = ["srun", f"--nodes={nodes}", f"--ntasks={nodes}", "--ntasks-per-node=1"]
        # --overlap: inside the step the SLURM executor already runs, share its resources.
        return [*srun, "--overlap", "--kill-on-bad-exit=1", *agent]
    if nodes > 1:
        raise SystemExit("launch: a group over several nodes needs a SLURM allocation")
    if per_node == 1:
        return None
    return [
        sys.executable,
        "-m",
        TORCHRUN,
        "--standalone",
        f"--nproc-per-node={per_node}",
        *cli,
    ]


def first_host(nodelist: str) -> str:
    """First host name of a SLURM node list (expanded by scontrol: 'gpu[01-02]' forms)."""
    done = subprocess.run(
        ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True
    )
    return done.stdout.split()[0]


def node_address(node: str) -> str:
    """The address SLURM reaches `node` at (its NodeAddr), else the name itself.

    On most clusters NodeAddr is the host name, but node names need not resolve (several slurmd
    on one host, nodes named apart from their hosts): the rendezvous must use the address."""
    try:
        done = subprocess.run(
            ["scontrol", "show", "node", "-o", node],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,  # a controller that does not answer must not stall the group's start
        )
    except (OSError, subprocess.TimeoutExpired):
        return node
    for field in done.stdout.split():
        if field.startswith("NodeAddr=") and field != "NodeAddr=":
            return field.removeprefix("NodeAddr=")
    return node


def describe(env: Mapping[str, str]) -> str:
    """Where this node agent runs, for the job's log (which nodes joined which group)."""
    keys = ["SLURM_JOB_ID", "SLURMD_NODENAME", "SLURM_NODEID", "SLURM_NNODES", "SLURM_JOB_NODELIST"]
    return " ".join(f"{key}={env.get(key, '')}" for key in keys)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m salmon_wf.launch", description=__doc__)
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--ranks-per-node", type=int, default=1)
    parser.add_argument("--node-agent", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("stage", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    stage = args.stage[1:] if args.stage[:1] == ["--"] else args.stage
    command = plan(args.nodes, args.ranks_per_node, stage, os.environ, args.node_agent)
    if command is None:  # one rank: the stage runs in this process
        from salmon_wf.cli import run_and_leave

        return run_and_leave(stage)
    if args.node_agent:
        print("launch: node agent", describe(os.environ), file=sys.stderr, flush=True)
    print("launch:", " ".join(command), file=sys.stderr, flush=True)
    os.execvp(command[0], command)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
