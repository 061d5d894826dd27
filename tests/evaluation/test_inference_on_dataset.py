"""inference_on_dataset: eval mode, no grad, progress with ETA, mode restored."""
import logging

import pytest
import torch
from torch import nn

from detgn.evaluation import COCOEvaluator, DatasetEvaluator, inference_on_dataset
from eval_testdata import make_gt, perfect_detections, to_model_io, write_gt


class ReplayModel(nn.Module):
    """Returns prepared outputs by image id; records the mode it was called in."""

    def __init__(self, outputs_by_id):
        super().__init__()
        self.layer = nn.Linear(2, 2)  # a parameter, so grad mode matters
        self.outputs_by_id = outputs_by_id
        self.calls = []

    def forward(self, batch):
        self.calls.append((self.training, torch.is_grad_enabled()))
        return [self.outputs_by_id[d["image_id"]] for d in batch]


class CountingEvaluator(DatasetEvaluator):
    def reset(self):
        self.n = 0

    def process(self, inputs, outputs):
        assert len(inputs) == len(outputs)
        self.n += len(inputs)

    def evaluate(self):
        return {"count": {"images": self.n}}


def test_runs_coco_evaluation_and_restores_training_mode(tmp_path, caplog):
    gt = make_gt()
    gt_json = write_gt(tmp_path / "instances.json")
    inputs, outputs = to_model_io(perfect_detections(gt), gt)
    model = ReplayModel({i["image_id"]: o for i, o in zip(inputs, outputs)})
    model.train()
    loader = [inputs[0:2], inputs[2:4], inputs[4:5]]
    with caplog.at_level(logging.INFO, logger="detgn.evaluation"):
        results = inference_on_dataset(model, loader, COCOEvaluator.from_json(gt_json, distributed=False),
                                       log_period_s=0.0, num_warmup=1)
    assert results["bbox"]["AP"] == pytest.approx(100.0) and results["segm"]["AP"] == pytest.approx(100.0)
    assert model.calls == [(False, False)] * 3
    assert model.training
    assert "3/3 batches (5 images)" in caplog.text and "ETA" in caplog.text
    assert "Total inference time" in caplog.text


def test_restores_eval_mode_and_handles_errors_and_iterables():
    inputs = [{"image_id": k} for k in range(7)]
    model = ReplayModel({k: {} for k in range(7)})
    model.eval()
    # a generator has no len(): progress works without a total
    results = inference_on_dataset(model, ([d] for d in inputs), [CountingEvaluator()], log_period_s=0.0)
    assert results == {"count": {"images": 7}} and not model.training

    model.train()
    model.outputs_by_id = {}
    with pytest.raises(KeyError):
        inference_on_dataset(model, [inputs[:1]], CountingEvaluator())
    assert model.training  # restored even though the model raised
    assert inference_on_dataset(model, [], None) == {}
