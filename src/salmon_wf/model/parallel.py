"""Process-group set-up: one process per model-parallel rank (gloo on CPU, NCCL on CUDA).

Works three ways: a plain single process (world size 1, in-process store, no ports), under
`torchrun` (env:// rendezvous), and in tests with an explicit FileStore.
"""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from fairscale.nn.model_parallel import initialize as mp_init


@dataclass(frozen=True)
class ParallelContext:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def setup_model_parallel(
    device: str = "auto", store: dist.Store | None = None, rank: int = 0, world_size: int = 1
) -> ParallelContext:
    """Initialise torch.distributed and fairscale model parallelism over every rank.

    All ranks of the world form one model-parallel group: a shard job *is* one MP group.
    """
    dev = pick_device(device)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if not dist.is_initialized():
        if store is not None:
            dist.init_process_group(backend, store=store, rank=rank, world_size=world_size)
        elif "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ:
            dist.init_process_group(backend, init_method="env://")
        else:
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    rank, world = dist.get_rank(), dist.get_world_size()
    if dev.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", rank % max(torch.cuda.device_count(), 1)))
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if not mp_init.model_parallel_is_initialized():
        with contextlib.redirect_stdout(io.StringIO()):  # fairscale prints its group sizes
            mp_init.initialize_model_parallel(world)
    return ParallelContext(rank=rank, world_size=world, device=dev)


def teardown_model_parallel() -> None:
    """Undo setup_model_parallel (tests set up several times in one process)."""
    if mp_init.model_parallel_is_initialized():
        mp_init.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()


def leave_process_group() -> None:
    """Tear the group down once every rank is done (a barrier first, so none leaves early)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
    teardown_model_parallel()
