"""What the heads record while training (detectron2's names), and that it reaches metrics.json."""
import itertools
import math

import pytest
import torch
from detector_testdata import calibrate_frozen_bn, tiny_batch, tiny_cfg

from detgn.engine import PeriodicWriter, Trainer
from detgn.modeling import build_model
from detgn.utils.events import EventStorage, JSONWriter, get_event_storage, read_metrics

EVENTS = {
    "rpn/num_pos_anchors", "rpn/num_neg_anchors", "roi_head/num_fg_samples", "roi_head/num_bg_samples",
    "fast_rcnn/cls_accuracy", "fast_rcnn/fg_cls_accuracy", "fast_rcnn/false_negative",
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("arch, norm, box_head", [("FPN", "GN", "4conv1fc"), ("C4", "BN", None)])
def test_a_training_step_records_the_statistics(arch, norm, box_head):
    torch.manual_seed(0)
    cfg = tiny_cfg(arch, norm, box_head)
    model = build_model(cfg)
    batch = tiny_batch()
    with EventStorage(0) as storage:
        model(batch)
    assert EVENTS <= set(storage.names())
    got = {k: storage.history(k)[-1][1] for k in EVENTS}
    rpn_sampled = got["rpn/num_pos_anchors"] + got["rpn/num_neg_anchors"]
    assert 0 < got["rpn/num_pos_anchors"] and rpn_sampled <= cfg.MODEL.RPN.BATCH_SIZE_PER_IMAGE
    # The ground-truth boxes are appended to the proposals: every image has foreground RoIs.
    assert got["roi_head/num_fg_samples"] >= 1
    assert got["roi_head/num_fg_samples"] + got["roi_head/num_bg_samples"] <= cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE
    for k in ("fast_rcnn/cls_accuracy", "fast_rcnn/fg_cls_accuracy", "fast_rcnn/false_negative"):
        assert 0.0 <= got[k] <= 1.0, (k, got[k])


def test_nothing_is_recorded_outside_training():
    torch.manual_seed(0)
    model = build_model(tiny_cfg("FPN", "FrozenBN", "2fc"))
    assert get_event_storage() is None
    model(tiny_batch())  # training mode, no storage: the statistics are simply not computed
    storage = EventStorage(0)
    with storage, torch.no_grad():
        model.eval()
        model(tiny_batch())
    assert storage.names() == []


def test_statistics_reach_metrics_json(tmp_path):
    torch.manual_seed(0)
    model = build_model(tiny_cfg("FPN", "FrozenBN", "2fc"))
    batch = tiny_batch()
    calibrate_frozen_bn(model, batch)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    trainer = Trainer(model=model, optimizer=opt, data_loader_fn=lambda start: itertools.repeat(batch), max_iter=2)
    path = tmp_path / "metrics.json"
    trainer.register_hooks([PeriodicWriter([JSONWriter(str(path))], period=1)])
    trainer.train()
    records = read_metrics(str(path))
    assert [r["iteration"] for r in records] == [0, 1]
    for r in records:
        assert EVENTS <= set(r), sorted(set(r))
        assert all(isinstance(r[k], float) and math.isfinite(r[k]) for k in EVENTS)
