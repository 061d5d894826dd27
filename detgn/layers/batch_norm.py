"""Fine-tuned BatchNorm ("BN") with EvalNorm: evaluation-time statistics for small batches.

A BN layer trained on batches of B samples normalises a sample with statistics that
partly come from the sample itself (EvalNorm paper, shared/papers/evalnorm.txt, eqs
3-4, with alpha = 1/B and C the B - 1 other samples)::

    mu_B  = a mu_i + (1 - a) mu_C
    var_B = a var_i + (1 - a) var_C + a (1 - a) (mu_i - mu_C)^2

Plain evaluation replaces mu_B, var_B by the running averages mu_E, var_E and so drops
the sample's own share: for B = 2 that is half of it. EvalNorm (eqs 5-6) puts it back
with two scalars per layer, alpha and beta::

    mu^  = alpha mu_i + (1 - alpha) mu_E
    var^ = beta var_i + (1 - beta) var_E + beta (1 - beta) (mu_i - mu_E)^2

alpha = beta = 0 is plain BN evaluation (with the biased running variance, below),
alpha = beta = 1 is InstanceNorm. Every sample is normalised by its own statistics and
the running ones, so its output does not depend on its batch mates.

The running variance torch keeps is the average of *unbiased* batch variances (n / (n-1)
times the biased variance of the n = B*H*W values of a channel), while eq. 4 holds for
biased variances: :class:`BatchNorm2d` records n and B (``train_numel``,
``train_batch_size``: means over the training batches, checkpointed) and uses
``running_var * (n - 1) / n`` as var_E. The three ways to get alpha and beta:

- online (:func:`detgn.layers.evalnorm_setup.configure_evalnorm` with ``mode="online"``): during
  training, each layer adds the auxiliary L1 loss of eq. 9 between its stop-gradient training output
  ``(x - mu_B) / sigma_B`` and the EvalNorm output of the stop-gradient input. Only
  alpha and beta receive gradients, so the model trains bit for bit as without EvalNorm;
- offline (:func:`detgn.study.norm_calibration.calibrate_evalnorm`): the same loss on a
  trained, frozen model over training batches of the training batch size;
- the rule of thumb alpha = beta = 1/B^2 (``mode="rule"`` or
  :func:`~detgn.layers.evalnorm_setup.apply_evalnorm_rule`).

This module is the layer and its pure functions; switching EvalNorm on in a whole model,
the rule and the summaries are :mod:`detgn.layers.evalnorm_setup`. The layer declares its
auxiliary loss (``loss_evalnorm``) and its parameter group (``"evalnorm"``) through
:mod:`detgn.layers.auxiliary`, so the trainer and the solver need not know about it.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .auxiliary import AuxiliaryModule, AuxLoss, ParamGroup

__all__ = [
    "BatchNorm2d",
    "EVALNORM_LOSS",
    "evalnorm",
    "evalnorm_aux_loss",
    "evalnorm_moments",
    "normalize_per_sample",
    "sample_moments",
]

# The loss dict key of the online auxiliary loss (eq. 9), summed over the BN layers.
EVALNORM_LOSS = "loss_evalnorm"
# State added to nn.BatchNorm2d's; absent from older checkpoints and foreign files.
_EXTRA_STATE = ("train_batch_size", "train_numel", "evalnorm_alpha", "evalnorm_beta")


# ---------------------------------------------------------------------------- #
# Pure functions
# ---------------------------------------------------------------------------- #
def sample_moments(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-sample, per-channel mean and biased variance over the spatial dimensions.

    Shapes: (N, C, *spatial) -> ((N, C), (N, C)); computed in float32 or wider.
    """
    dims = tuple(range(2, x.dim()))
    xf = x if x.dtype in (torch.float32, torch.float64) else x.float()
    if not dims:  # (N, C): one value per channel and sample
        return xf, torch.zeros_like(xf)
    var, mean = torch.var_mean(xf, dim=dims, correction=0)
    return mean, var


def evalnorm_moments(
    mu_i: torch.Tensor,
    var_i: torch.Tensor,
    mu_e: torch.Tensor,
    var_e: torch.Tensor,
    alpha: torch.Tensor,
    beta: torch.Tensor,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """EvalNorm's mean and variance (eqs 5-6); with alpha = beta = 1/B, mu_e / var_e the
    mean and biased variance of the other B - 1 samples, they are exactly the batch's (eqs 3-4).

    Args:
        mu_i, var_i: the sample's own mean and biased variance, (N, C).
        mu_e, var_e: the other statistics, (C,) or (N, C).
        alpha, beta: scalars (0-dim tensors or floats) or broadcastable tensors.
    Returns:
        (mu_hat, var_hat), each (N, C).
    """
    d = mu_i - mu_e
    mu_hat = mu_e + alpha * d
    var_hat = beta * var_i + (1 - beta) * var_e + beta * (1 - beta) * d * d
    return mu_hat, var_hat


def normalize_per_sample(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, eps: float,
               weight: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``(x - mean) / sqrt(var + eps) * weight + bias`` with per-sample (N, C) statistics."""
    scale = (var + eps).rsqrt()
    if weight is not None:
        scale = scale * weight
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias
    shape = scale.shape + (1,) * (x.dim() - 2)
    return (x * scale.view(shape) + shift.view(shape)).to(x.dtype)


def evalnorm(
    x: torch.Tensor,
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    alpha,
    beta,
    eps: float = 1e-5,
) -> torch.Tensor:
    """EvalNorm evaluation of a BN layer: each sample normalised by eqs 5-6, then the affine.

    ``running_var`` must be the biased running variance (see the module docstring).
    alpha = beta = 0 gives ``F.batch_norm(x, running_mean, running_var, weight, bias,
    training=False)``; alpha = beta = 1 gives ``F.instance_norm(x, weight=weight, bias=bias)``.

    Shapes: x ``(N, C, *spatial)``; running statistics, weight and bias (C,) -> like x.
    """
    mu_i, var_i = sample_moments(x)
    mu_hat, var_hat = evalnorm_moments(mu_i, var_i, running_mean.float(), running_var.float(), alpha, beta)
    return normalize_per_sample(x, mu_hat, var_hat, eps, weight, bias)


class _EvalNormAuxLoss(torch.autograd.Function):
    """Eq. 9 with its gradients with respect to alpha and beta computed in closed form.

    Everything but alpha and beta is a constant (the paper's stop-gradients), so the
    loss L = mean |t - e| with t = (x - mu_B) / sigma_B and e = (x - mu^) / sigma^ has
    dL/dalpha = mean(sign(e - t) * -d / sigma^) and
    dL/dbeta = mean(sign(e - t) * -(x - mu^) / (2 sigma^3) * (var_i - var_E + (1 - 2 beta) d^2)),
    d = mu_i - mu_E. Both reduce to per-(sample, channel) sums in the forward pass, so
    nothing of the activation's size is kept for the backward and no autograd graph is
    built over it: at 2 images per batch that halves the cost of fitting online.
    """

    @staticmethod
    def forward(ctx, x, mu_e, var_e, alpha, beta, eps):
        xf = x if x.dtype in (torch.float32, torch.float64) else x.float()
        mu_i, var_i = sample_moments(xf)  # (N, C)
        # Batch statistics from the per-sample ones (every sample has the same number of values),
        # the variance as within + between samples: never negative. The one-pass form
        # E[var_i + mu_i^2] - mu_b^2 cancels to a negative number (NaN loss) when the samples'
        # means are large and nearly equal, e.g. 1x1 maps at 2 images per batch.
        mu_b = mu_i.mean(0)
        var_b = var_i.mean(0) + (mu_i - mu_b).square().mean(0)
        a, b = alpha.detach().to(mu_i.dtype), beta.detach().to(mu_i.dtype)
        d = mu_i - mu_e
        mu_hat = mu_e + a * d
        var_hat = b * var_i + (1 - b) * var_e + b * (1 - b) * d * d
        inv = (var_hat + eps).rsqrt()
        inv_b = (var_b + eps).rsqrt()
        shape = mu_i.shape + (1,) * (x.dim() - 2)
        # e - t = x (inv - inv_b) + (mu_b inv_b - mu^ inv): one fused pass over x.
        diff = torch.addcmul((mu_b * inv_b - mu_hat * inv).view(shape), xf, (inv - inv_b).view(shape))
        count = diff.numel()
        loss = diff.abs().sum() / count
        sign = diff.sign()
        dims = tuple(range(2, x.dim()))
        s1 = sign.sum(dim=dims) if dims else sign
        sx = (sign * xf).sum(dim=dims) if dims else sign * xf
        s2 = sx - mu_hat * s1  # sum of sign * (x - mu^)
        grad_alpha = -(s1 * d * inv).sum() / count
        dvar = var_i - var_e + (1 - 2 * b) * d * d
        grad_beta = -(0.5 * s2 * inv * inv * inv * dvar).sum() / count
        ctx.save_for_backward(grad_alpha.to(alpha.dtype), grad_beta.to(beta.dtype))
        return loss

    @staticmethod
    def backward(ctx, grad):
        grad_alpha, grad_beta = ctx.saved_tensors
        return None, None, None, grad * grad_alpha, grad * grad_beta, None


def evalnorm_aux_loss(x: torch.Tensor, mu_e: torch.Tensor, var_e: torch.Tensor, alpha: torch.Tensor,
                       beta: torch.Tensor, eps: float) -> torch.Tensor:
    """Eq. 9: mean |<(x - mu_B) / sigma_B> - (<x> - mu^) / sigma^|, gradients only to alpha and beta.

    Shapes: x (N, C, *spatial); mu_e, var_e (C,) (var_e biased); alpha, beta 0-dim -> 0-dim loss.
    """
    return _EvalNormAuxLoss.apply(x.detach(), mu_e, var_e, alpha, beta, eps)


# ---------------------------------------------------------------------------- #
# The layer
# ---------------------------------------------------------------------------- #
class BatchNorm2d(AuxiliaryModule, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` (the "BN" norm) that records its training batch and can evaluate with EvalNorm.

    Training output, running statistics and gradients are exactly ``nn.BatchNorm2d``'s.
    Extra state (buffers, or parameters for alpha/beta while they are fitted):

    - ``train_batch_size``, ``train_numel``: mean number of samples B, and of values
      n = B*H*W per channel, normalised together in the training batches so far;
    - ``evalnorm_alpha``, ``evalnorm_beta``: EvalNorm's scalars (0: plain BN).

    Attributes set by :func:`detgn.layers.evalnorm_setup.configure_evalnorm` (not state):
    ``evalnorm_eval`` (use EvalNorm in eval mode), ``evalnorm_rule`` (alpha = beta = 1/B^2
    instead of the stored values), ``evalnorm_loss_weight``, ``evalnorm_lr_factor`` (of the
    ``"evalnorm"`` parameter group it declares while alpha and beta are fitted). ``freeze_stats`` (set by calibration and PreciseBN)
    makes training-mode forwards normalise with the batch statistics without updating
    the running statistics or the records.

    Shapes: (N, C, H, W) -> (N, C, H, W).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1, **kwargs):
        super().__init__(num_features, eps=eps, momentum=momentum, **kwargs)
        self.register_buffer("train_batch_size", torch.zeros(()))
        self.register_buffer("train_numel", torch.zeros(()))
        self.register_buffer("evalnorm_alpha", torch.zeros(()))
        self.register_buffer("evalnorm_beta", torch.zeros(()))
        self.evalnorm_eval = False
        self.evalnorm_rule = False
        self.evalnorm_loss_weight = 1.0
        self.evalnorm_lr_factor = 1.0
        self.freeze_stats = False

    # -- what it trains beside the model (detgn.layers.auxiliary) ---------------
    def aux_losses(self) -> Tuple[AuxLoss, ...]:
        # Reaches only alpha and beta: logged, but not part of total_loss.
        return (AuxLoss(EVALNORM_LOSS, log=True, in_total=False),)

    def aux_param_groups(self) -> Tuple[ParamGroup, ...]:
        # Never decayed and clipped on their own: adding them changes nothing for the model.
        return (ParamGroup("evalnorm", ("evalnorm_alpha", "evalnorm_beta"), lr_factor=self.evalnorm_lr_factor,
                           weight_decay=0.0, clip_separately=True),)

    # -- state ----------------------------------------------------------------
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # Files without the records (older checkpoints, torchvision or Caffe2 BN weights):
        # keep this layer's values (0: B unknown, plain BN) instead of reporting them missing.
        for name in _EXTRA_STATE:
            state_dict.setdefault(prefix + name, getattr(self, name).detach().clone())
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    @property
    def evalnorm_trainable(self) -> bool:
        return isinstance(self.evalnorm_alpha, nn.Parameter)

    def set_evalnorm_trainable(self, trainable: bool) -> None:
        """Make alpha and beta parameters (to be fitted) or buffers; the state-dict keys stay the same."""
        if trainable == self.evalnorm_trainable:
            return
        for name in ("evalnorm_alpha", "evalnorm_beta"):
            value = getattr(self, name).detach().clone()
            delattr(self, name)
            if trainable:
                self.register_parameter(name, nn.Parameter(value))
            else:
                self.register_buffer(name, value)

    def biased_running_var(self) -> torch.Tensor:
        """``running_var * (n - 1) / n`` with n the recorded values per channel (unchanged if unknown)."""
        n = self.train_numel
        # torch.where rather than an `if`: no host-device sync on the GPU.
        factor = torch.where(n > 1, (n - 1) / n.clamp(min=1), torch.ones_like(n))
        return self.running_var * factor

    def evalnorm_weights(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(alpha, beta) used at evaluation: the stored values clipped to [0, 1], or 1/B^2 by the rule."""
        if self.evalnorm_rule:
            b = float(self.train_batch_size)
            if b <= 0:
                raise RuntimeError(
                    "EvalNorm's 1/B^2 rule needs the training batch size this BN layer recorded, but the weights "
                    "carry none (trained elsewhere or before detgn recorded it); use MODEL.EVALNORM.MODE offline "
                    "with tools/calibrate_norm.py --method evalnorm_offline instead"
                )
            v = torch.full((), 1.0 / (b * b), device=self.running_mean.device)
            return v, v
        return self.evalnorm_alpha.detach().clamp(0, 1), self.evalnorm_beta.detach().clamp(0, 1)

    # -- forward --------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            if not self.evalnorm_eval:
                return super().forward(x)
            alpha, beta = self.evalnorm_weights()
            return evalnorm(x, self.running_mean, self.biased_running_var(), self.weight, self.bias, alpha, beta,
                            self.eps)
        fit = self.evalnorm_trainable and torch.is_grad_enabled()
        if fit:
            mu_e, var_e = self.running_mean.detach().clone(), self.biased_running_var().detach().clone()
        if self.freeze_stats:
            out = F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
        else:
            self._record_batch(x)
            out = super().forward(x)
        if fit:
            with torch.no_grad():  # projected gradient descent: alpha, beta stay in [0, 1]
                self.evalnorm_alpha.clamp_(0, 1)
                self.evalnorm_beta.clamp_(0, 1)
            loss = evalnorm_aux_loss(x, mu_e.float(), var_e.float(), self.evalnorm_alpha, self.evalnorm_beta,
                                     self.eps)
            self.add_aux_loss(EVALNORM_LOSS, loss * self.evalnorm_loss_weight)
        return out

    @torch.no_grad()
    def _record_batch(self, x: torch.Tensor) -> None:
        # Running means over all training batches: exact for a constant batch (the usual case).
        k = self.num_batches_tracked.to(self.train_batch_size.dtype) + 1.0  # a tensor: no GPU sync
        b, n = float(x.shape[0]), float(x.numel() // max(x.shape[1], 1))
        self.train_batch_size.add_((b - self.train_batch_size) / k)
        self.train_numel.add_((n - self.train_numel) / k)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        if self.evalnorm_eval:
            s += ", evalnorm=" + ("rule 1/B^2" if self.evalnorm_rule else "on")
        return s
