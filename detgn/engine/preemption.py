"""SIGTERM (a scheduler's stop, a spot reclaim): finish the step, checkpoint it, exit "requeue me".

- The first SIGTERM asks for a stop (:func:`detgn.utils.stop.request`). Every rank learns it
  at the next step boundary (:class:`StopAtRequest`, one all_reduce of one integer per step),
  so all stop after the same step; the trainer then saves that step's checkpoint (atomic, as
  every checkpoint) and the process exits with :data:`REQUEUE_EXIT_CODE`.
- A signal that lands in an evaluation or a PreciseBN pass ends it at the next batch (both
  loops poll :func:`detgn.utils.stop.requested`); the checkpoint is the same.
- A second SIGTERM more than ``DUPLICATE_WINDOW_S`` after the first, or no exit within the
  grace limit (``DIST.PREEMPT_GRACE_SECONDS``), ends the process at once with the same code:
  the newest periodic checkpoint is then where the next start resumes.
- Once training has failed (e.g. a peer died and torchrun is tearing the group down), a
  SIGTERM, received or to come, ends the process at once with status 1.
- DataLoader workers ignore a SIGTERM from anyone but their training process
  (:func:`detgn.utils.stop.ignore_stop_signals`, every loader's ``worker_init_fn``): a scheduler
  that signals every process of the job (Slurm's cgroup) would otherwise kill them first, and
  the main process would fail on its next batch before it could save.

The signal is seen by a watcher thread through :func:`signal.set_wakeup_fd`, written by the C
handler the moment it arrives: a main thread blocked in a collective or a long kernel does
not delay the grace timer or a second signal.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from typing import Optional

from detgn.utils import comm, stop

from .trainer import HookBase

logger = logging.getLogger(__name__)

__all__ = ["REQUEUE_EXIT_CODE", "PreemptionHandler", "StopAtRequest"]

# 128 + SIGTERM: what a process killed by SIGTERM reports, and what schedulers read as "stopped
# from outside, run it again": Kubeflow's ExitCode restart policy retries 130, 137 and 143 and
# gives up on 1 and 2; a Kubernetes podFailurePolicy or a Slurm batch script can match 143 (see
# docs/multinode.md). Code 1 stays "failed": a requeue loop must not retry a bug.
REQUEUE_EXIT_CODE = 128 + int(signal.SIGTERM)

# Copies of one SIGTERM within this many seconds are one request: Slurm signals every process
# of the step and torchrun forwards its own SIGTERM to its workers, so a worker gets two at once.
DUPLICATE_WINDOW_S = 2.0
# The status of a forced exit once training has failed (as the failure would give).
FAILED_EXIT_CODE = 1


class PreemptionHandler:
    """Turns SIGTERM into a stop request (see the module docstring); :meth:`install` in the
    main thread, :meth:`uninstall` when the run is over.

    Args:
        grace_s: seconds from the first SIGTERM to a forced exit (0: no limit).
        exit_code: the status of a forced exit (the graceful one is set by the caller).
    """

    def __init__(self, *, grace_s: float, exit_code: int = REQUEUE_EXIT_CODE):
        self.grace_s = float(grace_s)
        self.exit_code = int(exit_code)
        self.first_at: Optional[float] = None
        self.abandoned = False  # the run failed: a SIGTERM ends the process at once
        self._saved = None
        self._sockets = None
        self._timer: Optional[threading.Timer] = None
        self._thread: Optional[threading.Thread] = None

    def install(self) -> bool:
        """Start handling SIGTERM; False (and nothing done) outside the main thread."""
        if threading.current_thread() is not threading.main_thread():
            logger.info("SIGTERM handling not installed: not in the main thread")
            return False
        stop.reset()
        reader, writer = socket.socketpair()
        writer.setblocking(False)
        self._sockets = (reader, writer)
        old_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        # A Python handler must exist for the C handler to write to the wakeup fd; the work is
        # the watcher's, which runs even while the main thread waits in C++.
        old_handler = signal.signal(signal.SIGTERM, lambda signum, frame: None)
        self._saved = (old_fd, old_handler)
        self._thread = threading.Thread(target=self._watch, name="detgn-sigterm", daemon=True)
        self._thread.start()
        stop.set_abandon_handler(self._abandon)
        return True

    def uninstall(self) -> None:
        """Restore the previous SIGTERM handling. A grace timer already running keeps running:
        the process is on its way out, and the limit holds until it is gone."""
        if self._saved is None:
            return
        old_fd, old_handler = self._saved
        stop.set_abandon_handler(None)
        signal.signal(signal.SIGTERM, old_handler)
        signal.set_wakeup_fd(old_fd)
        for s in self._sockets:
            s.close()
        self._saved = None

    def _watch(self) -> None:
        reader = self._sockets[0]
        while True:
            try:
                data = reader.recv(64)
            except OSError:
                return
            if not data:
                return
            for signum in data:
                if signum == signal.SIGTERM:
                    self._on_sigterm()

    def _abandon(self) -> None:
        # The training failed (e.g. a peer died and torchrun is tearing the group down): a
        # SIGTERM already received, or one to come, must not wait for a checkpoint.
        self.abandoned = True
        if self.first_at is not None:
            self._force_exit("SIGTERM received and training failed", FAILED_EXIT_CODE)

    def _on_sigterm(self) -> None:
        comm.interrupt_diagnosis()  # a collective that failed meanwhile reports without waiting
        now = time.monotonic()
        if self.abandoned:
            self._force_exit("SIGTERM received after training failed", FAILED_EXIT_CODE)
        elif self.first_at is None:
            self.first_at = now
            stop.request("SIGTERM")
            limit = f"within {self.grace_s:.0f} s (DIST.PREEMPT_GRACE_SECONDS)" if self.grace_s > 0 else "(no limit)"
            logger.warning("SIGTERM received: finishing the current step, then saving a checkpoint and exiting %s; "
                           "a second SIGTERM exits at once", limit)
            if self.grace_s > 0:
                self._timer = threading.Timer(self.grace_s, self._force_exit,
                                              args=(f"no checkpoint written within {self.grace_s:.0f} s of SIGTERM "
                                                    "(DIST.PREEMPT_GRACE_SECONDS)",))
                self._timer.daemon = True
                self._timer.start()
        elif now - self.first_at > DUPLICATE_WINDOW_S:
            self._force_exit("a second SIGTERM")

    def _force_exit(self, why: str, code: Optional[int] = None) -> None:
        code = self.exit_code if code is None else code
        logger.error("Exiting at once with status %d: %s; the next start resumes from the newest checkpoint",
                     code, why)
        for h in logging.getLogger("detgn").handlers:
            try:
                h.flush()
            except Exception:
                pass
        sys.stderr.flush()
        os._exit(code)


class StopAtRequest(HookBase):
    """After each step: every rank agrees whether a stop was requested anywhere, and raises
    :class:`detgn.utils.stop.StopRequested` together (the trainer saves that step and re-raises).

    Registered after the periodic checkpointer (a step it saved is not saved twice) and before
    the evaluation (a stop is not delayed by one). Costs one all_reduce of one integer per step.
    The message says in which iteration this rank noticed the request: the stop is after that one.
    """

    noticed: Optional[int] = None  # the iteration during which this rank saw its own request

    def before_step(self) -> None:
        if self.noticed is None and stop.requested_here():
            self.noticed = self.trainer.iter

    def after_step(self) -> None:
        it = self.trainer.iter
        if self.noticed is None and stop.requested_here():
            self.noticed = it
        with comm.collective(f"the end of iteration {it}"):
            agreed = stop.agreed()
        if agreed:
            if self.noticed is None and stop.requested_here():
                self.noticed = it  # it came during the agreement itself
            where = f" in iteration {self.noticed}" if self.noticed is not None else ""
            raise stop.StopRequested(f"{stop.reason()}{where}, stopping after iteration {it}")
