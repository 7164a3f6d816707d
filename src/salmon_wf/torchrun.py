"""torchrun as the launcher runs it: a failed group ends with one line, not the agent's traceback.

A rank that meets a user error prints its one line (cli.main) and exits 1; torchrun's agent then
raises ChildFailedError, whose traceback and 20-line report would follow that line in the job's
log. Here the report is one line naming each failed rank and how it ended. A rank's own
traceback (a bug) is printed by the rank and stays. A SIGTERM to the agent (SLURM preemption)
is forwarded to the ranks by torchrun; the agent then ends with one line, too. Once the node
agents of a group have met, each prints one `torchrun: rendezvous complete` line (its node rank,
the group's master address and port, its ranks): the job's log shows which nodes formed one
group (torchrun logs that only at INFO, with a dozen lines of its own, which are dropped).

    python -m salmon_wf.torchrun <torchrun's arguments>
"""

from __future__ import annotations

import logging
import sys

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure


def how(failure: ProcessFailure) -> str:
    """`exit 1` or `SIGTERM`: how a failed rank ended."""
    if failure.exitcode < 0:
        return failure.signal_name()
    return f"exit {failure.exitcode}"


AGENT_LOGGER = "torch.distributed.elastic.agent.server.api"
RENDEZVOUS = "[%(role)s] Rendezvous complete for workers."


class RendezvousLine(logging.Filter):
    """Print torchrun's INFO record of a finished rendezvous as one line; drop its other INFO."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        args = record.args
        if str(record.msg).startswith(RENDEZVOUS) and isinstance(args, dict):
            print(
                f"torchrun: rendezvous complete: node rank {args['group_rank']} of"
                f" {args['group_world_size']} at {args['master_addr']}:{args['master_port']},"
                f" global ranks {args['global_ranks']} of {args['global_world_sizes'][0]}",
                file=sys.stderr,
                flush=True,
            )
        return False


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.run import main as torchrun_main

    agent_log = logging.getLogger(AGENT_LOGGER)
    agent_log.setLevel(logging.INFO)
    agent_log.addFilter(RendezvousLine())

    try:
        torchrun_main(argv)
    except ChildFailedError as exc:
        ranks = ", ".join(f"rank {r} {how(f)}" for r, f in sorted(exc.failures.items()))
        print(f"torchrun: {exc.name} failed ({ranks})", file=sys.stderr, flush=True)
        return 1
    except SignalException as exc:  # SIGTERM (preemption): forwarded to the ranks, they stop
        name = exc.sigval.name
        print(f"torchrun: stopped by {name}, the ranks with it", file=sys.stderr, flush=True)
        return 128 + exc.sigval.value
    return 0


if __name__ == "__main__":
    sys.exit(main())
