"""What the GPU stages (sample, judge) share: model options, rank set-up, sharding, progress."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import TypeVar

import torch.distributed as dist

from salmon_wf.engine.context import POLICIES
from salmon_wf.errors import ConfigError
from salmon_wf.model.loader import DTYPES, LoadedModel, load_model
from salmon_wf.model.parallel import ParallelContext, setup_model_parallel

T = TypeVar("T")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model directory (Meta layout)")
    parser.add_argument("--tokenizer", help="tokenizer file overriding the model directory's")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--max-seq-len", type=int, help="context limit (default: the model's)")
    parser.add_argument("--long-prompt-policy", choices=POLICIES, default="skip")
    parser.add_argument("--shard", type=int, default=0, help="this job's shard index i")
    parser.add_argument("--num-shards", type=int, default=1, help="shards n: items[i::n]")
    parser.add_argument("--fingerprint", default="", help="job identity for resuming partial work")
    parser.add_argument("--threads", type=int, help="torch CPU threads per rank")


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


class Progress:
    """One line per update on stderr: done/total, rate and ETA (rank 0 only)."""

    def __init__(self, label: str, total: int, done: int = 0, enabled: bool = True) -> None:
        self.label, self.total, self.done = label, total, done
        self.start_done, self.enabled = done, enabled
        self.started = self.last = time.monotonic()

    def update(self, n: int = 1, extra: str = "") -> None:
        self.done += n
        now = time.monotonic()
        if not self.enabled or (now - self.last < 5 and self.done < self.total):
            return
        self.last = now
        rate = (self.done - self.start_done) / max(now - self.started, 1e-9)
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        line = f"[{self.label}] {self.done}/{self.total} ({rate:.2f}/s, eta {eta:.0f}s) {extra}"
        print(line.rstrip(), file=sys.stderr, flush=True)
