"""The built-in dataset names: COCO 2017 and the synthetic set, under ``DETGN_DATASETS``,
and the classification (ImageFolder) sets ``imagenet_{train,val}``, ``synthetic_cls_{train,val}``.

``coco_2017_{train,val}`` and ``synthetic_{train,val}`` are COCO-format sets whose files
are looked up under :func:`detgn.data.catalog.datasets_root` (``$DETGN_DATASETS``, default
``./datasets``) at every lookup, so setting the variable after ``import detgn`` still
works. A missing set is the usual first-run problem: loading it says where it was
looked for and how to get it. ``detgn.data`` registers these names when it is imported
(:func:`register_builtin_datasets`).
"""
from __future__ import annotations

import os

from ..catalog import datasets_root
from .coco import register_coco_instances
from .image_folder import register_builtin_image_folders

__all__ = ["BUILTIN_COCO_DATASETS", "register_builtin_datasets"]

# name -> (json path, image folder), relative to the datasets root.
BUILTIN_COCO_DATASETS = {
    "coco_2017_train": ("coco/annotations/instances_train2017.json", "coco/train2017"),
    "coco_2017_val": ("coco/annotations/instances_val2017.json", "coco/val2017"),
    "synthetic_train": ("synthetic/annotations/instances_train.json", "synthetic/train"),
    "synthetic_val": ("synthetic/annotations/instances_val.json", "synthetic/val"),
}

_HOW_TO_GET = {
    "coco": "download COCO 2017 (images and annotations) into that folder (see datasets/README.md)",
    "synthetic": "create it with `python datasets/prepare_synthetic.py --out <DETGN_DATASETS>/synthetic`",
}


def register_builtin_datasets() -> None:
    """Register every name of :data:`BUILTIN_COCO_DATASETS` and the built-in image folders (once per process)."""
    for name, (json_rel, root_rel) in BUILTIN_COCO_DATASETS.items():
        family = name.split("_")[0]
        # Default arguments bind this iteration's values.
        json_fn = lambda rel=json_rel: os.path.join(datasets_root(), rel)
        root_fn = lambda rel=root_rel: os.path.join(datasets_root(), rel)
        hint = lambda family=family: (
            f"DETGN_DATASETS={os.environ.get('DETGN_DATASETS', '<unset: ./datasets>')}; set it to the folder "
            f"that holds '{family}/', or {_HOW_TO_GET[family]}."
        )
        register_coco_instances(name, json_fn, root_fn, missing_hint=hint)
    register_builtin_image_folders()
