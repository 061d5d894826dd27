"""Every FPN combination of norm x box head builds, trains (total loss goes down) and infers."""
import pytest
import torch
from detector_testdata import NORM_MODULES, NORMS, run_combination


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("box_head", ["2fc", "4conv1fc"])
@pytest.mark.parametrize("norm", NORMS)
def test_fpn_combination(norm, box_head):
    model = run_combination("FPN", norm, box_head)
    head = model.roi_heads.box_head
    assert head.conv_names == (["conv1", "conv2", "conv3", "conv4"] if box_head == "4conv1fc" else [])
    assert head.fc_names == (["fc6"] if box_head == "4conv1fc" else ["fc6", "fc7"])
    expected = NORM_MODULES[norm]
    assert type(model.backbone.bottom_up.stem.conv1.norm).__name__ == expected
    if norm == "FrozenBN":  # BN*: no norm in FPN and heads, the default StopGrad at res2
        assert model.backbone.fpn_lateral2.norm is None and model.roi_heads.mask_head.mask_fcn1.norm is None
        assert not any(p.requires_grad for p in model.backbone.bottom_up.res2.parameters())
    else:
        assert type(model.backbone.fpn_output3.norm).__name__ == expected
        assert type(model.roi_heads.mask_head.mask_fcn4.norm).__name__ == expected
        if box_head == "4conv1fc":
            assert type(head.conv1.norm).__name__ == expected
        assert all(p.requires_grad for p in model.parameters())  # FREEZE_AT 0: nothing frozen
