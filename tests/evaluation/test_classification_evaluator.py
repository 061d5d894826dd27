"""ClassificationEvaluator: top-1 / top-5 and per-class errors on hand-made logits, ties and
NaN count as errors, metrics.json, the inference loop, two real processes (gloo)."""
import json
import math
import os
import socket
import uuid

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from detgn.data import MetadataCatalog
from detgn.evaluation import ClassificationEvaluator, inference_on_dataset
from detgn.evaluation.classification import true_class_rank

CLASSES = ["ant", "bee", "cow", "dog", "eel", "fox"]  # K = 6


def _logits(order):
    """Logits (K,) ranking the classes as ``order`` (best first)."""
    out = torch.zeros(len(CLASSES))
    for position, c in enumerate(order):
        out[c] = float(len(CLASSES) - position)
    return out


# (label, logits, true-class rank): top-1 right iff rank 0, top-5 right iff rank < 5.
CASES = [
    (0, _logits([0, 1, 2, 3, 4, 5]), 0),
    (0, _logits([2, 0, 1, 3, 4, 5]), 1),
    (1, _logits([5, 4, 3, 2, 1, 0]), 4),
    (1, _logits([0, 2, 3, 4, 5, 1]), 5),  # last: wrong at top-5 too
    (2, _logits([2, 1, 0, 3, 4, 5]), 0),
    (3, torch.zeros(6), 5),  # all tied: no better than last
    (3, torch.tensor([0.0, 0.0, 0.0, float("nan"), 0.0, 0.0]), 6),  # NaN: wrong at every k
    (4, _logits([3, 4, 0, 1, 2, 5]), 1),
]
# top-1 wrong: cases 1, 2, 3, 5, 6, 7 -> 6 of 8; top-5 wrong: cases 3, 5, 6 -> 3 of 8.
TOP1_ERR, TOP5_ERR = 100 * 6 / 8, 100 * 3 / 8
PER_CLASS = {"ant": 50.0, "bee": 100.0, "cow": 0.0, "dog": 100.0, "eel": 100.0}  # fox has no image


@pytest.fixture
def dataset():
    name = f"cls_eval_{uuid.uuid4().hex[:8]}"
    MetadataCatalog.get(name).set(classes=list(CLASSES), evaluator_type="classification")
    yield name
    MetadataCatalog.remove(name)


def _io(cases):
    inputs = [{"image_id": i, "label": label, "file_name": f"{i}.png"} for i, (label, _, _) in enumerate(cases)]
    return inputs, [{"logits": logits} for _, logits, _ in cases]


def test_true_class_rank():
    for label, logits, rank in CASES:
        assert true_class_rank(logits, label) == rank


def test_top1_top5_and_per_class_errors(dataset, tmp_path):
    evaluator = ClassificationEvaluator(dataset, output_dir=str(tmp_path))
    inputs, outputs = _io(CASES)
    evaluator.process(inputs[:3], outputs[:3])  # several batches accumulate
    evaluator.process(inputs[3:], outputs[3:])
    m = evaluator.evaluate()["classification"]
    assert m["top1_err"] == pytest.approx(TOP1_ERR) and m["top5_err"] == pytest.approx(TOP5_ERR)
    assert m["top1_acc"] == pytest.approx(100 - TOP1_ERR) and m["num_images"] == 8
    assert m["per_class_top1_err"] == pytest.approx(PER_CLASS)
    with open(tmp_path / "metrics.json") as f:
        assert json.load(f) == {"classification": m}
    assert not [p for p in os.listdir(tmp_path) if p != "metrics.json"]  # no temp file left
    evaluator.reset()
    evaluator.process(inputs[:1], outputs[:1])
    assert evaluator.evaluate()["classification"]["top1_err"] == 0.0


def test_top5_only_with_five_classes_or_more(dataset):
    name = f"cls_eval3_{uuid.uuid4().hex[:8]}"
    MetadataCatalog.get(name).set(classes=["a", "b", "c"])
    try:
        evaluator = ClassificationEvaluator(name, topk=(1, 2, 5))
        evaluator.process([{"label": 2}, {"label": 0}], [{"logits": torch.tensor([3.0, 2.0, 1.0])},
                                                         {"logits": torch.tensor([3.0, 2.0, 1.0])}])
        m = evaluator.evaluate()["classification"]
        assert "top5_err" not in m and m["top1_err"] == 50.0 and m["top2_err"] == 50.0
    finally:
        MetadataCatalog.remove(name)


def test_bad_inputs_are_clear_errors(dataset):
    evaluator = ClassificationEvaluator(dataset)
    with pytest.raises(ValueError, match=r"logits of shape \(5,\), expected \(6,\)"):
        evaluator.process([{"label": 0, "image_id": 1}], [{"logits": torch.zeros(5)}])
    with pytest.raises(ValueError, match="no 'logits'"):
        evaluator.process([{"label": 0}], [{"instances": None}])
    with pytest.raises(ValueError, match="label 6"):
        evaluator.process([{"label": 6}], [{"logits": torch.zeros(6)}])
    with pytest.raises(ValueError, match="No images"):
        evaluator.evaluate()
    with pytest.raises(ValueError, match="no 'classes'"):
        ClassificationEvaluator(f"unregistered_{uuid.uuid4().hex[:8]}")


class _Lookup(nn.Module):
    """A "model" returning the prepared logits of each input's image id."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, batch):
        return [{"logits": self.logits[d["image_id"]]} for d in batch]


def test_with_the_inference_loop(dataset):
    inputs, outputs = _io(CASES)
    model = _Lookup([o["logits"] for o in outputs])
    results = inference_on_dataset(model, [inputs[i:i + 3] for i in range(0, 8, 3)], ClassificationEvaluator(dataset))
    assert results["classification"]["top1_err"] == pytest.approx(TOP1_ERR)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, name: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        evaluator = ClassificationEvaluator(name, output_dir=out_dir)
        inputs, outputs = _io(CASES)
        evaluator.process(inputs[rank::2], outputs[rank::2])
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(evaluator.evaluate(), f)
    finally:
        dist.destroy_process_group()


def test_gloo_two_processes_gather_to_rank0(dataset, tmp_path):
    # fork: the children inherit the registered metadata and the imported modules.
    mp.start_processes(_worker, args=(_free_port(), dataset, str(tmp_path)), nprocs=2, join=True, start_method="fork")
    with open(tmp_path / "rank1.json") as f:
        assert json.load(f) == {}
    with open(tmp_path / "rank0.json") as f:
        m = json.load(f)["classification"]
    assert m["num_images"] == 8 and math.isclose(m["top1_err"], TOP1_ERR) and math.isclose(m["top5_err"], TOP5_ERR)
    assert m["per_class_top1_err"] == pytest.approx(PER_CLASS)
    with open(tmp_path / "metrics.json") as f:
        assert json.load(f)["classification"] == m
