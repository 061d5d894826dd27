"""Two real processes (gloo): predictions gathered to rank 0 score like one process."""
import json
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from detgn.evaluation import COCOEvaluator
from eval_testdata import assert_same_metrics, make_gt, perfect_detections, to_model_io, write_gt

SHARDS = ({1, 3, 5}, {2, 4})


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _detections():
    dets = perfect_detections(make_gt())
    dets[0]["score"], dets[1]["category_id"], dets[4]["bbox"][1] = 0.02, 20, dets[4]["bbox"][1] + 5
    return dets


def _worker(rank: int, port: int, gt_json: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        evaluator = COCOEvaluator.from_json(gt_json, output_dir=out_dir, distributed=True)
        evaluator.process(*to_model_io(_detections(), make_gt(), image_ids=SHARDS[rank]))
        results = evaluator.evaluate()
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(results, f)
    finally:
        dist.destroy_process_group()


def test_gloo_two_processes_match_single_process(tmp_path):
    gt_json = write_gt(tmp_path / "instances.json")
    out_dir = str(tmp_path / "out")
    os.makedirs(out_dir)
    # fork: the children inherit the imported torch/pycocotools instead of paying
    # seconds each to import them again; they run no OpenMP-parallel torch ops.
    mp.start_processes(_worker, args=(_free_port(), gt_json, out_dir), nprocs=2, join=True, start_method="fork")

    single = COCOEvaluator.from_json(gt_json, distributed=False)
    single.process(*to_model_io(_detections(), make_gt()))
    expected = single.evaluate()
    with open(os.path.join(out_dir, "rank0.json")) as f:
        rank0 = json.load(f)
    with open(os.path.join(out_dir, "rank1.json")) as f:
        assert json.load(f) == {}
    for task in ("bbox", "segm"):
        assert_same_metrics(rank0[task], expected[task])
    assert 0 < expected["bbox"]["AP"] < 100
    with open(os.path.join(out_dir, "coco_instances_results.json")) as f:
        assert len(json.load(f)) == len(_detections())  # only rank 0 wrote, with every image
