"""torchrun as the launcher runs it: a failed group ends with one line, not the agent's traceback.

A rank that meets a user error prints its one line (cli.main) and exits 1; torchrun's agent then
raises ChildFailedError, whose traceback and 20-line report would follow that line in the job's
log. Here the report is one line naming each failed rank and how it ended. A rank's own
traceback (a bug) is printed by the rank and stays. A SIGTERM to the agent (SLURM preemption)
is forwarded to the ranks by torchrun; the agent then ends with one line, too.

    python -m salmon_wf.torchrun <torchrun's arguments>
"""

from __future__ import annotations

import sys

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure


def how(failure: ProcessFailure) -> str:
    """`exit 1` or `SIGTERM`: how a failed rank ended."""
    if failure.exitcode < 0:
        return failure.signal_name()
    return f"exit {failure.exitcode}"


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.run import main as torchrun_main

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
