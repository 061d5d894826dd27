"""Two real processes (gloo, CPU) through ``launch``: DDP wrapping, loss averaging, per-rank
RNG states in checkpoints, exact resume, rank-0-only files and per-rank logs."""
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from engine_toys import ddp_worker  # noqa: E402

from detgn.engine import launch  # noqa: E402


def test_two_process_gloo_training_and_resume(tmp_path, monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    launch(ddp_worker, 2, args=(str(tmp_path),))
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for res in results:
        assert res["world_size"] == 2 and res["backend"] == "gloo" and res["is_ddp"]
        assert res["start"] == 4  # the checkpoint after 4 iterations (period 2, stopped after 5)
        for k, v in res["full"].items():
            if k.startswith("bn.running"):
                continue  # BN statistics are per process by design (broadcast_buffers=False)
            assert torch.equal(v, res["resumed"][k]), k
    # DDP keeps the ranks' parameters identical.
    assert torch.equal(results[0]["full"]["fc.weight"], results[1]["full"]["fc.weight"])
    ckpt = torch.load(tmp_path / "part" / "model_0000003.pth", weights_only=True)
    assert ckpt["world_size"] == 2 and len(ckpt["rng_states"]) == 2
    assert not torch.equal(ckpt["rng_states"][0]["torch"], ckpt["rng_states"][1]["torch"])  # seed + rank
    assert (tmp_path / "part" / "log.txt").exists() and (tmp_path / "part" / "log.txt.rank1").exists()
    assert "Resuming from" in (tmp_path / "part" / "log.txt.rank1").read_text()


def test_torchrun_with_one_process_still_forms_a_group_and_wraps_ddp(monkeypatch):
    """`torchrun --nproc_per_node=1` runs the path of a many-GPU run (the group, DDP); a plain
    `python` run (no TORCHELASTIC_RUN_ID) makes no group."""
    import torch.distributed as dist
    from torch import nn

    from detgn.engine import create_ddp_model, init_distributed
    from detgn.engine.launch import _free_port

    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    assert init_distributed("cpu").backend == "" and not dist.is_initialized()
    model = nn.Linear(3, 2)
    assert create_ddp_model(model) is model
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert init_distributed("cpu").backend == "" and not dist.is_initialized()  # WORLD_SIZE=1 alone: plain
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")
    for var, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(_free_port()))):
        monkeypatch.setenv(var, value)
    try:
        info = init_distributed("cpu")
        assert (info.rank, info.world_size, info.backend) == (0, 1, "gloo") and dist.is_initialized()
        assert isinstance(create_ddp_model(model), nn.parallel.DistributedDataParallel)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
