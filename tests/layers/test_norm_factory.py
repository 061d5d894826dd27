"""Norm factory, FrozenBN, describe_norms."""
import pytest
import torch
from torch import nn

from detgn.config import get_cfg
from detgn.layers import (
    BatchNorm2d,
    FrozenBatchNorm2d,
    Norm,
    SyncBatchNorm2d,
    describe_norms,
    get_norm,
    norm_from_cfg,
)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_every_name_builds_the_right_type():
    assert get_norm("", 64) is None
    assert get_norm(None, 64) is None
    assert isinstance(get_norm("FrozenBN", 64), FrozenBatchNorm2d)
    bn = get_norm("BN", 64)
    # detgn's BatchNorm2d: nn.BatchNorm2d in training, plus the EvalNorm records and evaluation.
    assert type(bn) is BatchNorm2d and isinstance(bn, nn.BatchNorm2d)
    assert isinstance(get_norm("SyncBN", 64), SyncBatchNorm2d)
    for name in ("GN", "LN", "IN"):
        assert isinstance(get_norm(name, 64), nn.GroupNorm)


def test_gn_groups_by_number_and_by_channels_per_group():
    assert get_norm(Norm("GN", num_groups=32), 256).num_groups == 32
    assert get_norm(Norm("GN", num_groups=8), 64).num_groups == 8
    gn = get_norm(Norm("GN", num_groups=-1, dim_per_gp=16), 256)
    assert gn.num_groups == 16 and gn.num_channels == 256
    assert get_norm(Norm("GN", num_groups=-1, dim_per_gp=16), 64).num_groups == 4


def test_ln_is_one_group_and_in_is_one_channel_per_group():
    ln = get_norm(Norm("LN", num_groups=32), 64)
    assert ln.num_groups == 1 and ln.affine
    inorm = get_norm(Norm("IN", num_groups=32), 64)
    assert inorm.num_groups == 64 and inorm.affine


def test_eps_is_passed_to_every_kind():
    for name in ("FrozenBN", "BN", "SyncBN", "GN", "LN", "IN"):
        assert get_norm(Norm(name, eps=1e-3), 64).eps == 1e-3


def test_norm_from_cfg_reads_group_norm_settings():
    cfg = get_cfg()
    cfg.MODEL.GROUP_NORM.NUM_GROUPS = -1
    cfg.MODEL.GROUP_NORM.DIM_PER_GP = 8
    cfg.MODEL.GROUP_NORM.EPSILON = 1e-4
    cfg.MODEL.FPN.NORM = "GN"
    for arg in ("GN", "MODEL.FPN.NORM"):
        n = norm_from_cfg(cfg, arg)
        assert n == Norm("GN", num_groups=-1, dim_per_gp=8, eps=1e-4)
        m = n(64)
        assert m.num_groups == 8 and m.eps == 1e-4


def test_clear_errors():
    with pytest.raises(ValueError, match="divisible by MODEL.GROUP_NORM.NUM_GROUPS"):
        get_norm(Norm("GN", num_groups=32), 48)
    with pytest.raises(ValueError, match="multiple of MODEL.GROUP_NORM.DIM_PER_GP"):
        get_norm(Norm("GN", num_groups=-1, dim_per_gp=16), 40)
    with pytest.raises(ValueError, match="exactly one"):
        Norm("GN", num_groups=32, dim_per_gp=16)
    with pytest.raises(ValueError, match="Unknown norm 'Batch'"):
        get_norm("Batch", 8)
    cfg = get_cfg()
    cfg.MODEL.FPN.NORM = "gn"
    with pytest.raises(ValueError, match="MODEL.FPN.NORM"):
        norm_from_cfg(cfg, "MODEL.FPN.NORM")


def _random_bn(c=6):
    bn = nn.BatchNorm2d(c, eps=1e-5)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.normal_()
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 3)
    return bn.eval()


def test_frozen_bn_equals_bn_in_eval_mode():
    torch.manual_seed(0)
    bn = _random_bn()
    frozen = FrozenBatchNorm2d(6)
    frozen.load_state_dict(bn.state_dict())  # num_batches_tracked is dropped
    x = torch.randn(3, 6, 5, 7)
    torch.testing.assert_close(frozen(x), bn(x), rtol=1e-5, atol=1e-5)
    assert frozen(torch.zeros(0, 6, 5, 7)).shape == (0, 6, 5, 7)


def test_frozen_bn_has_no_parameters_and_does_not_update():
    frozen = FrozenBatchNorm2d(8)
    assert list(frozen.parameters()) == []
    assert sorted(n for n, _ in frozen.named_buffers()) == ["bias", "running_mean", "running_var", "weight"]
    frozen.train()
    before = {k: v.clone() for k, v in frozen.state_dict().items()}
    frozen(torch.randn(4, 8, 3, 3) * 5 + 3)
    for k, v in frozen.state_dict().items():
        assert torch.equal(v, before[k])


def test_convert_frozen_batchnorm_keeps_eval_output():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 6, 3), _random_bn(6), nn.ReLU(), nn.Sequential(_random_bn(6)))
    model.eval()
    x = torch.randn(2, 3, 9, 9)
    ref = model(x)
    converted = FrozenBatchNorm2d.convert_frozen_batchnorm(model)
    assert converted is model
    assert isinstance(model[1], FrozenBatchNorm2d) and isinstance(model[3][0], FrozenBatchNorm2d)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    torch.testing.assert_close(model(x), ref, rtol=1e-5, atol=1e-5)
    # a bare BN (and our SyncBN) converts to a new module
    single = FrozenBatchNorm2d.convert_frozen_batchnorm(SyncBatchNorm2d(4))
    assert isinstance(single, FrozenBatchNorm2d)


def test_empty_batch_through_every_norm():
    x = torch.zeros(0, 32, 4, 4, requires_grad=True)
    for name in ("FrozenBN", "BN", "GN", "LN", "IN"):
        m = get_norm(name, 32).train()
        y = m(x)
        assert y.shape == x.shape
        y.sum().backward()


def test_syncbn_outside_distributed_is_bn_and_warns_once():
    import detgn.layers.norm as norm_mod

    norm_mod._warned_no_dist = False
    torch.manual_seed(2)
    sync, bn = SyncBatchNorm2d(4), nn.BatchNorm2d(4)
    x = torch.randn(3, 4, 5, 5)
    with pytest.warns(UserWarning, match="SyncBN outside a distributed run: using BN"):
        y = sync(x)
    torch.testing.assert_close(y, bn(x))
    torch.testing.assert_close(sync.running_var, bn.running_var)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sync(x)  # no second warning


def test_describe_norms_lists_parts_norms_and_frozen_params():
    model = nn.Sequential()
    model.add_module("a", nn.Sequential(nn.Conv2d(3, 8, 1, bias=False), FrozenBatchNorm2d(8)))
    model.add_module("b", nn.Sequential(nn.Conv2d(8, 32, 1, bias=False), nn.GroupNorm(8, 32)))
    model.add_module("c", nn.Sequential(nn.Conv2d(32, 32, 1), nn.GroupNorm(1, 32), nn.GroupNorm(32, 32)))
    model.add_module("pool", nn.MaxPool2d(2))
    for p in model.a.parameters():
        p.requires_grad_(False)
    model.b[1].weight.requires_grad_(False)
    lines = describe_norms(model)
    assert lines == [
        "a: FrozenBN x1 | 24 params, all frozen",
        "b: GN(G=8) x1 | 320 params, 32 frozen",
        "c: IN x1, LN x1 | 1,184 params, none frozen",
    ]
    assert describe_norms(model, depth=2)[0] == "a.0: no norm | 24 params, all frozen"
