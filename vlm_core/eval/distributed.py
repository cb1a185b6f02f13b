"""The little torch.distributed the eval needs: who am I, and gather Python objects.

Under torchrun (WORLD_SIZE > 1) a process group is created on first use; objects travel over a
gloo group even when the main backend is NCCL, so gathering never needs GPU tensors.
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside torchrun."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    dist = _init()
    return dist.get_rank(), dist.get_world_size()


def _init():
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    return dist


@cache
def _object_group():
    dist = _init()
    return dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else None


def all_gather(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (a one-element list outside torchrun)."""
    _, size = world()
    if size == 1:
        return [obj]
    dist = _init()
    out: list[Any] = [None] * size
    dist.all_gather_object(out, obj, group=_object_group())
    return out


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    _, size = world()
    if size == 1:
        return obj
    dist = _init()
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=_object_group())
    return box[0]


def barrier() -> None:
    if world()[1] > 1:
        _init().barrier(group=_object_group())


def device() -> str:
    import torch

    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return "cpu"
