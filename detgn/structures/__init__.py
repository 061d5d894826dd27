"""Typed containers shared by data, model and evaluation."""
from .boxes import Boxes, pairwise_iou
from .image_list import ImageList
from .instances import Instances
from .masks import BitMasks, PolygonMasks, polygons_to_bitmask, rle_to_bitmask

__all__ = [
    "Boxes",
    "pairwise_iou",
    "ImageList",
    "Instances",
    "BitMasks",
    "PolygonMasks",
    "polygons_to_bitmask",
    "rle_to_bitmask",
]
