"""torch.distributed helpers that also work in a plain one-process run.

With a process group, each process also publishes a heartbeat and the collective it is in
to the group's store (:func:`set_group_store`, called when the group forms), so a collective
that fails, e.g. by ``DIST.TIMEOUT_SECONDS`` because a rank stopped answering, fails with a
:class:`CollectiveError` that names the collective and the rank(s) at fault.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Any, Dict, Iterator, List, Optional

import torch
import torch.distributed as dist

from .errors import UserError

# Seconds between heartbeats (HEARTBEAT_MIN_S when the rank enters a collective, so that the
# last one says where it stopped); a rank is "not responding" when its count does not move for
# HEARTBEAT_STALE_S (a stopped, swapped-out or dead process; a live one beats every second).
HEARTBEAT_S = 1.0
HEARTBEAT_MIN_S = 0.2
HEARTBEAT_STALE_S = 3.5


class CollectiveError(UserError, RuntimeError):
    """A collective failed (a rank stopped answering, died, or the network broke); the message
    names the collective, this rank and the ranks that are not responding or behind."""


class _Watch:
    """This process's entry in the group's store: a heartbeat count and where it is."""

    def __init__(self, store, rank: int, world_size: int, timeout_s: float):
        self.store, self.rank, self.world_size, self.timeout_s = store, rank, world_size, timeout_s
        self.seq = 0  # collectives entered so far
        self.where = "start-up"
        self.stack: List[str] = []  # the names of the regions this rank is in, outermost first
        self._stop = threading.Event()
        self.cut_short = threading.Event()  # set by interrupt_diagnosis()
        self.moved = threading.Event()  # set when this rank enters a collective
        self._thread = threading.Thread(target=self._beat, name="detgn-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        count = 0
        while not self._stop.is_set():
            count += 1
            try:
                self.store.set(f"heartbeat/{self.rank}", f"{count}|{self.seq}|{self.where}")
            except Exception:  # the store is gone (the job is ending): nothing left to report to
                return
            # Once a second, or sooner (at most 5 times a second) when this rank enters a collective.
            self._stop.wait(HEARTBEAT_MIN_S)
            self.moved.wait(HEARTBEAT_S - HEARTBEAT_MIN_S)
            self.moved.clear()

    def close(self) -> None:
        self._stop.set()

    def peers(self) -> Dict[int, tuple]:
        """``{rank: (beat count, collectives entered, where)}`` of the ranks that published one."""
        out = {}
        for r in range(self.world_size):
            try:
                if self.store.check([f"heartbeat/{r}"]):
                    count, seq, where = self.store.get(f"heartbeat/{r}").decode().split("|", 2)
                    out[r] = (int(count), int(seq), where)
            except Exception:
                break
        return out

    def diagnose(self) -> str:
        """Which ranks are not responding (no heartbeat over HEARTBEAT_STALE_S) or behind this one."""
        before = self.peers()
        if self.cut_short.wait(HEARTBEAT_STALE_S):
            return "(not diagnosed: the process is being stopped)"
        after = self.peers()
        lines = []
        for r in range(self.world_size):
            if r == self.rank:
                continue
            if r not in after:
                lines.append(f"rank {r} never reported (it did not start, or the store is unreachable)")
                continue
            count, seq, where = after[r]
            if r in before and before[r][0] == count:
                lines.append(f"rank {r} is not responding (no heartbeat for {HEARTBEAT_STALE_S:.1f} s: stopped, "
                             f"hung outside Python or dead); its last heartbeat had it in {where}")
            elif seq < self.seq:
                lines.append(f"rank {r} is alive but behind (in {where}): deadlocked or much slower")
        return "\n  ".join(lines) if lines else "every other rank is alive and has reached this collective"


_WATCH: Optional[_Watch] = None
# Words of gloo's and NCCL's errors that DDP's reducer raises as a plain RuntimeError.
_DIST_MARKERS = ("gloo", "nccl", "connection", "timed out", "timeout", "peer")


def set_group_store(store, *, timeout_s: float) -> None:
    """Publish this process's heartbeat and collectives to ``store`` (a key space of the group's
    store, shared by all ranks); called once the process group exists."""
    global _WATCH
    if _WATCH is not None:
        _WATCH.close()
    _WATCH = _Watch(store, get_rank(), get_world_size(), timeout_s)


def interrupt_diagnosis() -> None:
    """A failed collective's diagnosis (a wait of HEARTBEAT_STALE_S) ends now: the process is
    being stopped (e.g. torchrun tearing the group down after a rank died) and should not wait."""
    if _WATCH is not None:
        _WATCH.cut_short.set()


def group_store():
    """The key space of this group in its store (None without a process group)."""
    return _WATCH.store if _WATCH is not None and is_dist() else None


@contextlib.contextmanager
def collective(name: str) -> Iterator[None]:
    """Mark a region holding collectives: a distributed error raised in it becomes a
    :class:`CollectiveError` naming ``name``, this rank, and the ranks at fault."""
    watch = _WATCH if is_dist() else None
    if watch is None:
        yield
        return
    watch.seq += 1
    watch.stack.append(name)
    name = ": ".join(watch.stack)
    watch.where = name
    watch.moved.set()
    try:
        yield
    except RuntimeError as e:  # dist.DistError, or a plain RuntimeError from gloo/NCCL (DDP's reducer)
        if not isinstance(e, dist.DistError) and not any(m in str(e).lower() for m in _DIST_MARKERS):
            raise
        lines = watch.diagnose()
        raise CollectiveError(
            f"{name} failed on rank {watch.rank} of {watch.world_size} (collective timeout "
            f"{watch.timeout_s:.0f} s, DIST.TIMEOUT_SECONDS):\n  {lines}\n"
            f"  ({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''})"
        ) from e
    finally:
        watch.stack.pop()
        watch.where = f"between collectives (the last: {name})"


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
        with collective("barrier"):
            dist.barrier()


def all_gather(obj: Any) -> List[Any]:
    """Gather any picklable object from every rank; a list indexed by rank."""
    if get_world_size() == 1:
        return [obj]
    out: List[Any] = [None] * get_world_size()
    with collective("all_gather_object"):
        dist.all_gather_object(out, obj)
    return out


def gather(obj: Any, dst: int = 0) -> List[Any]:
    """Gather to ``dst``: the list of every rank's object there, [] elsewhere."""
    if get_world_size() == 1:
        return [obj]
    out = [None] * get_world_size() if get_rank() == dst else None
    with collective("gather_object"):
        dist.gather_object(obj, out, dst=dst)
    return out if get_rank() == dst else []


def reduce_dict_mean(d: dict) -> dict:
    """Average a dict of scalar tensors over ranks (for logging)."""
    if get_world_size() == 1:
        return d
    keys = sorted(d)
    values = torch.stack([torch.as_tensor(d[k], dtype=torch.float32) for k in keys])
    with collective("all_reduce of the logged losses"):
        dist.all_reduce(values)
    values /= get_world_size()
    return dict(zip(keys, values))
