"""Real torchrun jobs of 2 gloo workers (tests/engine/torchrun_toy.py: the engine's group set-up,
restart -> resume decision, SIGTERM handling, trainer and hooks on the toy model), each a few
seconds: a worker killed under --max-restarts, SIGTERM to the whole job (DataLoader workers
included), to one rank between steps, to one rank during an evaluation, during PreciseBN, and a
rank stopped with SIGSTOP. Final weights are compared with one uninterrupted run of the same job.
"""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SCRIPT = HERE / "torchrun_toy.py"
MAX_ITER = 12  # torchrun_toy.OVERRIDES: 12 iterations, a checkpoint every 3


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(out: Path, *args, restarts: int = 0) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--max-restarts", str(restarts), "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "--monitor-interval", "0.2", str(SCRIPT), str(out), *[str(a) for a in args]]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT"):
        env.pop(var, None)
    out.mkdir(parents=True, exist_ok=True)
    log = open(out.parent / f"{out.name}.console.txt", "a")
    try:
        # A process group of its own (setsid): the test can signal the whole job, as a scheduler does.
        return subprocess.Popen(cmd, env=env, cwd=str(REPO), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    finally:
        log.close()


def _finish(proc: subprocess.Popen, out: Path, timeout: float = 120) -> str:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        for pid in _tree(proc.pid):
            _signal(pid, signal.SIGKILL)
        proc.wait()
        pytest.fail(f"torchrun ran past {timeout} s:\n{_console(out)[-4000:]}")
    return _console(out)


def _console(out: Path) -> str:
    return (out.parent / f"{out.name}.console.txt").read_text()


def _logs(out: Path) -> str:
    return "".join(p.read_text() for p in sorted(out.glob("log.txt*")))


def _tree(root: int):
    """``root`` and all its descendants (from /proc), parents first."""
    children = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    order, todo = [], [root]
    while todo:
        pid = todo.pop(0)
        order.append(pid)
        todo.extend(children.get(pid, []))
    return order


def _signal(pid: int, sig) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _worker_pids(proc: subprocess.Popen):
    """{rank: pid} of the job's training processes (torchrun's children; RANK from their environment)."""
    pids = {}
    for pid in _tree(proc.pid)[1:]:
        try:
            if int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) != proc.pid:
                continue
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        ranks = [e[5:].decode() for e in env if e.startswith(b"RANK=")]
        if ranks:
            pids[int(ranks[0])] = pid
    return pids


def _wait_for(cond, proc, out, what: str, timeout: float = 90):
    deadline = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            pytest.fail(f"the job ended before {what}:\n{_console(out)[-4000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {timeout} s:\n{_console(out)[-4000:]}")
        time.sleep(0.05)


def _progress(out: Path, rank: int = 0) -> int:
    try:
        return int((out / f"progress.rank{rank}").read_text())
    except (OSError, ValueError):
        return 0


def _phase(out: Path, rank: int) -> str:
    try:
        return (out / f"phase.rank{rank}").read_text()
    except OSError:
        return ""


def _final(out: Path):
    return torch.load(out / "model_final.pth", weights_only=True)["model"]


def _pointed(out: Path):
    name = (out / "last_checkpoint").read_text().strip()
    return name, torch.load(out / name, weights_only=True)["iteration"]


def _assert_same_weights(actual, expected):
    assert actual.keys() == expected.keys()
    worst = max(float((actual[k].double() - expected[k].double()).abs().max()) for k in expected if actual[k].numel())
    assert worst <= 1e-5, worst


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The final weights of the same job, uninterrupted."""
    out = tmp_path_factory.mktemp("resilience") / "reference"
    text = _finish(_start(out), out)
    assert text.count("exit status 0") == 2, text[-4000:]
    return _final(out)


def test_worker_killed_under_max_restarts_resumes_to_the_uninterrupted_weights(tmp_path, reference):
    out = tmp_path / "run"
    # Rank 1 SIGKILLs itself after iteration 7 of the first attempt (the last checkpoint: 6).
    text = _finish(_start(out, "--kill-rank", 1, "--kill-after", 7, restarts=1), out)
    assert "exitcode: -9" in text and "local_rank: 1" in text, text[-4000:]
    assert text.count("exit status 0") == 2, text[-4000:]  # the restarted group finished
    logs = _logs(out)
    assert "torchrun restarted this job (restart count 1, group formation 2)" in logs
    assert "resuming from the newest checkpoint of OUTPUT_DIR although --resume was not given" in logs
    assert "Resuming from" in logs and "model_0000005.pth: 6 iterations done" in logs
    _assert_same_weights(_final(out), reference)


def test_sigterm_to_the_whole_job_checkpoints_the_current_step_and_resumes_exactly(tmp_path, reference):
    out = tmp_path / "run"
    proc = _start(out, "--sleep", 0.3, "--workers", 1)
    _wait_for(lambda: _progress(out) >= 4, proc, out, "4 iterations")
    before = _progress(out)
    # As Slurm does: every process of the job, torchrun, its workers and their DataLoader workers.
    tree = _tree(proc.pid)
    assert len(tree) >= 5, "torchrun, 2 workers and a DataLoader worker each"
    for pid in tree:
        _signal(pid, signal.SIGTERM)
    text = _finish(proc, out, timeout=60)
    logs = _logs(out)
    assert text.count("exit status 143") == 2, text[-4000:]  # both ranks: saved, "requeue me"
    assert logs.count("SIGTERM received") == 2 and "Exiting at once" not in logs, logs[-4000:]
    name, iteration = _pointed(out)
    # Each rank stops after the iteration during which it saw the signal, and that one is saved.
    stops = re.findall(r"Training stopped \(SIGTERM in iteration (\d+), stopping after iteration (\d+)\) "
                       r"with (\d+) of", logs)
    assert len(stops) == 2 and all(a == b == stops[0][0] for a, b, _ in stops), stops
    assert iteration == int(stops[0][2]) == int(stops[0][0]) + 1 and before + 1 <= iteration, (stops, before)
    assert iteration < MAX_ITER and not (out / "model_final.pth").exists()
    # The next start (a requeued job: --resume) ends at the uninterrupted weights.
    text = _finish(_start(out, "--resume"), out)
    assert text.count("exit status 0") == 2, text[-4000:]  # (the console holds both starts)
    assert f"Resuming from {out / name}" in _logs(out)
    _assert_same_weights(_final(out), reference)


def test_sigterm_to_one_rank_stops_every_rank_after_the_same_step(tmp_path):
    out = tmp_path / "run"
    proc = _start(out, "--sleep", 0.3)
    _wait_for(lambda: _progress(out) >= 4, proc, out, "4 iterations")
    _signal(_worker_pids(proc)[0], signal.SIGTERM)  # rank 0 only (e.g. its node is reclaimed)
    text = _finish(proc, out, timeout=60)
    assert text.count("exit status 143") == 2, text[-4000:]
    stopped = re.findall(r"Training stopped \((.*), stopping after iteration (\d+)\) with (\d+) of", _logs(out))
    assert len(stopped) == 2 and stopped[0][1:] == stopped[1][1:], stopped  # the same step on both ranks
    assert sorted(r for r, _, _ in stopped) == ["SIGTERM in iteration " + stopped[0][1], "a stop request of another rank"]
    assert _pointed(out)[1] == int(stopped[0][2])


def test_sigterm_to_one_rank_during_evaluation_stops_both_ranks_at_once(tmp_path):
    out = tmp_path / "run"
    # Evaluation after 4 iterations takes 100 batches x 0.3 s = 30 s on each rank.
    proc = _start(out, "--eval-period", 4, "--slow-batches", 100)
    _wait_for(lambda: _phase(out, 1) == "eval" and _phase(out, 0) == "eval", proc, out, "the evaluation")
    signalled = time.monotonic()
    _signal(_worker_pids(proc)[1], signal.SIGTERM)  # rank 1 only: rank 0 learns it from the store
    text = _finish(proc, out, timeout=60)
    elapsed = time.monotonic() - signalled
    assert elapsed < 20, f"{elapsed:.1f} s: the evaluation was not cut short"
    assert text.count("exit status 143") == 2, text[-4000:]
    logs = _logs(out)
    assert logs.count("Inference stopped after") == 2
    assert logs.count("during inference") == 2  # both ranks stopped at the same point
    assert _pointed(out) == ("model_0000003.pth", 4)  # iteration 4 was not a periodic save: saved now


def test_sigterm_during_precise_bn_is_serviced(tmp_path):
    out = tmp_path / "run"
    proc = _start(out, "--precise-bn-period", 4, "--slow-batches", 100)  # 30 s of PreciseBN
    _wait_for(lambda: _phase(out, 0) == "precise_bn", proc, out, "PreciseBN")
    signalled = time.monotonic()
    for pid in _tree(proc.pid):
        _signal(pid, signal.SIGTERM)
    text = _finish(proc, out, timeout=60)
    assert time.monotonic() - signalled < 20, "PreciseBN was not cut short"
    assert text.count("exit status 143") == 2, text[-4000:]
    assert _logs(out).count("during PreciseBN") == 2
    assert _pointed(out) == ("model_0000003.pth", 4)


def test_a_stopped_rank_makes_the_other_fail_within_the_timeout_naming_it(tmp_path):
    out = tmp_path / "run"
    timeout_s = 3
    proc = _start(out, "--sleep", 0.2, "--timeout", timeout_s)
    _wait_for(lambda: _progress(out, 1) >= 3, proc, out, "3 iterations")
    victim = _worker_pids(proc)[1]
    for pid in _tree(victim):
        _signal(pid, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        _wait_for(lambda: "exit status 1 (rank 0" in _console(out), proc, out, "rank 0's failure", timeout=60)
        elapsed = time.monotonic() - stopped
    finally:
        for pid in _tree(victim):
            _signal(pid, signal.SIGKILL)
    text = _finish(proc, out, timeout=60)
    # The timeout, then 3.5 s to tell a stopped rank (no heartbeat) from a slow one, and slack.
    assert elapsed < timeout_s + 3.5 + 15, elapsed
    m = re.search(r"Error \(rank 0\): (.*) failed on rank 0 of 2 \(collective timeout 3 s, DIST.TIMEOUT_SECONDS\):\n"
                  r"\s+rank 1 is not responding", text)
    assert m, text[-4000:]
    assert "iteration" in m.group(1), m.group(1)  # the collective is named with its iteration
