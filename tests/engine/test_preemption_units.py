"""The pieces of restarts and preemption, without torchrun: the group-join handshake against a
store holding a dead attempt's keys, the restart -> resume decision, the forced exits of the
SIGTERM handler (a second signal, the grace limit) and the exit status of a stopped run."""
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from detgn.engine.launch import DistInfo, _free_port, _join_generation, decide_resume

REPO = Path(__file__).resolve().parents[2]


def _join_all(port, world_size, *, order, timeout_s=20.0):
    """Each rank joins from its own thread and store client, in ``order`` (rank 0's place in it
    decides whether the other ranks' requests are fresh or stale when it looks)."""
    results, errors = {}, []

    def join(rank):
        try:
            store = dist.TCPStore("127.0.0.1", port, None, False, timedelta(seconds=timeout_s))
            results[rank] = _join_generation(store, rank, world_size, timeout_s)
        except Exception as e:  # reported by the assertion below
            errors.append(e)

    threads = []
    for rank in order:
        t = threading.Thread(target=join, args=(rank,))
        t.start()
        threads.append(t)
        time.sleep(0.2)
    for t in threads:
        t.join(timeout_s + 5)
    assert not errors, errors
    return results


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 1, 0)], ids=["rank0_first", "rank0_last"])
def test_every_formation_agrees_on_a_fresh_name_whatever_a_dead_attempt_left(order):
    port = _free_port()
    server = dist.TCPStore("127.0.0.1", port, None, True, timedelta(seconds=30), wait_for_workers=False)  # torchrun's
    first = _join_all(port, 3, order=(0, 1, 2))
    assert len({v for v in first.values()}) == 1 and first[0][1] == 1
    # The dead attempt's requests and answers stay in the store; a new formation must not use them.
    second = _join_all(port, 3, order=order)
    names = {name for name, _ in second.values()}
    assert len(names) == 1 and names != {first[0][0]}, (first, second)
    assert {g for _, g in second.values()} == {2}
    del server


def test_a_rank_that_never_joins_is_named():
    port = _free_port()
    store = dist.TCPStore("127.0.0.1", port, None, True, timedelta(seconds=30), wait_for_workers=False)
    with pytest.raises(RuntimeError, match=r"Rank\(s\) \[1\] did not join the process group within 1 s"):
        _join_generation(store, 0, 2, 1.0)


def test_a_restarted_job_resumes_without_being_asked(monkeypatch):
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT", raising=False)
    first = DistInfo(0, 1, 0, "")
    assert decide_resume(False, first) is False and decide_resume(True, first) is True
    assert decide_resume(False, DistInfo(0, 1, 0, "gloo", generation=2)) is True  # re-formed in this job
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert decide_resume(False, first) is True


HANDLER_SCRIPT = """
import sys, time
from detgn.engine.preemption import PreemptionHandler
from detgn.utils.logger import setup_logger
setup_logger()
PreemptionHandler(grace_s=float(sys.argv[1])).install()
print("READY", flush=True)
while True:  # a step that never ends: only the handler's forced exits can end this process
    time.sleep(0.05)
"""


def _start_handler(tmp_path, grace_s):
    script = tmp_path / "handler.py"
    script.write_text(HANDLER_SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, str(script), str(grace_s)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    assert proc.stdout.readline().strip() == "READY"
    return proc


def test_a_second_sigterm_exits_at_once_and_a_duplicate_does_not(tmp_path):
    proc = _start_handler(tmp_path, grace_s=600)
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGTERM)  # the copy torchrun forwards of the scheduler's signal
    time.sleep(1.0)
    assert proc.poll() is None, "a duplicate of the first SIGTERM must not force the exit"
    time.sleep(1.5)  # past DUPLICATE_WINDOW_S (2 s) since the first
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 143 and time.monotonic() - sent < 5, out
    assert "Exiting at once with status 143: a second SIGTERM" in out


def test_no_checkpoint_within_the_grace_limit_exits_at_once(tmp_path):
    proc = _start_handler(tmp_path, grace_s=1)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 143 and 1 <= time.monotonic() - sent < 10, out
    assert "no checkpoint written within 1 s of SIGTERM (DIST.PREEMPT_GRACE_SECONDS)" in out


def test_a_stopped_run_exits_with_the_requeue_status(monkeypatch):
    from detgn.engine import run
    from detgn.utils.stop import StopRequested

    def stopped(args):
        raise StopRequested("SIGTERM, after iteration 3")

    monkeypatch.setattr(run, "main", stopped)
    assert run.cli(["--config", "Base-RCNN-FPN.yaml"]) == 143


def test_num_gpus_parent_forwards_sigterm_to_its_processes():
    """`--num-gpus N`: a SIGTERM to the parent alone (Kubernetes signals a container's first process)
    reaches the training processes (which then checkpoint their step, as the torchrun tests show)."""
    from detgn.engine.launch import _forward_sigterm

    class Child:  # the two attributes launch() uses of a spawned process
        def __init__(self):
            self.popen = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
            self.pid = self.popen.pid

        def is_alive(self):
            return self.popen.poll() is None

    children = [Child(), Child()]
    previous = _forward_sigterm([c for c in children])
    try:
        signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)  # what SIGTERM to the parent runs
        assert [c.popen.wait(timeout=30) for c in children] == [-signal.SIGTERM] * 2
    finally:
        signal.signal(signal.SIGTERM, previous)
        for c in children:
            c.popen.kill()
    assert signal.getsignal(signal.SIGTERM) is previous


class _Numbers(torch.utils.data.Dataset):
    def __getitem__(self, k):
        return k

    def __len__(self):
        return 1 << 20


def test_dataloader_workers_ignore_an_outside_sigterm_but_not_their_parents():
    from detgn.utils.stop import ignore_stop_signals

    loader = torch.utils.data.DataLoader(_Numbers(), batch_size=None, num_workers=1,
                                         worker_init_fn=ignore_stop_signals)
    it = iter(loader)
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    worker = it._workers[0]
    subprocess.run(["kill", "-TERM", str(worker.pid)], check=True)  # a scheduler's signal
    time.sleep(0.5)
    assert worker.is_alive() and [next(it) for _ in range(3)] == [3, 4, 5]
    # The DataLoader's own shutdown terminates a worker that does not leave: that one must work.
    started = time.monotonic()
    worker.terminate()
    worker.join(timeout=30)
    assert worker.exitcode == 0 and time.monotonic() - started < 10
    del it
