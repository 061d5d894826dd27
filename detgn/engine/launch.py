"""Starting one or many training processes.

- ``python tools/train_net.py ...``: one process, torch.distributed is not initialised.
- ``torchrun --nproc_per_node=8 tools/train_net.py ...``: torchrun sets RANK,
  WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; :func:`init_distributed`
  reads them and joins the group (NCCL on GPUs, gloo on the CPU).
- ``python tools/train_net.py --num-gpus 8 ...``: :func:`launch` spawns the 8 local
  processes itself, setting the same variables, so both paths share one code path.

Restarts under ``torchrun --max-restarts``: the group of a new attempt joins through a key
space of its own in the agent's store (:func:`_join_generation`), and a restarted run resumes
from OUTPUT_DIR even without ``--resume`` (:func:`decide_resume`).
"""
from __future__ import annotations

import datetime
import inspect
import logging
import os
import signal
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
from torch import nn

from detgn.utils import comm

logger = logging.getLogger(__name__)

__all__ = ["DistInfo", "init_distributed", "decide_resume", "restart_count", "launch", "seed_for_rank",
           "create_ddp_model"]


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    backend: str  # "" when not distributed
    # 1 for the first group of this torchrun job, n for its (n-1)-th re-formation (same store)
    generation: int = 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise RuntimeError(f"Environment variable {name}={value!r} must be an integer (set by torchrun)") from None


def restart_count() -> int:
    """``TORCHELASTIC_RESTART_COUNT``: how often torchrun restarted this node's workers (0: first start)."""
    return _env_int("TORCHELASTIC_RESTART_COUNT", 0)


# Why a new attempt joins under a key prefix of its own (evidence: torch 2.14, gloo, one node,
# `torchrun --max-restarts 1`, one worker killed by SIGKILL after the group formed). torchrun
# starts one TCPStore per job (static rendezvous: `StaticTCPRendezvous` makes it once; c10d
# rendezvous: the shared store of the round-0 rank-0 agent) and keeps it for every restart;
# workers join it as clients (TORCHELASTIC_USE_AGENT_STORE=True) with no per-attempt prefix
# (torch's `_create_c10d_store` assumes "a new TCPStore for every retry", which the agent does
# not make). The restarted workers found the dead attempt's keys still there:
#     attempt 1 rank 1: store keys before init: ['default_pg/0//cpu//0/0', 'default_pg/0//cpu//0/1', ...]
# those are gloo's full-mesh addresses of attempt 0's ranks; a new rank reads its peer's old
# address at once, connects to a process that is gone and fails with "Gloo connectFullMesh
# failed ... Connection refused" (NCCL's unique id is exchanged through the same keys: the
# NCCL twin). A prefix per attempt fixes it, but TORCHELASTIC_RESTART_COUNT cannot name the
# attempt on several nodes: an agent restarts its workers without counting when another node
# rejoins (a membership change), so two nodes can hold different counts (seen here with two c10d
# agents: restart count 0 on one, 1 on the other; pytorch/pytorch#108158, and #135712, the NCCL
# twin, whose fix was "a new TCPStore for every retry"). The ranks therefore agree on a fresh
# name by a handshake that stale keys cannot fool (every key a rank waits for holds a random
# token of its own process).
_JOIN = "detgn/join"


def _join_generation(store, rank: int, world_size: int, timeout_s: float) -> tuple:
    """Agree with every rank on a fresh key prefix for this formation of the group.

    Rank 0 draws a random name; every other rank posts a random request token and waits for
    the answer keyed by that token, which only a live rank 0 of this formation writes (it
    answers every token it sees until all ranks acknowledged the name). Returns
    ``(name, generation)``: generation counts the formations this store has seen (1: first).
    """
    deadline = time.monotonic() + timeout_s
    if rank != 0:
        token = uuid.uuid4().hex
        store.set(f"{_JOIN}/request/{rank}", token)
        store.wait([f"{_JOIN}/answer/{token}"], datetime.timedelta(seconds=timeout_s))
        name, generation = store.get(f"{_JOIN}/answer/{token}").decode().split(":")
        store.set(f"{_JOIN}/{name}/ack/{rank}", "1")
        return name, int(generation)
    generation = store.add(f"{_JOIN}/generations", 1)
    name = uuid.uuid4().hex
    answered = set()
    pending = set(range(1, world_size))
    while pending:
        for r in sorted(pending):
            if store.check([f"{_JOIN}/{name}/ack/{r}"]):
                pending.discard(r)
                continue
            if store.check([f"{_JOIN}/request/{r}"]):
                token = store.get(f"{_JOIN}/request/{r}").decode()
                if token not in answered:  # a stale token gets an answer nobody reads: harmless
                    store.set(f"{_JOIN}/answer/{token}", f"{name}:{generation}")
                    answered.add(token)
        if pending:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"Rank(s) {sorted(pending)} did not join the process group within {timeout_s:.0f} s "
                    "(DIST.TIMEOUT_SECONDS); are all nodes started with the same torchrun --nnodes / --nproc_per_node?"
                )
            time.sleep(0.01)
    return name, generation


def init_distributed(device: str = "cpu", *, timeout_s: float = 600.0) -> DistInfo:
    """Join the process group described by torchrun's environment variables.

    Args:
        device: ``MODEL.DEVICE``; ``cuda*`` with CUDA available selects NCCL and binds this
            process to GPU ``LOCAL_RANK``; anything else uses gloo.
        timeout_s: how long a collective waits for a missing rank before failing
            (``DIST.TIMEOUT_SECONDS``, whose default this is); also the limit for all ranks to join.

    Returns:
        this process's rank, world size, local rank, backend and generation. In a plain
        ``python`` run (``WORLD_SIZE`` unset or 1, not under torchrun) nothing is initialised
        and ``(0, 1, 0, "")`` is returned.
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
    timeout = datetime.timedelta(seconds=float(timeout_s))
    # The store env:// would use (torchrun's agent store, or one rank 0 serves), under a fresh prefix.
    base, _, _ = next(dist.rendezvous("env://", rank=rank, world_size=world_size, timeout=timeout))
    name, generation = _join_generation(base, rank, world_size, float(timeout_s))
    dist.init_process_group(
        backend=backend,
        store=dist.PrefixStore(f"detgn/pg/{name}/", base),
        rank=rank,
        world_size=world_size,
        timeout=timeout,
    )
    comm.set_group_store(dist.PrefixStore(f"detgn/run/{name}/", base), timeout_s=float(timeout_s))
    restarts = restart_count()
    logger.info("Process group ready: rank %d of %d (local rank %d, %s, collective timeout %.0f s)%s", rank,
                world_size, local_rank, backend, float(timeout_s),
                f"; formation {generation} of this job (torchrun restart count {restarts})"
                if generation > 1 or restarts else "")
    return DistInfo(rank, world_size, local_rank, backend, generation)


def decide_resume(requested: bool, info: DistInfo) -> bool:
    """Whether this run resumes from OUTPUT_DIR: when asked (``--resume``), or when torchrun
    restarted the job (a restart count > 0 on any rank, or an earlier formation of the group
    in this job's store). Collective when distributed: every rank takes the same decision."""
    restarted = restart_count() > 0 or info.generation > 1
    if comm.get_world_size() > 1:
        restarted = True in comm.all_gather(restarted)
    if restarted and not requested:
        logger.warning("torchrun restarted this job (restart count %d, group formation %d): resuming from the "
                       "newest checkpoint of OUTPUT_DIR although --resume was not given", restart_count(),
                       info.generation)
    return requested or restarted


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
    context = mp.start_processes(
        _spawned_worker,
        args=(main_fn, num_processes, port, tuple(args)),
        nprocs=num_processes,
        join=False,
        start_method="spawn",
    )
    previous = _forward_sigterm(context.processes)
    try:
        # After a process fails, the others get SPAWN_GRACE_S to end (e.g. to finish a save).
        while not context.join(grace_period=SPAWN_GRACE_S):
            pass
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return None


# Seconds the other processes get to end by themselves once one of them has exited with an error.
SPAWN_GRACE_S = 10.0


def _forward_sigterm(processes):
    """SIGTERM to this (parent) process goes on to ``processes``, which checkpoint and exit with
    status 143: a scheduler that signals only the first process of a container (Kubernetes) would
    otherwise kill the parent and leave them running. Returns the previous handler (None outside
    the main thread, where nothing is installed)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def forward(signum, frame):
        for p in processes:
            if p.is_alive():
                os.kill(p.pid, signum)

    return signal.signal(signal.SIGTERM, forward)
