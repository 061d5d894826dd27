"""``ImageClassifier``: the detector's ResNet trunk as an image classifier (backbone pre-training).

The GN paper's detectors start from ImageNet-trained GN backbones; this trains one, with
any depth, width and norm, through the same engine as detection (``tools/train_net.py``
or ``tools/pretrain_backbone.py`` with ``MODEL.META_ARCHITECTURE "ImageClassifier"``).
The trunk is the detection backbone's own ``ResNet`` (the same module names), so its
weights load into any detection config: :func:`trunk_state_dict` gives them under
part-relative names (``stem.conv1.weight``, ``res2.0.conv1.norm.weight``), which
:func:`detgn.checkpoint.load_weights` places into an FPN or C4 model.
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from detgn.config import ConfigError
from detgn.layers.auxiliary import pop_aux_losses

__all__ = ["ImageClassifier", "save_trunk", "trunk_state_dict", "TRUNK_PREFIX"]

# Prefix of the trunk's keys in the classifier's state dict.
TRUNK_PREFIX = "trunk."


class ImageClassifier(nn.Module):
    """ResNet trunk -> global average pool of ``in_feature`` -> linear layer.

    Args:
        trunk: a :class:`detgn.modeling.backbone.ResNet` returning ``in_feature``.
        in_feature: the trunk output that is pooled ("res5").
        num_classes: outputs of the linear layer.
        pixel_mean, pixel_std: per-channel input normalisation, in ``input_format`` order.

    Inputs: ``list[dict]`` with ``"image"`` (3, H, W) uint8 or float tensors, all of one
    size, and in training ``"label"``. Training returns ``{"loss_cls"[, "loss_evalnorm"]}``;
    evaluation returns one ``{"logits": (num_classes,)}`` per image.
    """

    def __init__(self, *, trunk: nn.Module, in_feature: str, num_classes: int, pixel_mean: Sequence[float],
                 pixel_std: Sequence[float]):
        super().__init__()
        shapes = trunk.output_shape()
        if in_feature not in shapes:
            raise ValueError(f"The trunk returns {sorted(shapes)}, not {in_feature!r}")
        self.trunk = trunk
        self.in_feature = in_feature
        self.fc = nn.Linear(shapes[in_feature].channels, num_classes)
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)
        self.register_buffer("pixel_mean", torch.tensor(list(pixel_mean)).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(list(pixel_std)).view(-1, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess(self, batched_inputs: List[Dict]) -> torch.Tensor:
        """Normalised (N, 3, H, W) float batch on the model's device."""
        images = [x["image"] for x in batched_inputs]
        sizes = {tuple(im.shape) for im in images}
        if len(sizes) != 1:
            raise ValueError(f"ImageClassifier needs images of one size in a batch, got {sorted(sizes)}; "
                             "the classification mapper crops them to INPUT.CLASSIFY.*_CROP")
        x = torch.stack(images).to(self.device, non_blocking=True).float()
        return (x - self.pixel_mean) / self.pixel_std

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) normalised images -> (N, num_classes)."""
        feature = self.trunk(x)[self.in_feature]
        return self.fc(feature.float().mean(dim=(2, 3)))

    def forward(self, batched_inputs: List[Dict]):
        logits = self.logits(self.preprocess(batched_inputs))
        if not self.training:
            return [{"logits": row} for row in logits.detach()]
        labels = torch.as_tensor([int(x["label"]) for x in batched_inputs], device=logits.device)
        losses = {"loss_cls": F.cross_entropy(logits, labels)}
        losses.update(pop_aux_losses(self))  # what layers record beside the model (e.g. EvalNorm fitted online)
        return losses

    @classmethod
    def from_config(cls, cfg) -> "ImageClassifier":
        """``MODEL.RESNETS.*`` trunk up to ``MODEL.CLASSIFIER.IN_FEATURE``, frozen up to
        ``MODEL.BACKBONE.FREEZE_AT`` (0 for pre-training), ``MODEL.CLASSIFIER.NUM_CLASSES`` outputs."""
        from detgn.modeling.backbone.resnet import ResNet, freeze_at_from_cfg, resnet_kwargs_from_cfg

        c = cfg.MODEL.CLASSIFIER
        known = ("res2", "res3", "res4", "res5")
        if c.IN_FEATURE not in known:
            raise ConfigError(f"MODEL.CLASSIFIER.IN_FEATURE = {c.IN_FEATURE!r}; choose one of {list(known)}")
        if c.NUM_CLASSES < 2:
            raise ConfigError(f"MODEL.CLASSIFIER.NUM_CLASSES = {c.NUM_CLASSES}; a classifier needs at least 2")
        if len(cfg.MODEL.PIXEL_MEAN) != len(cfg.MODEL.PIXEL_STD):
            raise ConfigError("MODEL.PIXEL_MEAN and MODEL.PIXEL_STD have different lengths")
        trunk = ResNet(**resnet_kwargs_from_cfg(cfg), in_channels=len(cfg.MODEL.PIXEL_MEAN),
                       out_features=[c.IN_FEATURE], freeze_at=freeze_at_from_cfg(cfg))
        return cls(trunk=trunk, in_feature=c.IN_FEATURE, num_classes=c.NUM_CLASSES,
                   pixel_mean=cfg.MODEL.PIXEL_MEAN, pixel_std=cfg.MODEL.PIXEL_STD)


def trunk_state_dict(model_or_state, *, prefix: str = TRUNK_PREFIX) -> Dict[str, torch.Tensor]:
    """The trunk's tensors under part-relative names (``stem.conv1.weight``, ``res5.2.conv3.norm.bias``).

    Args:
        model_or_state: an :class:`ImageClassifier` (DDP-wrapped or not) or its state dict.
    Returns:
        a new dict of detached CPU tensors, ready for ``torch.save``.
    """
    module = getattr(model_or_state, "module", model_or_state)
    state = module.state_dict() if isinstance(module, nn.Module) else model_or_state
    out = {k[len(prefix):]: v.detach().cpu().clone() for k, v in state.items() if k.startswith(prefix)}
    if not out:
        raise ValueError(f"No '{prefix}*' tensor: this is not an ImageClassifier state dict")
    return out


def save_trunk(model, path: str, *, cfg=None) -> str:
    """Write ``{"trunk": part-relative state, "meta": {...}}`` atomically to ``path`` (returned).

    ``MODEL.WEIGHTS path`` then loads the trunk into any detection config with the same
    ``MODEL.RESNETS.*`` (``detgn.checkpoint.load_weights`` places the names into an FPN or
    C4 model). ``meta`` records the architecture and the input normalisation it was trained with.
    """
    from detgn.utils.file_io import atomic_write

    meta = {"format": "detgn pre-trained trunk", "version": 1}
    if cfg is not None:
        r = cfg.MODEL.RESNETS
        meta.update(depth=r.DEPTH, norm=r.NORM, stem_out_channels=r.STEM_OUT_CHANNELS,
                    res2_out_channels=r.RES2_OUT_CHANNELS, num_groups=r.NUM_GROUPS,
                    width_per_group=r.WIDTH_PER_GROUP, input_format=cfg.INPUT.FORMAT,
                    pixel_mean=list(cfg.MODEL.PIXEL_MEAN), pixel_std=list(cfg.MODEL.PIXEL_STD),
                    train_sets=list(cfg.DATASETS.TRAIN))
    state = {"trunk": trunk_state_dict(model), "meta": meta}
    atomic_write(path, lambda f: torch.save(state, f))
    return path


def describe_classifier(model: ImageClassifier) -> List[tuple]:
    """(label, modules) parts for :func:`detgn.modeling.build.describe_model`."""
    return [(f"trunk ({type(model.trunk).__name__}, pooled {model.in_feature})", [model.trunk]),
            ("classifier (fc)", [model.fc])]
