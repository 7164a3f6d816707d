"""What the GPU stages (sample, judge) share: model options, rank set-up, sharding, resuming."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch.distributed as dist

from salmon_wf.config import command_defaults
from salmon_wf.data.jsonl import ResumableOutput
from salmon_wf.engine.context import POLICIES
from salmon_wf.errors import ConfigError
from salmon_wf.model.dtypes import DTYPES
from salmon_wf.model.loader import LoadedModel, load_model
from salmon_wf.model.parallel import ParallelContext, setup_model_parallel

T = TypeVar("T")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The model flags; defaults are the schema's model section (and a sampling run's policy)."""
    m = command_defaults("model")
    policy = command_defaults("sample")["long_prompt_policy"]
    parser.add_argument("--model", required=True, help="model directory (Meta layout)")
    parser.add_argument("--tokenizer", help="tokenizer file overriding the model directory's")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=m["dtype"])
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
    return out, kept
