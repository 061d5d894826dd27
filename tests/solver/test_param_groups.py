"""Parameter groups: weight decay 0 on every norm's gamma/beta, bias rules, frozen excluded."""
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
from engine_toys import ToyModel  # noqa: E402

from detgn.config import get_cfg  # noqa: E402
from detgn.solver import build_optimizer, format_param_groups, get_param_groups, is_norm_module, resolve_schedule  # noqa: E402


class CustomNorm(nn.Module):
    """A norm known only by the ``is_norm`` class attribute (like detgn's own layers)."""

    is_norm = True

    def __init__(self, c):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))
        self.bias = nn.Parameter(torch.zeros(c))

    def forward(self, x):
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


class ManyNorms(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)  # weight + bias
        self.gn = nn.GroupNorm(4, 8)
        self.bn = nn.BatchNorm2d(8)
        self.sbn = nn.SyncBatchNorm(8)
        self.inorm = nn.InstanceNorm2d(8, affine=True)
        self.ln = nn.LayerNorm(8)
        self.bn1d = nn.BatchNorm1d(8)
        self.custom = CustomNorm(8)
        self.fc = nn.Linear(8, 2)  # weight + bias
        self.frozen_conv = nn.Conv2d(8, 8, 1)
        self.frozen_conv.requires_grad_(False)
        self.frozen_gn = nn.GroupNorm(2, 8)
        self.frozen_gn.requires_grad_(False)
        self.shared = self.fc  # the same parameters reachable twice


def _groups(model, **kw):
    args = dict(base_lr=0.02, weight_decay=1e-4, weight_decay_norm=0.0, bias_lr_factor=2.0, weight_decay_bias=0.0)
    args.update(kw)
    return {g["name"]: g for g in get_param_groups(model, **args)}


def test_every_norm_type_gets_norm_weight_decay():
    m = ManyNorms()
    groups = _groups(m)
    norm_names = set(groups["norm"]["param_names"])
    expected = {f"{n}.{p}" for n in ("gn", "bn", "sbn", "inorm", "ln", "bn1d", "custom") for p in ("weight", "bias")}
    assert norm_names == expected
    assert groups["norm"]["weight_decay"] == 0.0
    assert groups["norm"]["lr"] == 0.02  # gamma/beta are not biases: no bias LR factor
    for name in ("gn", "bn", "sbn", "inorm", "ln", "bn1d", "custom"):
        assert is_norm_module(getattr(m, name))
    assert not is_norm_module(m.conv) and not is_norm_module(m.fc)


def test_weights_and_biases_and_frozen_excluded():
    m = ManyNorms()
    groups = _groups(m)
    assert groups["weights"]["param_names"] == ["conv.weight", "fc.weight"]
    assert groups["weights"]["weight_decay"] == 1e-4 and groups["weights"]["lr"] == 0.02
    assert groups["biases"]["param_names"] == ["conv.bias", "fc.bias"]
    assert groups["biases"]["weight_decay"] == 0.0
    assert groups["biases"]["lr"] == pytest.approx(0.04)
    all_params = [p for g in groups.values() for p in g["params"]]
    assert len(all_params) == len({id(p) for p in all_params})  # shared fc counted once
    frozen = {id(p) for p in list(m.frozen_conv.parameters()) + list(m.frozen_gn.parameters())}
    assert not frozen & {id(p) for p in all_params}
    trainable = {id(p) for p in m.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in all_params}


def test_build_optimizer_from_config_and_table():
    cfg = get_cfg()
    cfg.SOLVER.WEIGHT_DECAY_BIAS = 5e-5
    cfg.SOLVER.BIAS_LR_FACTOR = 2.0
    model = ToyModel()
    sched = resolve_schedule(cfg, world_size=8)  # 8 images -> lr 0.01
    opt = build_optimizer(cfg, model, sched)
    assert isinstance(opt, torch.optim.SGD)
    by_name = {g["name"]: g for g in opt.param_groups}
    assert by_name["weights"]["lr"] == pytest.approx(0.01)
    assert by_name["biases"]["lr"] == pytest.approx(0.02)
    assert by_name["biases"]["weight_decay"] == 5e-5
    assert by_name["norm"]["weight_decay"] == 0.0
    assert all(g["momentum"] == 0.9 for g in opt.param_groups)
    # GN, BN and LN of the toy model: 3 layers x (gamma, beta)
    assert len(by_name["norm"]["params"]) == 6
    table = format_param_groups(opt)
    print(table)
    lines = table.splitlines()
    assert lines[0].split() == ["group", "tensors", "params", "lr", "weight_decay", "momentum"]
    norm_row = next(line for line in lines if line.startswith("norm"))
    assert norm_row.split()[1:] == ["6", "48", "0.01", "0", "0.9"]


def test_sgd_step_does_not_decay_norm_params():
    """With zero gradients, only weight decay moves parameters: norms must not move."""
    cfg = get_cfg()
    cfg.SOLVER.WEIGHT_DECAY = 0.1
    cfg.SOLVER.WEIGHT_DECAY_BIAS = 0.1
    cfg.SOLVER.MOMENTUM = 0.0
    model = ToyModel()
    opt = build_optimizer(cfg, model, resolve_schedule(cfg, world_size=16))
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for name, p in model.named_parameters():
        moved = not torch.equal(p, before[name])
        is_norm = name.split(".")[0] in ("gn", "bn", "ln")
        if name.startswith("frozen"):
            assert not moved
        elif is_norm:
            assert not moved, f"{name} was decayed"
        else:
            assert moved, f"{name} was not decayed"


def test_no_trainable_parameters_is_a_clear_error():
    cfg = get_cfg()
    model = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameter"):
        build_optimizer(cfg, model, resolve_schedule(cfg, world_size=16))


@pytest.mark.parametrize("norm", ["GN", "LN", "IN", "BN", "SyncBN", "FrozenBN"])
def test_detgn_conv_with_each_norm(norm):
    """detgn's own Conv2d + get_norm: the norm's gamma/beta (if trainable) go to the norm group."""
    from detgn.layers import Conv2d, get_norm

    conv = Conv2d(3, 64, 3, norm=get_norm(norm, 64))
    groups = _groups(nn.Sequential(conv))
    names = {k: set(g["param_names"]) for k, g in groups.items()}
    assert names["weights"] == {"0.weight"}
    assert "biases" not in names  # a conv followed by a norm has no bias
    if norm == "FrozenBN":
        assert "norm" not in names  # buffers only: nothing to train or decay
    else:
        assert names["norm"] == {"0.norm.weight", "0.norm.bias"}
        assert groups["norm"]["weight_decay"] == 0.0


def test_adamw_option_keeps_groups_and_decoupled_decay():
    """SOLVER.OPTIMIZER AdamW: same groups/LRs, beta1 = MOMENTUM, and (decoupled) weight
    decay still never touches norm parameters."""
    cfg = get_cfg()
    cfg.SOLVER.OPTIMIZER = "AdamW"
    cfg.SOLVER.WEIGHT_DECAY = 0.1
    cfg.SOLVER.WEIGHT_DECAY_BIAS = 0.1
    model = ToyModel()
    opt = build_optimizer(cfg, model, resolve_schedule(cfg, world_size=16))
    assert isinstance(opt, torch.optim.AdamW)
    assert all(g["betas"] == (0.9, cfg.SOLVER.ADAM_BETA2) for g in opt.param_groups)
    assert {g["name"]: g["weight_decay"] for g in opt.param_groups}["norm"] == 0.0
    assert format_param_groups(opt).splitlines()[-1].split()[-1] == "0.9"
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # zero gradients: only decoupled decay moves a parameter
    for name, p in model.named_parameters():
        if name.split(".")[0] in ("gn", "bn", "ln") or name.startswith("frozen"):
            assert torch.equal(p, before[name]), name
        elif before[name].abs().sum() > 0:
            assert not torch.equal(p, before[name]), name


def test_unknown_optimizer_is_a_clear_error():
    cfg = get_cfg()
    cfg.SOLVER.OPTIMIZER = "Adagrad"
    with pytest.raises(ValueError, match="SOLVER.OPTIMIZER.*SGD, AdamW"):
        build_optimizer(cfg, ToyModel(), resolve_schedule(cfg, world_size=16))
