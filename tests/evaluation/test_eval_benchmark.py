"""The evaluator benchmark runs and its numbers are consistent."""
from detgn.benchmark.evaluator import benchmark_evaluator


def test_benchmark_evaluator_small():
    stats = benchmark_evaluator(3, 20, 128, objects_per_image=4, num_classes=3, write_results=False)
    assert stats["image_width"] == 128 and stats["image_height"] == 96 and stats["num_images"] == 3
    assert 0 < stats["encode_s_per_image"] and 0 < stats["process_s_per_image"] < stats["total_s_per_image"]
    assert 0 < stats["total_cpu_s_per_image"]
    assert abs(stats["evaluate_s_per_image"] * 3 - stats["evaluate_s"]) < 1e-9
    # every GT object has a jittered copy among the detections, so AP is clearly above 0
    assert stats["bbox_AP"] > 20 and stats["segm_AP"] > 20
