"""check-export --stages: eager against onnxruntime stage by stage, on the matched proposals."""
import pytest

from export_testdata import decisive_weights, export_cfg, make_image

from detgn.engine import Predictor
from detgn.export.stages import STAGES, compare_stages, format_stages

pytestmark = pytest.mark.usefixtures("one_thread")


def test_every_stage_agrees_to_float_precision(tmp_path):
    cfg = export_cfg("C4", "GN", "2fc")
    cfg.MODEL.WEIGHTS = decisive_weights(cfg, tmp_path / "w.pth")
    model = Predictor(cfg).model
    (rows,) = compare_stages(model, [make_image(120, 150, seed=5)], min_size_test=cfg.INPUT.MIN_SIZE_TEST,
                             max_size_test=cfg.INPUT.MAX_SIZE_TEST)
    assert [r["stage"] for r in rows] == list(STAGES) + ["detections"]
    proposals = rows[1]
    matched, total = (int(v) for v in proposals["note"].split(" vs ")[0].split(" matched")[0].split(" of "))
    assert total > 10 and matched == total  # the same proposals, whatever their order
    for r in rows[:-1]:
        assert r["relative"] < 1e-4, r  # float32 summation order, nothing more
    assert "without a partner" not in rows[-1]["note"]
    table = format_stages(rows)
    assert table.count("\n") == len(rows) + 1 and "pooled RoI features" in table
