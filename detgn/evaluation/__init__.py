"""Evaluation: the inference loop, COCO box / mask AP and classification top-k error."""
from .classification import ClassificationEvaluator
from .coco_evaluator import (
    COCOEvaluator,
    encode_masks,
    evaluate_predictions_on_coco,
    evaluate_results_file,
    instances_to_coco_json,
    load_coco_json,
    merge_predictions,
)
from .evaluator import (
    DatasetEvaluator,
    DatasetEvaluators,
    format_results_table,
    inference_context,
    inference_on_dataset,
)

__all__ = [
    "ClassificationEvaluator",
    "COCOEvaluator",
    "DatasetEvaluator",
    "DatasetEvaluators",
    "encode_masks",
    "evaluate_predictions_on_coco",
    "evaluate_results_file",
    "format_results_table",
    "inference_context",
    "inference_on_dataset",
    "instances_to_coco_json",
    "load_coco_json",
    "merge_predictions",
]
