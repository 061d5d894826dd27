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
