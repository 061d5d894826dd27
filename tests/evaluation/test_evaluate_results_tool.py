"""tools/evaluate_results.py re-scores a saved results file like the evaluator did."""
import json
import os
import subprocess
import sys

from detgn.evaluation import COCOEvaluator
from eval_testdata import assert_same_metrics, make_gt, perfect_detections, to_model_io, write_gt

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(ROOT, "tools", "evaluate_results.py")


def _run(*args):
    return subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_tool_reproduces_evaluator_metrics(tmp_path):
    gt_json = write_gt(tmp_path / "instances.json")
    gt = make_gt()
    dets = perfect_detections(gt)
    dets[0]["score"], dets[2]["category_id"] = 0.05, 3
    evaluator = COCOEvaluator.from_json(gt_json, output_dir=str(tmp_path / "run"), distributed=False)
    evaluator.process(*to_model_io(dets, gt))
    expected = evaluator.evaluate()

    results_file = str(tmp_path / "run" / "coco_instances_results.json")
    proc = _run("--json", gt_json, "--results", results_file, "--print-json", "--output-dir", str(tmp_path / "re"))
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    for task in ("bbox", "segm"):
        assert_same_metrics(got[task], expected[task])
    assert (tmp_path / "re" / "metrics.json").is_file()

    proc = _run("--json", gt_json, "--results", results_file, "--tasks", "bbox")
    assert proc.returncode == 0 and "[bbox]" in proc.stdout and "[segm]" not in proc.stdout


def test_tool_reports_missing_file(tmp_path):
    gt_json = write_gt(tmp_path / "instances.json")
    proc = _run("--json", gt_json, "--results", str(tmp_path / "missing.json"))
    assert proc.returncode == 2 and "missing.json" in proc.stderr
