"""COCO box and mask AP with pycocotools' COCOeval.

Model outputs (``Instances`` at the original image size, contiguous class ids)
become COCO result records (XYWH boxes, dataset category ids, compressed RLE
masks), which are gathered to rank 0, written to ``coco_instances_results.json``
and scored by COCOeval (crowd regions, area ranges and max-dets exactly as
pycocotools defines them). Metrics are percentages; per-category AP is
reported as ``AP-<class name>``.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np
import torch

from detgn.utils import comm
from detgn.utils.file_io import atomic_write_json

from .evaluator import DatasetEvaluator, format_results_table

logger = logging.getLogger(__name__)

VALID_TASKS = ("bbox", "segm")
SUMMARY_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
RESULTS_FILE = "coco_instances_results.json"
METRICS_FILE = "metrics.json"


# ---------------------------------------------------------------- conversion
def encode_masks(masks) -> List[dict]:
    """Compressed RLE of binary masks, in one ``pycocotools.mask.encode`` call.

    Args:
        masks: (N, H, W) bool or uint8 tensor / ndarray, or BitMasks.
    Returns:
        N dicts ``{"size": [H, W], "counts": str}`` (counts decoded for JSON).
    """
    import cv2
    from pycocotools import mask as mask_util

    if hasattr(masks, "tensor"):  # BitMasks
        masks = masks.tensor
    if isinstance(masks, torch.Tensor):
        masks = masks.detach().cpu().numpy()
    if masks.dtype == np.bool_:
        masks = masks.view(np.uint8)  # same bytes, no copy
    elif masks.dtype != np.uint8:
        raise ValueError(
            f"pred_masks must be bool or uint8 (N, H, W) binary masks, got {masks.dtype}; "
            "threshold mask probabilities (e.g. >= 0.5) before evaluation"
        )
    if masks.ndim != 3:
        raise ValueError(f"pred_masks must be (N, H, W), got shape {masks.shape}")
    n, h, w = masks.shape
    # COCO RLE runs down columns, so encode wants a Fortran (H, W, N) array: that
    # is the C-ordered (N, W, H) stack of transposed masks. cv2's 2-D transpose is
    # ~2.5x faster than numpy's strided copy, which would cost as much as encoding.
    transposed = np.empty((n, w, h), dtype=np.uint8)
    masks = np.ascontiguousarray(masks)
    for i in range(n):
        cv2.transpose(masks[i], transposed[i])
    rles = mask_util.encode(transposed.transpose(2, 1, 0))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def instances_to_coco_json(
    instances, image_id: int, *, dataset_id_lut: Optional[np.ndarray] = None
) -> List[dict]:
    """Turn one image's predictions into COCO result records.

    Args:
        instances: Instances with ``pred_boxes`` (N, 4 XYXY), ``scores`` (N,),
            ``pred_classes`` (N,) contiguous ids and optionally ``pred_masks``
            (N, H, W) bool at the original image size.
        image_id: the dataset's image id.
        dataset_id_lut: (K,) int array, contiguous id -> dataset category id
            (identity when None).
    Returns:
        N dicts ``{image_id, category_id, bbox [x, y, w, h], score[, segmentation]}``.
    """
    n = len(instances)
    if n == 0:
        return []
    boxes = instances.pred_boxes.tensor.detach().cpu().double().numpy().copy()
    boxes[:, 2:] -= boxes[:, :2]
    scores = instances.scores.detach().cpu().tolist()
    classes = instances.pred_classes.detach().cpu().numpy().astype(np.int64)
    if dataset_id_lut is not None:
        bad = (classes < 0) | (classes >= len(dataset_id_lut))
        if bad.any():
            raise ValueError(
                f"Image {image_id}: pred_classes {sorted(set(classes[bad].tolist()))} are outside "
                f"the dataset's {len(dataset_id_lut)} contiguous class ids; does the model's "
                "NUM_CLASSES match the evaluation dataset?"
            )
        classes = dataset_id_lut[classes]
    classes = classes.tolist()
    boxes = boxes.tolist()
    image_id = int(image_id)
    results = [
        {"image_id": image_id, "category_id": classes[i], "bbox": boxes[i], "score": scores[i]}
        for i in range(n)
    ]
    if instances.has("pred_masks"):
        for rec, rle in zip(results, encode_masks(instances.pred_masks)):
            rec["segmentation"] = rle
    return results


def merge_predictions(per_rank: Sequence[List[dict]]) -> List[dict]:
    """Merge the per-image prediction lists gathered from every rank.

    Each element is ``{"image_id", "instances": [records]}``. An image seen by
    more than one rank (a sampler padding shards to equal length) counts once.
    Returns the entries sorted by image id, so the output is rank-order free.
    """
    merged: Dict[int, dict] = {}
    duplicates = 0
    for entries in per_rank:
        for entry in entries:
            if entry["image_id"] in merged:
                duplicates += 1
                continue
            merged[entry["image_id"]] = entry
    if duplicates:
        logger.warning("%d duplicate image predictions across ranks were dropped", duplicates)
    return [merged[k] for k in sorted(merged)]


# ---------------------------------------------------------------- COCOeval
def load_coco_json(json_file: str):
    """Load a COCO annotation file into pycocotools' COCO, with readable errors."""
    from pycocotools.coco import COCO

    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"COCO annotation file not found: {json_file}")
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(json_file)
    for ann in coco.dataset.get("annotations", []):
        required = ("iscrowd", "area", "bbox", "image_id", "category_id")
        missing = [k for k in required if k not in ann]
        if missing:
            raise ValueError(
                f"{json_file}: annotation id {ann.get('id')} lacks {missing}; COCOeval needs "
                "every annotation to have iscrowd (0/1), area, bbox, image_id and category_id"
            )
    return coco


def _coco_results(coco_gt, results: List[dict], task: str):
    """pycocotools result object for ``task``; copies records since loadRes mutates them."""
    from pycocotools.coco import COCO

    if not results:
        # loadRes crashes on an empty list; an index with no annotations scores 0.
        coco_dt = COCO()
        coco_dt.dataset = {
            "images": list(coco_gt.dataset["images"]),
            "categories": copy.deepcopy(coco_gt.dataset["categories"]),
            "annotations": [],
        }
        with contextlib.redirect_stdout(io.StringIO()):
            coco_dt.createIndex()
        return coco_dt
    records = []
    for r in results:
        r = dict(r)
        # loadRes takes the bbox branch whenever "bbox" is present, which would
        # replace mask areas by box areas; segm must derive area/bbox from the RLE.
        r.pop("bbox" if task == "segm" else "segmentation", None)
        records.append(r)
    with contextlib.redirect_stdout(io.StringIO()):
        return coco_gt.loadRes(records)


def evaluate_predictions_on_coco(
    coco_gt, results: List[dict], task: str, *,
    class_names: Optional[Mapping[int, str]] = None, img_ids: Optional[Iterable[int]] = None,
) -> Dict[str, float]:
    """Run COCOeval for ``task`` ("bbox" or "segm") on COCO result records.

    Args:
        coco_gt: pycocotools COCO with the ground truth.
        results: records with dataset category ids (``segmentation`` RLE for segm).
        class_names: dataset category id -> name (default: the GT file's names).
        img_ids: restrict to these images (default: every GT image).
    Returns:
        ``{"AP", "AP50", "AP75", "APs", "APm", "APl", "AP-<name>"...}`` in percent;
        NaN where COCOeval has no ground truth to score against.
    """
    from pycocotools.cocoeval import COCOeval

    if task not in VALID_TASKS:
        raise ValueError(f"Unknown COCO task '{task}'; valid tasks: {VALID_TASKS}")
    _check_results_match_gt(coco_gt, results, task)
    coco_dt = _coco_results(coco_gt, results, task)
    coco_eval = COCOeval(coco_gt, coco_dt, task)
    if img_ids is not None:
        coco_eval.params.imgIds = sorted(int(i) for i in img_ids)
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    logger.info("COCOeval %s:\n%s", task, _summary_lines(summary.getvalue()))

    metrics = {
        name: float(coco_eval.stats[i] * 100) if coco_eval.stats[i] >= 0 else float("nan")
        for i, name in enumerate(SUMMARY_METRICS)
    }
    names = class_names or {c["id"]: c["name"] for c in coco_gt.dataset["categories"]}
    # precision: (iou thresholds, recall thresholds, categories, area ranges, max dets);
    # area "all" and the largest max-dets, -1 marks "no ground truth".
    precision = coco_eval.eval["precision"]
    for k, cat_id in enumerate(coco_eval.params.catIds):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        ap = float(p.mean() * 100) if p.size else float("nan")
        metrics[f"AP-{names.get(cat_id, cat_id)}"] = ap
    return metrics


def _summary_lines(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if line.lstrip().startswith("Average"))


def _check_results_match_gt(coco_gt, results: List[dict], task: str) -> None:
    img_ids = {r["image_id"] for r in results} - set(coco_gt.getImgIds())
    if img_ids:
        raise ValueError(
            f"Predictions for image ids {sorted(img_ids)[:10]} are not in the ground-truth file; "
            "are the predictions evaluated against the wrong annotation file?"
        )
    cat_ids = {r["category_id"] for r in results} - set(coco_gt.getCatIds())
    if cat_ids:
        raise ValueError(
            f"Predictions use category ids {sorted(cat_ids)[:10]} that the ground truth does not "
            f"define (it has {sorted(coco_gt.getCatIds())[:20]}); were contiguous ids not mapped "
            "back to dataset ids?"
        )
    if task == "segm" and any("segmentation" not in r for r in results):
        raise ValueError("segm evaluation needs a 'segmentation' (RLE) in every result record")


def _segm_available(results: List[dict]) -> bool:
    return all("segmentation" in r for r in results)


def _evaluate_tasks(
    coco_gt, results: List[dict], tasks: Sequence[str], *, class_names=None, img_ids=None,
    output_dir: Optional[str] = None,
) -> Dict[str, Dict[str, float]]:
    """Shared tail of the evaluator and of results-file re-evaluation."""
    if not results:
        logger.warning("No predictions at all: every AP is 0 (is the score threshold too high?)")
    tasks = list(tasks)
    if "segm" in tasks and not _segm_available(results):
        tasks.remove("segm")
        logger.warning("Predictions have no masks: evaluating %s only", tasks)
    out = {
        task: evaluate_predictions_on_coco(
            coco_gt, results, task, class_names=class_names, img_ids=img_ids
        )
        for task in tasks
    }
    if output_dir:
        atomic_write_json(os.path.join(output_dir, METRICS_FILE), out)
    logger.info("COCO metrics:\n%s", format_results_table(out))
    return out


def _check_tasks(tasks: Sequence[str]) -> tuple:
    tasks = tuple(tasks)
    bad = [t for t in tasks if t not in VALID_TASKS]
    if bad or not tasks:
        raise ValueError(f"tasks must be a non-empty subset of {VALID_TASKS}, got {tasks}")
    return tasks


def evaluate_results_file(
    json_file: str, results_file: str, tasks: Sequence[str] = VALID_TASKS,
    output_dir: Optional[str] = None,
) -> Dict[str, Dict[str, float]]:
    """Re-evaluate a saved ``coco_instances_results.json`` without the model.

    Every ground-truth image is scored (a results file cannot tell an image with
    zero detections from one that was never run). Writes ``metrics.json`` to
    ``output_dir`` when given.
    """
    tasks = _check_tasks(tasks)
    if not os.path.isfile(results_file):
        raise FileNotFoundError(f"Results file not found: {results_file}")
    with open(results_file) as f:
        results = json.load(f)
    if not isinstance(results, list):
        raise ValueError(f"{results_file}: expected a JSON list of COCO result records")
    coco_gt = load_coco_json(json_file)
    return _evaluate_tasks(coco_gt, results, tasks, output_dir=output_dir)


# ---------------------------------------------------------------- evaluator
class COCOEvaluator(DatasetEvaluator):
    """COCO AP for ``bbox`` and ``segm`` over one dataset, across processes.

    Built from a registered dataset (``MetadataCatalog`` gives ``json_file``,
    ``thing_classes`` and ``contiguous_id_to_dataset_id``) or from a JSON file
    with :meth:`from_json` (contiguous ids = categories sorted by id).
    """

    def __init__(self, dataset_name: str, *, output_dir: Optional[str] = None,
                 tasks: Sequence[str] = VALID_TASKS, distributed: bool = True):
        from detgn.data import MetadataCatalog  # lazy: evaluation stays importable without data

        meta = MetadataCatalog.get(dataset_name)
        json_file = getattr(meta, "json_file", None)
        if not json_file:
            raise ValueError(
                f"Dataset '{dataset_name}' has no json_file in its metadata; COCOEvaluator needs the "
                "COCO annotation file (register it with register_coco_instances)"
            )
        self._setup(
            json_file, output_dir=output_dir, tasks=tasks, distributed=distributed,
            contiguous_id_to_dataset_id=getattr(meta, "contiguous_id_to_dataset_id", None),
            class_names=getattr(meta, "thing_classes", None),
        )

    @classmethod
    def from_json(cls, json_file: str, *, output_dir: Optional[str] = None,
                  tasks: Sequence[str] = VALID_TASKS, distributed: bool = True) -> "COCOEvaluator":
        """An evaluator for a COCO annotation file that is not in the catalog."""
        self = cls.__new__(cls)
        self._setup(json_file, output_dir=output_dir, tasks=tasks, distributed=distributed,
                    contiguous_id_to_dataset_id=None, class_names=None)
        return self

    def _setup(self, json_file, *, output_dir, tasks, distributed,
               contiguous_id_to_dataset_id, class_names):
        self._json_file = json_file
        self._output_dir = output_dir
        self._tasks = _check_tasks(tasks)
        self._distributed = distributed
        self._coco_gt = None
        if contiguous_id_to_dataset_id is None:
            self._coco_gt = load_coco_json(json_file)
            contiguous_id_to_dataset_id = dict(enumerate(sorted(self._coco_gt.getCatIds())))
        k = len(contiguous_id_to_dataset_id)
        if sorted(contiguous_id_to_dataset_id) != list(range(k)):
            raise ValueError(f"{json_file}: contiguous class ids must be 0..{k - 1}, "
                             f"got {sorted(contiguous_id_to_dataset_id)}")
        self._dataset_id_lut = np.array(
            [contiguous_id_to_dataset_id[i] for i in range(k)], dtype=np.int64
        )
        self._class_names = None
        if class_names:
            if len(class_names) != k:
                raise ValueError(f"{json_file}: {len(class_names)} thing_classes for {k} "
                                 "contiguous class ids; the dataset metadata is inconsistent")
            self._class_names = {int(d): name for d, name in zip(self._dataset_id_lut, class_names)}
        self.reset()

    def reset(self) -> None:
        self._predictions: List[dict] = []

    def process(self, inputs: List[dict], outputs: List[dict]) -> None:
        """Convert each image's ``outputs[i]["instances"]`` into COCO records now,
        so only compact RLEs (not full-size masks) are held until evaluate()."""
        for inp, out in zip(inputs, outputs):
            if "instances" not in out:
                raise ValueError(f"Model output for image {inp.get('image_id')} has no 'instances' "
                                 f"(keys: {sorted(out)}); run the model in eval mode")
            instances = out["instances"]
            if instances.has("pred_masks") and len(instances) and "height" in inp:
                mask_hw = tuple(instances.pred_masks.shape[-2:])
                if mask_hw != (inp["height"], inp["width"]):
                    raise ValueError(
                        f"Image {inp['image_id']} ({inp.get('file_name', '?')}): pred_masks are "
                        f"{mask_hw} but the original image is {(inp['height'], inp['width'])}; "
                        "masks must be pasted at the original size"
                    )
            records = instances_to_coco_json(
                instances, inp["image_id"], dataset_id_lut=self._dataset_id_lut
            )
            self._predictions.append({"image_id": int(inp["image_id"]), "instances": records})

    def evaluate(self) -> Dict[str, Dict[str, float]]:
        """Gather to rank 0 and score there; other ranks return ``{}``."""
        if self._distributed and comm.get_world_size() > 1:
            comm.synchronize()
            gathered = comm.gather(self._predictions, dst=0)
            if not comm.is_main_process():
                return {}
        else:
            gathered = [self._predictions]
        return self._evaluate_merged(merge_predictions(gathered))

    def _evaluate_merged(self, predictions: List[dict]) -> Dict[str, Dict[str, float]]:
        if self._coco_gt is None:
            self._coco_gt = load_coco_json(self._json_file)
        gt_ids = set(self._coco_gt.getImgIds())
        seen = [p["image_id"] for p in predictions]
        unknown = set(seen) - gt_ids
        if unknown:
            raise ValueError(
                f"Processed image ids {sorted(unknown)[:10]} are not in {self._json_file}; "
                "is the evaluator built for the dataset the loader reads?"
            )
        img_ids = None
        if not predictions:
            logger.warning("COCOEvaluator received no images; all %d images of %s count as missed",
                           len(gt_ids), self._json_file)
        elif len(seen) < len(gt_ids):
            # Images that were never run are not misses: score only what was processed.
            logger.warning("Evaluating on %d of the %d images of %s",
                           len(seen), len(gt_ids), self._json_file)
            img_ids = seen
        results = [r for p in predictions for r in p["instances"]]
        if self._output_dir:
            atomic_write_json(os.path.join(self._output_dir, RESULTS_FILE), results)
        return _evaluate_tasks(
            self._coco_gt, results, self._tasks, class_names=self._class_names,
            img_ids=img_ids, output_dir=self._output_dir,
        )
