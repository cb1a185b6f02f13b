"""The little torch.distributed the eval needs, through accelerate: who am I, and gather Python objects.

Under torchrun (WORLD_SIZE > 1) accelerate's ``PartialState`` creates the process group on first
use (NCCL with CUDA, gloo without) and sets each process's device; ``gather_object`` and
``broadcast_object_list`` move pickled objects over that group. Outside torchrun every call is
the one-process identity, and no process group is created.
"""

from __future__ import annotations

import os
from typing import Any


def _state():
    import torch
    from accelerate import PartialState

    if torch.cuda.is_available():
        return PartialState(backend="nccl")
    # Without CUDA accelerate must be told it is a CPU job: otherwise its state is "not
    # distributed" and gather_object / broadcast_object_list silently act per process.
    return PartialState(cpu=True, backend="gloo")


def _distributed() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside torchrun."""
    if not _distributed():
        return 0, 1
    state = _state()
    return state.process_index, state.num_processes


def all_gather(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (a one-element list outside torchrun)."""
    if not _distributed():
        return [obj]
    from accelerate.utils import gather_object

    _state()
    return gather_object([obj])  # accelerate concatenates the ranks' lists: one item each


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not _distributed():
        return obj
    from accelerate.utils import broadcast_object_list

    _state()
    return broadcast_object_list([obj], from_process=0)[0]


def barrier() -> None:
    if _distributed():
        _state().wait_for_everyone()


def shutdown() -> None:
    """Leave the process group before the interpreter exits (a no-op outside torchrun).

    Without it gloo's threads can outlive the interpreter: 2 of 24 two-process runs of
    tests/test_eval_distributed.py aborted at exit ("terminate called without an active
    exception", SIGABRT) after writing their results, and torchrun reported the job failed.
    """
    if _distributed():
        barrier()  # no rank tears down the group while another still uses it
        _state().destroy_process_group()


def device() -> str:
    """The device this process evaluates on: its own GPU under torchrun, else cuda:0 or cpu."""
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    if _distributed():
        return str(_state().device)
    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
