"""The detector: backbones, RPN, RoI heads and the GeneralizedRCNN that ties them."""
from .box_regression import Box2BoxTransform
from .build import META_ARCH_REGISTRY, build_model, build_model_without_weights
from .classifier import ImageClassifier, trunk_state_dict
from .describe import count_flops, count_parameters, describe_model
from .matcher import Matcher
from .meta_arch import GeneralizedRCNN, detector_postprocess
from .roi_heads import ROI_HEADS_REGISTRY
from .sampling import subsample_labels

__all__ = [
    "Box2BoxTransform",
    "GeneralizedRCNN",
    "ImageClassifier",
    "META_ARCH_REGISTRY",
    "Matcher",
    "ROI_HEADS_REGISTRY",
    "build_model",
    "build_model_without_weights",
    "count_flops",
    "count_parameters",
    "describe_model",
    "detector_postprocess",
    "subsample_labels",
    "trunk_state_dict",
]
