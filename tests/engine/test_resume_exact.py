"""Resume continues exactly: 10 iterations in one go == 7, stop, resume (last checkpoint 6) to 10."""
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from engine_toys import StopRun, make_toy_trainer, single_thread, stop_after  # noqa: E402,F401

from detgn.utils.events import JSONWriter, read_metrics  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same(a, b, exact=True):
    assert a.keys() == b.keys()
    for k in a:
        if exact:
            assert torch.equal(a[k], b[k]), f"{k} differs by {(a[k].float() - b[k].float()).abs().max()}"
        else:
            torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-7, msg=k)


@pytest.mark.parametrize("bf16", ["off", "on"])  # CPU.BF16 on: emulated where the CPU has no bf16
def test_run_10_equals_run_6_then_resume(tmp_path, bf16):
    draws = []

    def eval_fn():
        # Evaluation that draws from every global RNG must not change the training run.
        draws.append((torch.rand(1).item(), random.random(), np.random.rand()))
        return {"bbox": {"AP": 50.0 + len(draws)}}

    full = make_toy_trainer(tmp_path / "full", eval_fn=eval_fn, **{"TEST.EVAL_PERIOD": 3, "CPU.BF16": bf16})
    assert full.bf16 is (bf16 == "on")
    full.resume_or_load("", resume=True)
    full.train()
    assert len(draws) == 4  # after 3, 6, 9 and the final 10
    expected = _weights(full.toy_model)

    out = tmp_path / "interrupted"
    first = make_toy_trainer(out, writers=[JSONWriter(str(out / "metrics.json"))], **{"CPU.BF16": bf16})
    first.register_hooks([stop_after(7)])  # dies after 7 iterations; last checkpoint holds 6
    first.resume_or_load("", resume=True)
    with pytest.raises(StopRun):
        first.train()
    assert (out / "last_checkpoint").read_text().strip() == "model_0000005.pth"
    assert max(r["iteration"] for r in read_metrics(str(out / "metrics.json"))) == 6

    # Whatever happened to the global RNGs in between is undone by the resume.
    random.seed(123)
    np.random.seed(123)
    torch.manual_seed(123)
    second = make_toy_trainer(out, seed=99, writers=[JSONWriter(str(out / "metrics.json"))], **{"CPU.BF16": bf16})
    assert second.resume_or_load("", resume=True) == 6
    second.train()
    _assert_same(expected, _weights(second.toy_model))
    its = [r["iteration"] for r in read_metrics(str(out / "metrics.json"))]
    assert its == sorted(set(its)) and its[-1] == 9  # each iteration once, through the end
    assert torch.equal(
        torch.load(out / "model_final.pth", weights_only=True)["model"]["fc.weight"], expected["fc.weight"]
    )
