"""Process placement shared by the trainers: one process, or DDP under torchrun."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from rainkit.errors import RainkitError
from rainkit.hub import resolve_device


def setup_processes(device_name: str, batch: int) -> tuple[torch.device, int, int]:
    """(device, rank, world size) from torchrun's environment; joins the process group (nccl on CUDA,
    gloo on the CPU) when there are several processes. The global batch must split evenly over them."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = resolve_device(device_name)
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if batch % world:
        raise RainkitError(f"batch {batch} does not split evenly over {world} processes")
    return device, rank, world
