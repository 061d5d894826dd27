"""ResNet trunk: shapes, parameter counts, torchvision equivalence, FREEZE_AT, C4."""
import pytest
import torch
import torchvision
from torch import nn

from detgn.config import ConfigError, get_cfg
from detgn.layers import BatchNorm2d, FrozenBatchNorm2d, GroupNorm, SyncBatchNorm2d
from detgn.modeling.backbone import (
    BasicBlock,
    BottleneckBlock,
    ResNet,
    build_backbone,
    build_res5_stage,
    make_stage,
)


pytestmark = pytest.mark.usefixtures("one_thread")


STRIDES = {"stem": 4, "res2": 4, "res3": 8, "res4": 16, "res5": 32}


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_output_shapes_and_strides_every_depth(depth):
    torch.manual_seed(0)
    model = ResNet(depth=depth, norm="FrozenBN", out_features=["stem", "res2", "res3", "res4", "res5"]).eval()
    base = 64 if depth < 50 else 256
    channels = {"stem": 64, "res2": base, "res3": base * 2, "res4": base * 4, "res5": base * 8}
    shapes = model.output_shape()
    assert list(shapes) == ["stem", "res2", "res3", "res4", "res5"]
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 96))
    for name, spec in shapes.items():
        assert spec.stride == STRIDES[name] and spec.channels == channels[name]
        assert out[name].shape == (1, channels[name], 64 // spec.stride, 96 // spec.stride)
    assert model.size_divisibility == 0
    block = BasicBlock if depth < 50 else BottleneckBlock
    assert all(isinstance(b, block) for b in model.res3)


@pytest.mark.parametrize("depth,count", [(50, 23_508_032), (18, 11_176_512)])
@pytest.mark.parametrize("norm", ["BN", "GN"])
def test_param_count_matches_torchvision_trunk(depth, count, norm):
    model = ResNet(depth=depth, norm=norm)
    assert sum(p.numel() for p in model.parameters()) == count
    tv = getattr(torchvision.models, f"resnet{depth}")()
    assert sum(p.numel() for n, p in tv.named_parameters() if not n.startswith("fc.")) == count


def _torchvision_to_ours(name: str) -> str:
    name = name.replace("conv1.", "stem.conv1.", 1) if name.startswith("conv1.") else name
    name = name.replace("bn1.", "stem.conv1.norm.", 1) if name.startswith("bn1.") else name
    for i in range(1, 5):
        name = name.replace(f"layer{i}.", f"res{i + 1}.")
    for k in (1, 2, 3):
        name = name.replace(f".bn{k}.", f".conv{k}.norm.")
    return name.replace(".downsample.0.", ".shortcut.").replace(".downsample.1.", ".shortcut.norm.")


@pytest.mark.parametrize("depth", [18, 50])
def test_same_function_as_torchvision_resnet(depth):
    """Same layout (stride on the 3x3 conv) as torchvision's ResNet: its weights load
    name for name and give the same features."""
    torch.manual_seed(0)
    tv = getattr(torchvision.models, f"resnet{depth}")().eval()
    for m in tv.modules():  # non-trivial statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.0)
    ours = ResNet(depth=depth, norm="BN", out_features=["res5"]).eval()
    state = {_torchvision_to_ours(k): v for k, v in tv.state_dict().items() if not k.startswith("fc.")}
    ours.load_state_dict(state, strict=True)
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        ref = tv.layer4(tv.layer3(tv.layer2(tv.layer1(tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))))))
        torch.testing.assert_close(ours(x)["res5"], ref, rtol=1e-4, atol=1e-4)


def test_stride_placement_and_dilation():
    m = ResNet(depth=50, out_features=["res3"])
    assert m.res3[0].conv1.stride == (1, 1) and m.res3[0].conv2.stride == (2, 2)
    m = ResNet(depth=50, out_features=["res3"], stride_in_1x1=True)
    assert m.res3[0].conv1.stride == (2, 2) and m.res3[0].conv2.stride == (1, 1)
    m = ResNet(depth=18, out_features=["res5"], res5_dilation=2).eval()
    assert m.output_shape()["res5"].stride == 16 and m.res5[0].conv1.dilation == (2, 2)
    with torch.no_grad():
        assert m(torch.randn(1, 3, 64, 64))["res5"].shape == (1, 512, 4, 4)


def test_init_msra_and_unit_norms():
    torch.manual_seed(0)
    m = ResNet(depth=50, norm="GN", out_features=["res2"])
    w = m.res2[0].conv2.weight
    assert abs(w.std().item() - (2 / (64 * 9)) ** 0.5) < 0.1 * (2 / (64 * 9)) ** 0.5
    for mod in m.modules():
        if isinstance(mod, nn.GroupNorm):  # no zero-init of the last gamma
            assert torch.all(mod.weight == 1) and torch.all(mod.bias == 0)
    assert all(c.bias is None for c in m.modules() if isinstance(c, nn.Conv2d))


def _cfg(**kw):
    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = 18
    for k, v in kw.items():
        node = cfg
        *path, last = k.split("__")
        for p in path:
            node = node[p]
        node[last] = v
    return cfg


def _part(model, name):
    return model.stem if name == "stem" else getattr(model, name)


@pytest.mark.parametrize("freeze_at", [0, 1, 2, 5])
@pytest.mark.parametrize("norm", ["BN", "GN"])
def test_freeze_at(freeze_at, norm):
    torch.manual_seed(0)
    cfg = _cfg(MODEL__BACKBONE__NAME="build_resnet_fpn_backbone", MODEL__BACKBONE__FREEZE_AT=freeze_at,
               MODEL__RESNETS__NORM=norm)
    # a narrow ResNet-18 keeps the step fast; the freezing logic is width-independent
    cfg.MODEL.GROUP_NORM.NUM_GROUPS = 4
    cfg.MODEL.RESNETS.STEM_OUT_CHANNELS = 8
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 8
    cfg.MODEL.FPN.OUT_CHANNELS = 16
    backbone = build_backbone(cfg)
    trunk = backbone.bottom_up
    frozen_parts = ["stem", "res2", "res3", "res4", "res5"][:freeze_at]
    for name in ["stem", "res2", "res3", "res4", "res5"]:
        part = _part(trunk, name)
        frozen = name in frozen_parts
        assert all(p.requires_grad != frozen for p in part.parameters()), name
        norms = [m for m in part.modules() if isinstance(m, (nn.GroupNorm, nn.BatchNorm2d, FrozenBatchNorm2d))]
        assert norms
        if norm == "BN":
            expected = FrozenBatchNorm2d if frozen else BatchNorm2d  # detgn's nn.BatchNorm2d
            assert all(type(m) is expected for m in norms), name
        else:
            assert all(type(m) is GroupNorm for m in norms), name  # detgn's nn.GroupNorm
    # FPN convs are never frozen
    assert all(p.requires_grad for n, p in backbone.named_parameters() if n.startswith("fpn_"))

    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    opt = torch.optim.SGD(backbone.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    backbone.train()
    out = backbone(torch.randn(2, 3, 64, 64))
    assert out["p2"].shape == (2, 16, 16, 16)
    sum(v.square().mean() for v in out.values()).backward()
    opt.step()
    after = backbone.state_dict()
    for name in ["stem", "res2", "res3", "res4", "res5"]:
        prefix = "bottom_up." + name
        keys = [k for k in before if k.startswith(prefix) and "num_batches_tracked" not in k]
        # every tensor of a frozen part (weights, norm affine, FrozenBN statistics) is unchanged
        unchanged = all(torch.equal(before[k], after[k]) for k in keys)
        if name in frozen_parts:
            assert unchanged, name
        else:
            weights = [k for k in keys if k.endswith("conv1.weight")]
            assert not any(torch.equal(before[k], after[k]) for k in weights), name
    lines = backbone.describe_norms()
    assert lines[0].startswith("bottom_up: ")
    trunk_lines = trunk.describe_norms()
    assert [line.split(":")[0] for line in trunk_lines] == ["stem", "res2", "res3", "res4", "res5"]
    for line, name in zip(trunk_lines, ["stem", "res2", "res3", "res4", "res5"]):
        assert ("all frozen" in line) == (name in frozen_parts), line
        if norm == "BN":
            assert ("FrozenBN" in line) == (name in frozen_parts), line


def test_syncbn_in_frozen_stage_becomes_frozen_bn():
    m = ResNet(depth=18, norm="SyncBN", out_features=["res3"], freeze_at=2)
    assert all(isinstance(x, FrozenBatchNorm2d) for x in m.res2.modules() if "Norm" in type(x).__name__)
    assert any(isinstance(x, SyncBatchNorm2d) for x in m.res3.modules())


def test_c4_backbone_and_res5_stage():
    cfg = _cfg(MODEL__BACKBONE__NAME="build_resnet_c4_backbone", MODEL__RESNETS__DEPTH=50,
               MODEL__BACKBONE__FREEZE_AT=5)
    c4 = build_backbone(cfg)
    assert list(c4.output_shape()) == ["res4"]
    assert c4.output_shape()["res4"].stride == 16 and c4.output_shape()["res4"].channels == 1024
    assert c4.size_divisibility == 0 and not hasattr(c4, "res5")
    c4.eval()
    with torch.no_grad():
        assert c4(torch.randn(1, 3, 64, 80))["res4"].shape == (1, 1024, 4, 5)
    res5, channels = build_res5_stage(cfg)
    assert channels == 2048 and len(res5) == 3 and res5[0].conv2.stride == (2, 2)
    assert not any(p.requires_grad for p in res5.parameters())  # FREEZE_AT 5 includes res5
    with torch.no_grad():
        assert res5(torch.randn(2, 1024, 14, 14)).shape == (2, 2048, 7, 7)
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.BACKBONE.FREEZE_AT = 2
    res5, channels = build_res5_stage(cfg)
    assert channels == 512 and isinstance(res5[0], BasicBlock)
    assert all(p.requires_grad for p in res5.parameters())


def test_make_stage_public_signature():
    stage = make_stage(BottleneckBlock, 2, first_stride=2, in_channels=64, out_channels=128,
                       bottleneck_channels=32, norm="GN", stride_in_1x1=False, dilation=1)
    assert [type(b) for b in stage] == [BottleneckBlock] * 2
    assert stage[0].shortcut is not None and stage[1].shortcut is None
    assert isinstance(stage[0].conv1.norm, nn.GroupNorm)
    basic = make_stage(BasicBlock, 2, first_stride=1, in_channels=64, out_channels=64,
                       bottleneck_channels=None, norm="", stride_in_1x1=False, dilation=1)
    assert basic[0].shortcut is None and basic[0].conv1.bias is not None


def test_config_errors():
    with pytest.raises(ConfigError, match="MODEL.RESNETS.DEPTH = 42"):
        build_backbone(_cfg(MODEL__RESNETS__DEPTH=42))
    with pytest.raises(ConfigError, match="MODEL.BACKBONE.NAME = 'vgg'"):
        build_backbone(_cfg(MODEL__BACKBONE__NAME="vgg"))
    with pytest.raises(ConfigError, match="FREEZE_AT"):
        build_backbone(_cfg(MODEL__BACKBONE__FREEZE_AT=7))
    with pytest.raises(ValueError, match="out_features"):
        ResNet(depth=18, out_features=["res6"])
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        ResNet(depth=18, out_features=["res2"])(torch.zeros(1, 1, 32, 32))
