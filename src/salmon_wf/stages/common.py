"""What the GPU stages (sample, judge) share: model options, rank set-up, sharding, resuming,
stopping on SIGTERM."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch.distributed as dist

from salmon_wf.config import command_defaults
from salmon_wf.data.jsonl import ResumableOutput
from salmon_wf.engine.context import POLICIES
from salmon_wf.errors import ConfigError
from salmon_wf.killpoint import kill_point
from salmon_wf.model.dtypes import COMPUTE_DTYPES
from salmon_wf.model.loader import LoadedModel, load_model
from salmon_wf.model.parallel import ParallelContext, setup_model_parallel

T = TypeVar("T")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The model flags; defaults are the schema's model section (and a sampling run's policy)."""
    m = command_defaults("model")
    policy = command_defaults("sample")["long_prompt_policy"]
    parser.add_argument("--model", required=True, help="model directory (Meta layout)")
    parser.add_argument("--tokenizer", help="tokenizer file overriding the model directory's")
    parser.add_argument("--dtype", choices=COMPUTE_DTYPES, default=m["dtype"])
    parser.add_argument("--device", default=m["device"], help="auto, cpu or cuda")
    parser.add_argument(
        "--max-seq-len",
        type=int,
        default=m["max_seq_len"],
        help="context limit (null: the model's)",
    )
    parser.add_argument("--long-prompt-policy", choices=POLICIES, default=policy)
    parser.add_argument(
        "--threads", type=int, default=m["threads"], help="torch CPU threads per rank"
    )


def add_shard_arguments(parser: argparse.ArgumentParser) -> None:
    """Which part of the work this job does, and its identity for resuming (shard_items, resume)."""
    parser.add_argument("--shard", type=int, default=0, help="this job's shard index i")
    parser.add_argument("--num-shards", type=int, default=1, help="shards n: items[i::n]")
    parser.add_argument("--fingerprint", default="", help="job identity for resuming partial work")


def shard_items(items: Sequence[T], shard: int, num_shards: int) -> list[T]:
    """Strided split items[i::n]: every shard gets a similar mix of short and long work."""
    if not 0 <= shard < num_shards:
        raise ConfigError(f"shard {shard} is not in 0..{num_shards - 1}", field="--shard")
    return list(items[shard::num_shards])


def start_rank(args: argparse.Namespace) -> tuple[ParallelContext, LoadedModel]:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    ctx = setup_model_parallel(args.device)
    loaded = load_model(
        args.model,
        ctx,
        dtype=args.dtype,
        tokenizer_path=args.tokenizer,
        max_seq_len=args.max_seq_len,
    )
    if ctx.rank == 0 and loaded.dtype is not None:
        print(f"dtype {loaded.dtype.name} ({loaded.dtype.reason})", flush=True)
    return ctx, loaded


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


Record = dict[str, Any]


def resume(
    output: Path,
    fingerprint: str,
    ctx: ParallelContext,
    keep: Callable[[list[Record]], list[Record]],
) -> tuple[ResumableOutput, list[Record]]:
    """A shard's output, started again with `keep(records an earlier run of this job finished)`.

    Every rank reads the partial file before rank 0 rewrites it (the barrier), so the ranks agree
    on what is left to do. `keep` chooses the complete work (its order is the file's again).
    """
    out = ResumableOutput(output, fingerprint, writer=ctx.is_main)
    kept = keep(out.existing())
    barrier()
    out.start(kept)
    kill_point("shard.start")  # a test hook (killpoint.py); nothing when unset
    return out, kept


STOPPED = 128 + signal.SIGTERM  # the shell's status for a process ended by SIGTERM


class Termination:
    """SIGTERM (SLURM preemption, scancel, a requeue; torchrun forwards it to every rank) stops
    the shard between two records instead of wherever it is.

    Every record is appended and flushed whole, so the partial file then holds exactly the
    finished work and the retry resumes from it. The ranks of a model-parallel group agree
    (an all-reduce per check) so that all leave at the same record and none waits in a
    collective for a rank that left. Installed after `resume`: before it there is nothing to
    keep, and a SIGTERM ends the job at once, as by default.
    """

    def __init__(self, ctx: ParallelContext) -> None:
        self.ctx = ctx
        self.signalled = False
        signal.signal(signal.SIGTERM, self._note)

    def _note(self, _signum: int, _frame: object) -> None:
        self.signalled = True

    def requested(self) -> bool:
        """Whether any rank got SIGTERM; every rank must call it at the same points."""
        if self.ctx.world_size == 1:
            return self.signalled
        import torch

        flag = torch.tensor([int(self.signalled)], device=self.ctx.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def stop(self, label: str, out: ResumableOutput, written: int, kept: int) -> int:
        """The line saying where the shard stopped; the exit status (non-zero: not done)."""
        if self.ctx.is_main:
            print(
                f"[{label}] stopped by SIGTERM: {kept + written} records in {out.partial} "
                f"({kept} resumed, {written} new); a rerun resumes from there",
                file=sys.stderr,
                flush=True,
            )
        return STOPPED
