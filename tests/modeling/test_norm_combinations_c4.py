"""Every C4 norm builds, trains (total loss goes down) and infers (C4 has one head design)."""
import pytest
import torch
from detector_testdata import NORM_MODULES, NORMS, run_combination


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("norm", NORMS)
def test_c4_combination(norm):
    model = run_combination("C4", norm, None)
    assert model.backbone.size_divisibility == 0 and model.size_divisibility == 32
    heads = model.roi_heads
    assert type(heads).__name__ == "Res5ROIHeads"
    assert heads.mask_head.conv_names == []  # C4 mask head: deconv + predictor only
    assert type(heads.res5[0].conv1.norm).__name__ == NORM_MODULES[norm]
    heads.eval()
    with torch.no_grad():  # res5 halves the 14x14 RoI features
        assert heads.res5(torch.zeros(2, heads.res5[0].in_channels, 14, 14)).shape[-2:] == (7, 7)
