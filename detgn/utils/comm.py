"""torch.distributed helpers that also work in a plain one-process run."""
from __future__ import annotations

from typing import Any, List

import torch
import torch.distributed as dist


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_local_rank() -> int:
    import os

    return int(os.environ.get("LOCAL_RANK", 0)) if is_dist() else 0


def is_main_process() -> bool:
    return get_rank() == 0


def synchronize() -> None:
    """Barrier across all processes (no-op in a one-process run)."""
    if is_dist() and get_world_size() > 1:
        dist.barrier()


def all_gather(obj: Any) -> List[Any]:
    """Gather any picklable object from every rank; a list indexed by rank."""
    if get_world_size() == 1:
        return [obj]
    out: List[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def gather(obj: Any, dst: int = 0) -> List[Any]:
    """Gather to ``dst``: the list of every rank's object there, [] elsewhere."""
    if get_world_size() == 1:
        return [obj]
    out = [None] * get_world_size() if get_rank() == dst else None
    dist.gather_object(obj, out, dst=dst)
    return out if get_rank() == dst else []


def reduce_dict_mean(d: dict) -> dict:
    """Average a dict of scalar tensors over ranks (for logging)."""
    if get_world_size() == 1:
        return d
    keys = sorted(d)
    values = torch.stack([torch.as_tensor(d[k], dtype=torch.float32) for k in keys])
    dist.all_reduce(values)
    values /= get_world_size()
    return dict(zip(keys, values))
