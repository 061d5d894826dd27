"""``detgn evaluate-results`` (tools/evaluate_results.py) re-scores a saved results file like the
evaluator did."""
import json

from detgn.cli import evaluate_results
from detgn.evaluation import COCOEvaluator
from eval_testdata import assert_same_metrics, make_gt, perfect_detections, to_model_io, write_gt


def _run(capsys, *args):
    # In-process: a subprocess would spend seconds re-importing torch.
    code = evaluate_results.main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_tool_reproduces_evaluator_metrics(tmp_path, capsys):
    gt_json = write_gt(tmp_path / "instances.json")
    gt = make_gt()
    dets = perfect_detections(gt)
    dets[0]["score"], dets[2]["category_id"] = 0.05, 3
    evaluator = COCOEvaluator.from_json(gt_json, output_dir=str(tmp_path / "run"), distributed=False)
    evaluator.process(*to_model_io(dets, gt))
    expected = evaluator.evaluate()

    results_file = str(tmp_path / "run" / "coco_instances_results.json")
    code, out, err = _run(capsys, "--json", gt_json, "--results", results_file, "--print-json",
                          "--output-dir", str(tmp_path / "re"))
    assert code == 0, err
    got = json.loads(out)
    for task in ("bbox", "segm"):
        assert_same_metrics(got[task], expected[task])
    assert (tmp_path / "re" / "metrics.json").is_file()

    code, out, _ = _run(capsys, "--json", gt_json, "--results", results_file, "--tasks", "bbox")
    assert code == 0 and "[bbox]" in out and "[segm]" not in out and "AP-person" not in out
    assert "person" in out  # per-category table


def test_tool_reports_missing_file(tmp_path, capsys):
    gt_json = write_gt(tmp_path / "instances.json")
    code, _, err = _run(capsys, "--json", gt_json, "--results", str(tmp_path / "missing.json"))
    assert code == 2 and "missing.json" in err
