"""Datasets (:mod:`.datasets`: COCO loading with validation, image folders, the synthetic sets),
the catalogs, the detection mapper, samplers and loaders (detection: :mod:`.build`,
classification: :mod:`.classification`), and the record of unreadable files (:mod:`.bad_images`).

Importing ``detgn.data`` registers the built-in dataset names (:mod:`.datasets.builtin`).
``detgn.data.datasets.synthetic`` (the synthetic COCO generator) is imported on first use of
``generate_synthetic_coco`` only, so importing detgn.data stays light; likewise
``generate_synthetic_cls`` (``detgn.data.datasets.synthetic_cls``, the classification set).
"""
from .build import (
    BadImageTracker,
    TooManyBadImagesError,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from .classification import (
    ClassificationMapper,
    build_classification_test_loader,
    build_classification_train_loader,
)
from .datasets.builtin import register_builtin_datasets
from .catalog import DatasetCatalog, MetadataCatalog
from .datasets.coco import CocoFormatError, load_coco_json, register_coco_instances
from .datasets.image_folder import get_classification_dataset_dicts, load_image_folder, register_image_folder
from .mapper import DatasetMapper, ImageReadError
from .samplers import InferenceSampler, TrainingSampler

__all__ = [
    "DatasetCatalog",
    "MetadataCatalog",
    "register_coco_instances",
    "load_coco_json",
    "CocoFormatError",
    "DatasetMapper",
    "ImageReadError",
    "TrainingSampler",
    "InferenceSampler",
    "build_detection_train_loader",
    "build_detection_test_loader",
    "BadImageTracker",
    "TooManyBadImagesError",
    "get_detection_dataset_dicts",
    "ClassificationMapper",
    "build_classification_train_loader",
    "build_classification_test_loader",
    "get_classification_dataset_dicts",
    "load_image_folder",
    "register_image_folder",
]

register_builtin_datasets()


def __getattr__(name):
    if name == "generate_synthetic_coco":
        from .datasets.synthetic import generate_synthetic_coco

        return generate_synthetic_coco
    if name == "generate_synthetic_cls":
        from .datasets.synthetic_cls import generate_synthetic_cls

        return generate_synthetic_cls
    raise AttributeError(f"module 'detgn.data' has no attribute '{name}'")
