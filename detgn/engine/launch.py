"""Starting one or many training processes.

- ``python tools/train_net.py ...``: one process, torch.distributed is not initialised.
- ``torchrun --nproc_per_node=8 tools/train_net.py ...``: torchrun sets RANK,
  WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; :func:`init_distributed`
  reads them and joins the group (NCCL on GPUs, gloo on the CPU).
- ``python tools/train_net.py --num-gpus 8 ...``: :func:`launch` spawns the 8 local
  processes itself, setting the same variables, so both paths share one code path.
"""
from __future__ import annotations

import datetime
import inspect
import logging
import os
import socket
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["DistInfo", "init_distributed", "launch", "seed_for_rank", "create_ddp_model"]


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    backend: str  # "" when not distributed


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise RuntimeError(f"Environment variable {name}={value!r} must be an integer (set by torchrun)") from None


def init_distributed(device: str = "cpu", *, timeout_minutes: int = 30) -> DistInfo:
    """Join the process group described by torchrun's environment variables.

    Args:
        device: ``MODEL.DEVICE``; ``cuda*`` with CUDA available selects NCCL and binds this
            process to GPU ``LOCAL_RANK``; anything else uses gloo.
        timeout_minutes: how long collectives wait for a missing rank before failing.

    Returns:
        this process's rank, world size, local rank and backend. In a plain ``python`` run
        (``WORLD_SIZE`` unset or 1, not under torchrun) nothing is initialised and
        ``(0, 1, 0, "")`` is returned.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", 0), dist.get_backend())
    # A plain run stays without a process group. Under torchrun (which sets TORCHELASTIC_RUN_ID)
    # the group is made even for one process, so that `torchrun --nproc_per_node=1` runs the
    # very path (NCCL or gloo, DDP) of a many-GPU run.
    if world_size <= 1 and "TORCHELASTIC_RUN_ID" not in os.environ:
        return DistInfo(0, 1, 0, "")
    missing = [v for v in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise RuntimeError(
            f"WORLD_SIZE={world_size} but {', '.join(missing)} not set: start multi-process runs with "
            "torchrun --nproc_per_node=N tools/train_net.py ... or with --num-gpus N"
        )
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    wants_cuda = device.startswith("cuda")
    if wants_cuda and not torch.cuda.is_available():
        raise RuntimeError(f"MODEL.DEVICE is {device!r} but CUDA is not available; use MODEL.DEVICE cpu")
    if wants_cuda:
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPU(s) are visible; "
                "lower --nproc_per_node / --num-gpus"
            )
        torch.cuda.set_device(local_rank)
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(
        backend=backend,
        init_method="env://",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(minutes=timeout_minutes),
    )
    logger.info("Process group ready: rank %d of %d (local rank %d, %s)", rank, world_size, local_rank, backend)
    return DistInfo(rank, world_size, local_rank, backend)


def seed_for_rank(seed: int, rank: int) -> int:
    """The model-side seed of ``rank``: ``seed + rank``, so ranks draw different samples.

    The data seed stays ``seed`` on every rank: the sampler shards one shared stream.
    """
    return int(seed) + int(rank)


def create_ddp_model(model: nn.Module, *, local_rank: int = 0) -> nn.Module:
    """Wrap ``model`` in DistributedDataParallel when a process group exists (else return it);
    under torchrun that includes a group of one process."""
    if not (dist.is_available() and dist.is_initialized()):
        return model
    on_cuda = next(model.parameters()).device.type == "cuda"
    kwargs = dict(
        device_ids=[local_rank] if on_cuda else None,
        output_device=local_rank if on_cuda else None,
        # Every parameter takes part in each loss; searching for unused ones costs a graph walk.
        find_unused_parameters=False,
    )
    # Norm statistics are per process by design (GN has none; SyncBN syncs itself): no
    # buffer sync before each forward. Newer torch names this forward_sync_buffers.
    if "forward_sync_buffers" in inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters:
        kwargs["forward_sync_buffers"] = False
    else:
        kwargs["broadcast_buffers"] = False
    logger.info("Model wrapped in DistributedDataParallel (%d process(es), %s)", dist.get_world_size(), dist.get_backend())
    return nn.parallel.DistributedDataParallel(model, **kwargs)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawned_worker(local_rank: int, main_fn: Callable, num_processes: int, port: int, args: Sequence[Any]) -> None:
    os.environ.update(
        RANK=str(local_rank),
        LOCAL_RANK=str(local_rank),
        WORLD_SIZE=str(num_processes),
        LOCAL_WORLD_SIZE=str(num_processes),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    main_fn(*args)


def launch(main_fn: Callable, num_processes: int = 1, *, args: Sequence[Any] = ()) -> Any:
    """Run ``main_fn(*args)`` in ``num_processes`` local processes (one machine).

    With one process, or under torchrun (``WORLD_SIZE`` already set), ``main_fn`` runs
    here and its result is returned. Otherwise the processes are spawned with the
    torchrun variables set; ``main_fn`` calls :func:`init_distributed` as it would
    under torchrun. ``main_fn`` and ``args`` must be picklable.
    """
    if num_processes <= 1 or "WORLD_SIZE" in os.environ:
        return main_fn(*args)
    import torch.multiprocessing as mp

    port = _free_port()
    logger.info("Spawning %d processes (master 127.0.0.1:%d)", num_processes, port)
    mp.start_processes(
        _spawned_worker,
        args=(main_fn, num_processes, port, tuple(args)),
        nprocs=num_processes,
        join=True,
        start_method="spawn",
    )
    return None
