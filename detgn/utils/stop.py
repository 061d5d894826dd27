"""A request to stop the run soon (SIGTERM from a scheduler or a spot reclaim), shared by all ranks.

:mod:`detgn.engine.preemption` turns the signal into :func:`request`; the training loop then
stops every rank at the same step (:func:`agreed`, a collective at each step boundary) and
checkpoints it. Long loops that are not training steps (evaluation, PreciseBN) poll
:func:`requested` between batches and leave early, then call :func:`agreed` once where every
rank arrives, so a signal that lands in them is serviced in a batch's time, not at their end.

A request seen by one rank only reaches the others two ways: through :func:`agreed` at the
next common point, and through a key in the group's store, which :func:`requested` polls so
that a rank in the middle of a long loop leaves it too.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from typing import Callable, Optional

import torch
import torch.distributed as dist

from . import comm

__all__ = ["StopRequested", "request", "requested", "requested_here", "reason", "agreed", "abandon", "set_abandon_handler",
           "reset", "ignore_stop_signals"]

_KEY = "stop_requested"
# Seconds between two looks at the group's store from requested() (each is one round trip).
_POLL_S = 0.5


class StopRequested(BaseException):
    """Raised on every rank at the same point once a stop was requested (a BaseException, like
    KeyboardInterrupt, so that no ``except Exception`` on its way swallows it)."""


_local = threading.Event()
_reason: Optional[str] = None
_published = False
_last_poll = 0.0
_seen_in_store = False
_on_abandon: Optional[Callable[[], None]] = None


def request(reason: str) -> None:
    """Ask the run to stop at the next step boundary (thread-safe; called from the signal watcher)."""
    global _reason
    if not _local.is_set():
        _reason = reason
        _local.set()


def requested_here() -> bool:
    """Whether this process was asked to stop (no communication)."""
    return _local.is_set()


def reason() -> str:
    return _reason or "a stop request of another rank"


def requested() -> bool:
    """Whether any rank was asked to stop, as far as this one can tell without a collective.

    A local request is published to the group's store; another rank's is read from it at most
    every ``_POLL_S`` seconds. Call it between batches of long loops.
    """
    global _published, _last_poll, _seen_in_store
    store = comm.group_store()
    if _local.is_set():
        if store is not None and not _published:
            try:
                store.set(_KEY, "1")
            except Exception:  # the store is gone: the collective agreement still spreads the request
                pass
            _published = True
        return True
    if store is None or _seen_in_store:
        return _seen_in_store
    now = time.monotonic()
    if now - _last_poll >= _POLL_S:
        _last_poll = now
        try:
            _seen_in_store = store.check([_KEY])
        except Exception:
            return False
    return _seen_in_store


def agreed() -> bool:
    """Collective: True on every rank when any rank was asked to stop (or saw it in the store).

    One all_reduce of one integer (every rank must call it at the same point)."""
    flag = _local.is_set() or _seen_in_store
    if comm.get_world_size() == 1:
        return flag
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([int(flag)], dtype=torch.int32, device=device)
    with comm.collective("all_reduce of the stop flag"):
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def set_abandon_handler(fn: Optional[Callable[[], None]]) -> None:
    """``fn()`` is called by :func:`abandon` (the signal handler's: exit now if a signal came)."""
    global _on_abandon
    _on_abandon = fn


def abandon() -> None:
    """The run failed and can no longer stop gracefully: a stop request, pending or to come,
    should end the process at once instead of waiting for a checkpoint that will not come."""
    if _on_abandon is not None:
        _on_abandon()


def reset() -> None:
    """Forget any request (a new run in the same process, tests)."""
    global _reason, _published, _last_poll, _seen_in_store
    _local.clear()
    _reason, _published, _last_poll, _seen_in_store = None, False, 0.0, False


def ignore_stop_signals(worker_id: int = 0) -> None:
    """``worker_init_fn`` of DataLoader workers: leave SIGTERM and SIGINT to the main process.

    A scheduler that signals every process of a job (Slurm's cgroup) would otherwise kill the
    workers first, and the main process would fail on its next batch before it could save. The
    DataLoader's own SIGTERM still ends a worker: when a worker does not leave at shutdown, its
    parent terminates it (and waits for it), so a SIGTERM sent by the parent exits at once, as
    torch's own worker handler does; any other sender's is ignored. A worker also ends when the
    main process is gone (the DataLoader's watchdog)."""
    signal.set_wakeup_fd(-1)  # a fork inherits the parent's; a worker must not write into it
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Blocked in this thread and in every thread it starts; one thread takes each SIGTERM with
    # its sender (a Python signal handler is not told who sent it).
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    threading.Thread(target=_exit_on_parents_sigterm, args=(os.getppid(),), name="detgn-sigterm",
                     daemon=True).start()


def _exit_on_parents_sigterm(parent: int) -> None:
    while True:
        info = signal.sigwaitinfo({signal.SIGTERM})
        if info.si_pid == parent:
            os._exit(0)
