"""EvalNorm and PreciseBN in the detector: BN in the backbone, the FPN and both heads."""
import copy

import pytest
import torch

from detgn.modeling.precise_bn import precise_bn
from detgn.study.norm_calibration import calibrate_evalnorm
from detgn.layers import BatchNorm2d, configure_evalnorm, evalnorm_layers
from detgn.modeling import build_model
from detgn.solver import build_optimizer, resolve_schedule

from detector_testdata import tiny_batch, tiny_cfg

pytestmark = pytest.mark.usefixtures("one_thread")


def _bn_detector(evalnorm: bool):
    cfg = tiny_cfg("FPN", "BN", "4conv1fc")
    cfg.MODEL.EVALNORM.ENABLED = evalnorm
    cfg.SOLVER.CLIP_GRADIENTS = 1.0
    torch.manual_seed(0)
    return cfg, build_model(cfg)


def _train(cfg, model, batch, steps=4):
    schedule = resolve_schedule(cfg, 1)
    opt = build_optimizer(cfg, model, schedule)
    history = []
    model.train()
    for _ in range(steps):
        torch.manual_seed(1)  # the same RPN / RoI sampling in both runs
        losses = model(batch)
        total = sum(losses.values())
        opt.zero_grad()
        total.backward()
        opt.step()
        history.append({k: float(v.detach()) for k, v in losses.items()})
    return history


def test_detector_has_bn_everywhere_and_online_fit_changes_nothing_else():
    batch = tiny_batch()
    cfg0, plain = _bn_detector(False)
    cfg1, fitted = _bn_detector(True)
    names = [n for n, _ in evalnorm_layers(fitted)]
    assert any(n.startswith("backbone.bottom_up") for n in names)
    assert any(n.startswith("backbone.fpn") for n in names)
    assert any(n.startswith("roi_heads.box_head") for n in names) and any(n.startswith("roi_heads.mask_head")
                                                                        for n in names)
    h0, h1 = _train(cfg0, plain, batch), _train(cfg1, fitted, batch)
    assert all("loss_evalnorm" in h for h in h1) and not any("loss_evalnorm" in h for h in h0)
    for a, b in zip(h0, h1):
        assert a == {k: v for k, v in b.items() if k != "loss_evalnorm"}
    s0, s1 = plain.state_dict(), fitted.state_dict()
    for k in s0:
        if "evalnorm_" not in k:
            assert torch.equal(s0[k], s1[k]), k
    head = fitted.roi_heads.box_head.conv1.norm
    assert isinstance(head, BatchNorm2d) and float(head.train_batch_size) > 2  # B = RoIs per process here
    assert float(fitted.backbone.bottom_up.stem.conv1.norm.train_batch_size) == 2


def test_detector_offline_calibration_precise_bn_and_evalnorm_inference():
    batch = tiny_batch()
    cfg, model = _bn_detector(False)
    _train(cfg, model, batch, steps=3)
    before = copy.deepcopy(model.state_dict())
    calibrate_evalnorm(model, [batch] * 6, num_iter=6, log_period=0)
    changed = {k for k in before if not torch.equal(before[k], model.state_dict()[k])}
    assert changed and all(k.endswith(("evalnorm_alpha", "evalnorm_beta")) for k in changed), sorted(changed)[:5]
    model.eval()
    configure_evalnorm(model, enabled=True, mode="offline")
    with torch.no_grad():
        out = model([{k: v for k, v in x.items() if k != "instances"} for x in batch])
    assert len(out) == 2 and all("instances" in o for o in out)
    configure_evalnorm(model, enabled=False)
    rm = model.backbone.bottom_up.stem.conv1.norm.running_mean.clone()
    precise_bn(model, [batch] * 3, num_iter=3, log_period=0)
    assert not torch.equal(rm, model.backbone.bottom_up.stem.conv1.norm.running_mean)
    assert not model.training
