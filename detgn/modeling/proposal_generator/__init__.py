"""The first stage: anchors and the region proposal network."""
from typing import Dict

from detgn.layers.shape_spec import ShapeSpec

from .anchors import DefaultAnchorGenerator, build_anchor_generator, generate_cell_anchors
from .rpn import RPN, StandardRPNHead, build_rpn, find_top_rpn_proposals, rpn_losses


def build_proposal_generator(cfg, input_shape: Dict[str, ShapeSpec]) -> RPN:
    """The proposal generator of the config (the RPN is the only one detgn has)."""
    return build_rpn(cfg, input_shape)


__all__ = [
    "DefaultAnchorGenerator",
    "build_anchor_generator",
    "generate_cell_anchors",
    "RPN",
    "StandardRPNHead",
    "build_rpn",
    "build_proposal_generator",
    "find_top_rpn_proposals",
    "rpn_losses",
]
