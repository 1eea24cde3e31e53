"""Process placement shared by the trainers: one process, or DDP under torchrun."""

from __future__ import annotations

import functools
import os
from typing import Callable, TypeVar

import torch
import torch.distributed as dist

from rainkit.errors import RainkitError
from rainkit.hub import resolve_device

F = TypeVar("F", bound=Callable)


def process_device(device_name: str) -> torch.device:
    """The device of this process: `device_name` resolved, and under torchrun on CUDA the process's own GPU
    (LOCAL_RANK), so that ranks sharing a node do not share a GPU."""
    device = resolve_device(device_name)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def setup_processes(device_name: str, batch: int) -> tuple[torch.device, int, int]:
    """(device, rank, world size) from torchrun's environment; joins the process group (nccl on CUDA,
    gloo on the CPU) when there are several processes. The global batch must split evenly over them."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = process_device(device_name)
    if world > 1:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if batch % world:
        raise RainkitError(f"batch {batch} does not split evenly over {world} processes")
    return device, rank, world


def leaves_process_group_as_found(train: F) -> F:
    """Wrap a trainer that may join the process group itself (`setup_processes`) so that it also leaves it.

    A gloo group still alive at interpreter exit can abort the process ("terminate called without an active
    exception") and a rank that exits early can break a peer still exporting, so after a normal return the
    ranks meet at a barrier and then destroy the group. A group the caller made before the call is left alone.
    """

    @functools.wraps(train)
    def wrapper(*args, **kwargs):
        joined_before = dist.is_available() and dist.is_initialized()
        finished = False
        try:
            result = train(*args, **kwargs)
            finished = True
            return result
        finally:
            if not joined_before and dist.is_available() and dist.is_initialized():
                if finished:
                    dist.barrier()
                dist.destroy_process_group()

    return wrapper  # type: ignore[return-value]
