"""Data parallelism under torchrun or the Slurm launcher: the process group from torchrun's environment
(afqmc/runs/launcher.py sets the same variables from Slurm's), and collectives that are no-ops in a single
process, so the training loop reads the same either way."""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def init(device_type: str, timeout_s: float = 600) -> torch.device | None:
    """Join the process group (NCCL on CUDA, gloo on CPU); the CUDA device is this rank's local GPU.

    A collective that waits longer than timeout_s raises on every rank still alive: a rank that died (its
    node lost) stops the others then, not at the job's time limit. NCCL's watchdog aborts on it as well."""
    if world_size() == 1:
        return None
    device = torch.device("cuda", local_gpu()) if device_type == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo",
            device_id=device if device.type == "cuda" else None,
            timeout=timedelta(seconds=timeout_s),
        )
    return device


def local_gpu() -> int:
    """LOCAL_RANK among the node's GPUs; 0 where Slurm bound one GPU to each task (CUDA_VISIBLE_DEVICES)."""
    return int(os.environ["LOCAL_RANK"]) if torch.cuda.device_count() > 1 else 0


def broadcast(obj):
    """Rank 0's value of a picklable object, on every rank."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj) -> list:
    """Every rank's object, in rank order, on every rank."""
    if world_size() == 1:
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def mean(value: torch.Tensor) -> torch.Tensor:
    if world_size() > 1:
        value = value.clone()
        dist.all_reduce(value)
        value /= world_size()
    return value


def broadcast_module(module: torch.nn.Module) -> None:
    """Every rank takes rank 0's weights (after rank 0 reloaded a checkpoint)."""
    if world_size() > 1:
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src=0)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
