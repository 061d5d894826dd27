"""One worker of a toy run under torchrun, as tools/train_net.py runs one: the engine's group
set-up (init_distributed), restart -> resume decision, SIGTERM handling, the real trainer and
hooks, a DataLoader with worker processes, and optionally a slow evaluation or PreciseBN pass.

    torchrun --nproc_per_node 2 tests/engine/torchrun_toy.py OUT [--resume] [--kill-rank R --kill-after N]
        [--sleep S] [--workers W] [--eval-period P] [--precise-bn-period P] [--slow-batches B] [--timeout T]

Each rank writes ``OUT/progress.rank{r}`` (iterations done) after every step and
``OUT/phase.rank{r}`` ("eval" / "precise_bn") when a slow pass begins; the exit status is
printed as ``exit status N (rank r)`` before the process exits with it.
"""
import argparse
import os
import signal
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from engine_toys import ToyModel, toy_cfg, toy_loader_fn  # noqa: E402

from detgn.engine import HookBase, build_trainer, init_distributed  # noqa: E402
from detgn.engine.launch import decide_resume, restart_count  # noqa: E402
from detgn.engine.preemption import REQUEUE_EXIT_CODE, PreemptionHandler  # noqa: E402
from detgn.evaluation import inference_on_dataset  # noqa: E402
from detgn.utils import comm  # noqa: E402
from detgn.utils.errors import UserError  # noqa: E402
from detgn.utils.file_io import atomic_write_text  # noqa: E402
from detgn.utils.logger import setup_logger  # noqa: E402
from detgn.utils.seed import seed_all_rng  # noqa: E402
from detgn.utils.stop import StopRequested, ignore_stop_signals  # noqa: E402

# 2 processes x 1 image = the toy reference batch of 2: the schedule is not rescaled.
OVERRIDES = {"SOLVER.MAX_ITER": 12, "SOLVER.STEPS": (8,), "SOLVER.IMS_PER_GPU": 1, "SOLVER.CHECKPOINT_PERIOD": 3}


class ToyStream(Dataset):
    """Batch ``k`` of the toy stream at index ``k``, for a DataLoader with worker processes."""

    def __init__(self, rank: int):
        self.make = toy_loader_fn(ims_per_batch=1, rank=rank)

    def __getitem__(self, k):
        return next(iter(self.make(k)))

    def __len__(self):
        return 1 << 30


class Progress(HookBase):
    def __init__(self, out: str, rank: int, sleep_s: float, kill_rank: int, kill_after: int):
        self.path = os.path.join(out, f"progress.rank{rank}")
        self.rank, self.sleep_s, self.kill_rank, self.kill_after = rank, sleep_s, kill_rank, kill_after

    def before_step(self):
        time.sleep(self.sleep_s)  # in the step: a signal now is serviced at this step's end

    def after_step(self):
        done = self.trainer.iter + 1
        atomic_write_text(self.path, str(done))
        if self.rank == self.kill_rank and done == self.kill_after and restart_count() == 0:
            os.kill(os.getpid(), signal.SIGKILL)  # a worker lost half-way, after its step


def slow_batches(out: str, rank: int, phase: str, n: int):
    """``n`` toy batches, 0.3 s each; marks ``phase`` when the first is asked for."""
    atomic_write_text(os.path.join(out, f"phase.rank{rank}"), phase)
    make = toy_loader_fn(ims_per_batch=1, rank=rank, seed=1)
    for k, batch in zip(range(n), make(0)):
        time.sleep(0.3)
        yield batch


class EvalModel(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, batch):
        return [{} for _ in batch]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--kill-rank", type=int, default=-1)
    p.add_argument("--kill-after", type=int, default=-1)
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--eval-period", type=int, default=0)
    p.add_argument("--precise-bn-period", type=int, default=0)
    p.add_argument("--slow-batches", type=int, default=40)
    p.add_argument("--timeout", type=float, default=60.0)
    args = p.parse_args()
    torch.set_num_threads(1)
    overrides = dict(OVERRIDES)
    overrides["DIST.TIMEOUT_SECONDS"] = args.timeout
    if args.precise_bn_period:
        overrides.update({"TEST.PRECISE_BN.ENABLED": True, "TEST.PRECISE_BN.NUM_ITER": args.slow_batches,
                          "TEST.EVAL_PERIOD": args.precise_bn_period})
    if args.eval_period:
        overrides["TEST.EVAL_PERIOD"] = args.eval_period
    cfg = toy_cfg(args.out, **overrides)
    info = init_distributed("cpu", timeout_s=cfg.DIST.TIMEOUT_SECONDS)
    setup_logger(args.out, rank=info.rank)
    resume = decide_resume(args.resume, info)
    handler = PreemptionHandler(grace_s=cfg.DIST.PREEMPT_GRACE_SECONDS)
    handler.install()
    seed_all_rng(info.rank)
    model = ToyModel()
    loader = lambda start: DataLoader(ToyStream(info.rank), batch_size=None, sampler=range(start, 1 << 30),  # noqa: E731
                                      num_workers=args.workers, worker_init_fn=ignore_stop_signals)
    eval_fn = None
    if args.eval_period:
        eval_fn = lambda: inference_on_dataset(EvalModel(model), slow_batches(args.out, info.rank, "eval",  # noqa: E731
                                                                              args.slow_batches), None)
    trainer = build_trainer(
        cfg, model, data_loader_fn=loader, eval_fn=eval_fn, writers=[],
        precise_bn_data_fn=lambda: slow_batches(args.out, info.rank, "precise_bn", args.slow_batches),
    )
    trainer.register_hooks([Progress(args.out, info.rank, args.sleep, args.kill_rank, args.kill_after)])
    code = 0
    try:
        trainer.resume_or_load("", resume=resume)
        trainer.train()
    except StopRequested:
        code = REQUEUE_EXIT_CODE
    except UserError as e:  # as tools/train_net.py: the message alone
        print(f"Error (rank {info.rank}): {e}", file=sys.stderr, flush=True)
        code = 1
    finally:
        handler.uninstall()
    print(f"exit status {code} (rank {info.rank}, {comm.get_world_size()} processes)", flush=True)
    sys.stdout.flush()
    os._exit(code)  # no destroy_process_group: a peer may be gone


if __name__ == "__main__":
    main()
