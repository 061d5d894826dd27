"""Backbones: ResNet (C4) and ResNet+FPN, built by name from the config."""
from .backbone import Backbone
from .build import BACKBONE_REGISTRY, build_backbone
from .fpn import FPN, LastLevelMaxPool, build_resnet_fpn_backbone
from .resnet import (
    RESNET_SPECS,
    BasicBlock,
    BasicStem,
    BottleneckBlock,
    ResNet,
    build_res5_stage,
    build_resnet_backbone,
    build_resnet_c4_backbone,
    freeze_module,
    make_stage,
)

__all__ = [
    "BACKBONE_REGISTRY",
    "Backbone",
    "BasicBlock",
    "BasicStem",
    "BottleneckBlock",
    "FPN",
    "LastLevelMaxPool",
    "RESNET_SPECS",
    "ResNet",
    "build_backbone",
    "build_res5_stage",
    "build_resnet_backbone",
    "build_resnet_c4_backbone",
    "build_resnet_fpn_backbone",
    "freeze_module",
    "make_stage",
]
