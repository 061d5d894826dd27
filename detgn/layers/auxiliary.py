"""Auxiliary losses and parameter groups that a layer (or a model) declares for itself.

Some layers train something of their own beside the model's weights (EvalNorm's alpha and
beta in :class:`detgn.layers.BatchNorm2d`): a loss term that reaches only those parameters,
and an optimizer group for them with its own LR, decay and clipping. Such a layer derives
from :class:`AuxiliaryModule` and declares both; the rest of the toolkit reads the
declarations without knowing the feature:

- the meta-architectures add :func:`pop_aux_losses` of themselves to their loss dict;
- :func:`detgn.solver.get_param_groups` puts the declared parameters in their groups
  (:func:`declared_param_groups`), after the weights, biases and norm groups;
- the :class:`~detgn.engine.trainer.Trainer` logs each term as its :class:`AuxLoss` says
  (:func:`declared_aux_losses`) and clips the parameters of a group flagged ``clip_separately``
  on their own (:func:`declared_param_groups`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Tuple

import torch
from torch import nn

__all__ = ["AuxLoss", "ParamGroup", "AuxiliaryModule", "pop_aux_losses", "declared_aux_losses",
           "declared_param_groups"]


@dataclass(frozen=True)
class AuxLoss:
    """A loss term a layer adds to the model's loss dict (it is back-propagated like the others).

    Args:
        name: the loss dict key, e.g. ``"loss_evalnorm"``.
        log: logged with the other terms.
        in_total: counted in the logged ``total_loss`` (False for a term that trains no model
            weight, so that the curves of a run with and without it are the same).
    """

    name: str
    log: bool = True
    in_total: bool = False


@dataclass(frozen=True)
class ParamGroup:
    """An optimizer group of its own for some parameters of a layer.

    Args:
        name: the group's name (groups of the same name from several layers are one group).
        params: the layer's own parameter names (``named_parameters(recurse=False)``) in it.
        lr_factor: LR multiplier on the base LR.
        weight_decay: the group's weight decay.
        clip_separately: gradient clipping treats the group on its own, so its gradients do not
            change the model's clipping factor.
    """

    name: str
    params: Tuple[str, ...]
    lr_factor: float = 1.0
    weight_decay: float = 0.0
    clip_separately: bool = True


class AuxiliaryModule:
    """Mix-in (before ``nn.Module`` in the bases) of a layer with auxiliary losses or parameter groups.

    Override :meth:`aux_losses` and :meth:`aux_param_groups`; in ``forward`` call
    :meth:`add_aux_loss`. The values wait in the layer until :func:`pop_aux_losses` takes them.
    """

    def aux_losses(self) -> Tuple[AuxLoss, ...]:
        """The loss terms this layer may add."""
        return ()

    def aux_param_groups(self) -> Tuple[ParamGroup, ...]:
        """The optimizer groups of this layer's own parameters (trainable ones only are used)."""
        return ()

    def add_aux_loss(self, name: str, value: torch.Tensor) -> None:
        """Record one value of loss term ``name`` (summed with the others at the next pop)."""
        self.__dict__.setdefault("pending_aux_losses", {}).setdefault(name, []).append(value)

    def take_aux_losses(self) -> Dict[str, List[torch.Tensor]]:
        """The values recorded since the last call, by name; clears them."""
        return self.__dict__.pop("pending_aux_losses", {})


def _auxiliary_modules(model: nn.Module):
    for name, m in model.named_modules():
        if isinstance(m, AuxiliaryModule):
            yield name, m


def pop_aux_losses(model: nn.Module) -> Dict[str, torch.Tensor]:
    """Each auxiliary loss term the layers of ``model`` recorded since the last call, summed over
    layers (then cleared); empty when none was recorded (e.g. nothing fitted, or evaluation)."""
    values: Dict[str, List[torch.Tensor]] = {}
    for _, m in _auxiliary_modules(model):
        for name, v in m.take_aux_losses().items():
            values.setdefault(name, []).extend(v)
    return {name: torch.stack(v).sum() for name, v in values.items() if v}


def declared_aux_losses(model: nn.Module) -> Dict[str, AuxLoss]:
    """``{name: AuxLoss}`` of every term the layers of ``model`` declare."""
    return {loss.name: loss for _, m in _auxiliary_modules(model) for loss in m.aux_losses()}


def declared_param_groups(model: nn.Module) -> Dict[int, ParamGroup]:
    """``{id(parameter): its ParamGroup}`` for the parameters the layers of ``model`` put in
    groups of their own.

    Raises:
        ValueError: two layers declare groups of the same name with different settings.
    """
    by_name: Dict[str, ParamGroup] = {}
    out: Dict[int, ParamGroup] = {}
    for mod_name, m in _auxiliary_modules(model):
        own = dict(m.named_parameters(recurse=False))
        for group in m.aux_param_groups():
            settings = (group.lr_factor, group.weight_decay, group.clip_separately)
            first = by_name.setdefault(group.name, group)
            if (first.lr_factor, first.weight_decay, first.clip_separately) != settings:
                raise ValueError(f"Parameter group '{group.name}' is declared with different settings by "
                                 f"several layers ({first} and {group} in {mod_name})")
            for p_name in group.params:
                if p_name in own:
                    out[id(own[p_name])] = first
    return out
