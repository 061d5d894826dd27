"""Every part the toolkit builds exports to ONNX and keeps the eager detections, or fails with an
error that names the part and writes nothing.

Parts: FPN and C4; GN with a group count and with channels per group; frozen BN (folded into
the convs); BN and BN with EvalNorm in their eval forms; LN; IN; the three conventions' mask
paste. Each export is checked by the exporter itself on two sizes (it raises otherwise) and
here against ``Predictor`` on two more.
"""
import pytest
import torch

from export_testdata import assert_same_detections, decisive_weights, export_cfg, make_image

from detgn.engine import Predictor
from detgn.export import ExportError, ExportedPredictor, export_model, read_metadata
from detgn.layers.evalnorm_setup import evalnorm_layers

pytestmark = pytest.mark.usefixtures("one_thread")

PARTS = {
    "C4 GN": ("C4", "GN", "2fc"),
    "FPN GN 4 channels per group": ("FPN", "GN", "4conv1fc", "MODEL.GROUP_NORM.NUM_GROUPS", "-1",
                                    "MODEL.GROUP_NORM.DIM_PER_GP", "4"),
    "FPN frozen BN (BN*), 2fc": ("FPN", "FrozenBN", "2fc"),
    "FPN BN": ("FPN", "BN", "2fc"),  # the mask head's 4 convs carry the norm on RoIs
    "FPN LN": ("FPN", "LN", "2fc"),
    "FPN IN": ("FPN", "IN", "4conv1fc"),
    "FPN GN, Detectron paste": ("FPN", "GN", "2fc", "MODEL.ROI_MASK_HEAD.PASTE_METHOD", "detectron"),
    "FPN GN, torchvision paste": ("FPN", "GN", "2fc", "MODEL.ROI_MASK_HEAD.PASTE_METHOD", "torchvision"),
}


def _check(cfg, folder, sizes=((120, 150), (90, 200))):
    predictor, runtime = Predictor(cfg), ExportedPredictor(folder)
    for h, w in sizes:
        image = make_image(h, w, seed=7)
        assert_same_detections(predictor(image), runtime(image), predictor)


@pytest.mark.parametrize("part", list(PARTS))
def test_part_exports_with_the_same_detections(part, tmp_path):
    arch, norm, head, *opts = PARTS[part]
    cfg = export_cfg(arch, norm, head, *opts)
    cfg.MODEL.WEIGHTS = decisive_weights(cfg, tmp_path / "w.pth")
    # The paste runs in the runtime, the same for every format: the faster torch.export suffices.
    fmt = "torch_export" if "paste" in part else "onnx"
    folder = export_model(cfg, tmp_path / fmt, fmt=fmt).parent
    meta = read_metadata(folder)
    if norm == "FrozenBN":
        assert meta["folded_batch_norms"] > 0  # frozen BN became conv weights
    assert meta["mask_paste"] == cfg.MODEL.ROI_MASK_HEAD.PASTE_METHOD
    _check(cfg, folder)


def test_evalnorm_eval_form_exports(tmp_path):
    """BN evaluated with EvalNorm (per-sample statistics, alpha/beta != 0) is not folded and exports."""
    cfg = export_cfg("FPN", "BN", "4conv1fc")
    torch.manual_seed(3)
    path = decisive_weights(cfg, tmp_path / "w.pth")
    state = torch.load(path, weights_only=True)
    for k in state["model"]:
        if k.endswith("evalnorm_alpha") or k.endswith("evalnorm_beta"):
            state["model"][k] = torch.tensor(0.3)
    torch.save(state, path)
    cfg.MODEL.WEIGHTS = path
    cfg.MODEL.EVALNORM.ENABLED = True
    cfg.MODEL.EVALNORM.MODE = "offline"
    predictor = Predictor(cfg)
    assert any(layer.evalnorm_eval for _, layer in evalnorm_layers(predictor.model))
    folder = export_model(cfg, tmp_path / "onnx", fmt="onnx").parent
    assert read_metadata(folder)["folded_batch_norms"] == 0
    _check(cfg, folder)


def test_part_that_cannot_export_is_named_and_nothing_is_written(tmp_path, monkeypatch):
    """A head whose forward branches on a value (a host sync) cannot be traced: the error names it."""
    from detgn.modeling.roi_heads.box_head import FastRCNNConvFCHead

    original = FastRCNNConvFCHead.forward

    def branching_forward(self, x):
        if float(x.sum()) > 0:  # data-dependent Python branch
            return original(self, x)
        return original(self, -x)

    monkeypatch.setattr(FastRCNNConvFCHead, "forward", branching_forward)
    cfg = export_cfg()
    out = tmp_path / "out"
    with pytest.raises(ExportError) as info:
        export_model(cfg, out, fmt="onnx")
    message = str(info.value)
    assert "roi_heads.box_head (FastRCNNConvFCHead)" in message and "Nothing was written" in message
    assert not out.exists() or not any(out.iterdir())
