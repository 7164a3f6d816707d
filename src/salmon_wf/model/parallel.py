"""Process-group set-up: one process per model-parallel rank (gloo on CPU, NCCL on CUDA).

Works three ways: a plain single process (world size 1, in-process store, no ports), under
`torchrun` (env:// rendezvous), and in tests with an explicit FileStore.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from fairscale.nn.model_parallel import initialize as mp_init

from salmon_wf.launch import peer_timeout


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


@contextlib.contextmanager
def groups_time_out_after(timeout: timedelta) -> Iterator[None]:
    """fairscale's new_group calls pass no timeout, so torch would give its groups (those the
    model's collectives use) 30 minutes (gloo) whatever the world group's timeout."""
    original = dist.new_group
    dist.new_group = functools.partial(original, timeout=timeout)
    try:
        yield
    finally:
        dist.new_group = original


def setup_model_parallel(
    device: str = "auto", store: dist.Store | None = None, rank: int = 0, world_size: int = 1
) -> ParallelContext:
    """Initialise torch.distributed and fairscale model parallelism over every rank.

    All ranks of the world form one model-parallel group: a shard job *is* one MP group.
    """
    dev = pick_device(device)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    # how long the store and every collective wait for a silent peer (torch's gloo default is
    # 30 min): SALMON_WF_DIST_TIMEOUT, see salmon_wf.launch
    timeout = timedelta(seconds=peer_timeout(os.environ))
    if not dist.is_initialized():
        if store is not None:
            dist.init_process_group(
                backend, store=store, rank=rank, world_size=world_size, timeout=timeout
            )
        elif "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ:
            dist.init_process_group(backend, init_method="env://", timeout=timeout)
        else:
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    rank, world = dist.get_rank(), dist.get_world_size()
    if dev.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", rank % max(torch.cuda.device_count(), 1)))
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if not mp_init.model_parallel_is_initialized():
        # fairscale prints its group sizes
        with contextlib.redirect_stdout(io.StringIO()), groups_time_out_after(timeout):
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
