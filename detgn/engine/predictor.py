"""One way to run a trained detector: build the model, load its weights, predict on an image.

Every inference path uses this module: ``tools/visualize.py``, ``tools/train_net.py
--eval-only``, the demo's pictures, and :func:`detgn.model_zoo.configs.get` (which stops after
:func:`build_and_load_model`). Building goes through :func:`detgn.modeling.build_model`,
so device placement and ``CPU.CHANNELS_LAST`` are those of training, and ``CPU.BF16`` (auto: bf16
autocast on CPUs with native bf16, see :mod:`detgn.utils.cpu`) applies to its forward. To run a
model outside detgn, export it (:mod:`detgn.export`): ``ExportedPredictor`` is called the same way.

    predictor = Predictor(cfg)                  # MODEL.WEIGHTS, eval mode
    instances = predictor(cv2.imread("a.jpg"))  # Instances at the image's size, on the CPU
"""
from __future__ import annotations

import logging
from typing import Optional, Tuple

import numpy as np
import torch
from torch import nn

from detgn.checkpoint import WeightsReport, load_weights
from detgn.data.mapper import DatasetMapper
from detgn.modeling import build_model
from detgn.structures import Instances

logger = logging.getLogger(__name__)

__all__ = ["Predictor", "build_and_load_model"]


def build_and_load_model(cfg, *, weights: Optional[str] = None) -> Tuple[nn.Module, Optional[WeightsReport]]:
    """The config's model with its weights loaded, as built (training mode).

    Args:
        cfg: the config (MODEL.*, MODEL.DEVICE, CPU.CHANNELS_LAST, MODEL.WEIGHTS_ALLOW_PICKLE).
        weights: a weights file or zoo name; None: ``cfg.MODEL.WEIGHTS``. Empty: nothing
            is loaded (random initialisation).

    Returns:
        (model, report): the :class:`~detgn.checkpoint.WeightsReport` of the load, None
        when nothing was loaded.
    """
    weights = cfg.MODEL.WEIGHTS if weights is None else weights
    model = build_model(cfg)
    if not weights:
        return model, None
    return model, load_weights(model, weights, allow_pickle=cfg.MODEL.WEIGHTS_ALLOW_PICKLE)


class Predictor:
    """A config's detector in eval mode, run on one image at a time.

    Args:
        cfg: the model's config; its test-time input size (``INPUT.MIN_SIZE_TEST``,
            ``MAX_SIZE_TEST``) and channel order (``INPUT.FORMAT``) are applied exactly
            as in evaluation.
        weights: as for :func:`build_and_load_model` (default ``MODEL.WEIGHTS``).

    Attributes:
        model: the detector (eval mode, on ``MODEL.DEVICE``).
        weights_report: what loading the weights did (None when none were loaded).
        mapper: the test-time :class:`~detgn.data.DatasetMapper`.
    """

    def __init__(self, cfg, *, weights: Optional[str] = None):
        self.model, self.weights_report = build_and_load_model(cfg, weights=weights)
        if self.weights_report is None:
            logger.warning("No weights given (MODEL.WEIGHTS is empty): predicting with a randomly initialised model")
        self.model.eval()
        self.mapper = DatasetMapper.from_config(cfg, is_train=False)

    @torch.no_grad()
    def __call__(self, image_bgr: np.ndarray) -> Instances:
        """Detections of one image.

        Args:
            image_bgr: (H, W, 3) uint8 in BGR order (as ``cv2.imread`` returns it),
                whatever ``INPUT.FORMAT`` the model takes.
        Returns:
            ``Instances`` on the CPU at (H, W): ``pred_boxes``, ``scores``,
            ``pred_classes`` and, with masks on, ``pred_masks`` (N, H, W) bool.
        """
        if image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or image_bgr.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 BGR image, got {image_bgr.dtype} {image_bgr.shape}")
        # The same pixels read_image(file, image_format="RGB") gives the evaluation.
        image = np.ascontiguousarray(image_bgr[:, :, ::-1]) if self.mapper.image_format == "RGB" else image_bgr
        return self.model([self.mapper.map_image(image)])[0]["instances"].to("cpu")
