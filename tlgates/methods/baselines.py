"""Baselines every adaptive method is compared with.

- ``scratch``: the same architecture, randomly initialised (no transfer).
- ``linear``: a linear probe, the pre-trained backbone frozen.
- ``finetune``: everything trained from the pre-trained weights, optionally the backbone at a
  fraction of the head's learning rate.
- ``l2``: fine-tuning with weight decay, ``λ/2·‖w‖²`` (pulls weights towards zero).
- ``l2sp``: L2-SP (Li, Grandvalet & Davoine, arXiv 1802.01483), ``α/2·‖w − w⁰‖²`` on the
  pre-trained weights plus ``β/2·‖w_head‖²`` on the new head, with no weight decay on top.
  Like TLlib and DELTA's code we include BatchNorm's scale and shift in ``w`` by default; the
  authors regularise the weights only (``bn_in_penalty=False``, the ``"paper"`` preset).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tlgates.backbones import Backbone
from tlgates.methods.base import Classifier, MethodConfig, hyperparameter, register


@register("scratch", "train the same network from a random initialisation (no transfer)")
def build_scratch(source: Backbone, num_classes: int) -> Classifier:
    model = Classifier(source, num_classes)
    for module in model.backbone.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()  # BatchNorm also resets its running statistics
    return model


@register("linear", "linear probe: train a new head on the frozen pre-trained features")
def build_linear(source: Backbone, num_classes: int) -> Classifier:
    return Classifier(source, num_classes, freeze_backbone=True)


@dataclass(frozen=True)
class FineTuneConfig(MethodConfig):
    backbone_lr_scale: float = hyperparameter(
        1.0, "backbone learning rate as a fraction of the head's", low=0.0, high=1.0)


@dataclass(frozen=True)
class L2Config(FineTuneConfig):
    weight_decay: float = hyperparameter(0.01, "weight decay λ", low=0.0, high=1.0)


@dataclass(frozen=True)
class L2SPConfig(FineTuneConfig):
    alpha: float = hyperparameter(0.1, "strength α of α/2·‖w − w⁰‖²", low=0.0, high=100.0)
    beta: float = hyperparameter(0.01, "strength β of β/2·‖w_head‖²", low=0.0, high=100.0)
    bn_in_penalty: bool = hyperparameter(
        True, "BatchNorm scale and shift count in w (false: weights only)", paper=False,
        origin="official code", why="TLlib and DELTA's code regularise them too; the "
                                    "authors' code regularises the weights only")


class FineTune(Classifier):
    """Fine-tuning with the backbone at ``backbone_lr_scale`` × the head's learning rate and
    optimizer weight decay ``weight_decay`` (``l2``)."""

    def __init__(self, source: Backbone, num_classes: int, backbone_lr_scale: float = 1.0,
                 weight_decay: float = 0.0):
        super().__init__(source, num_classes)
        self.backbone_lr_scale = backbone_lr_scale
        self.weight_decay = weight_decay

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        return [
            {"params": list(self.backbone.parameters()), "lr": lr * self.backbone_lr_scale,
             "weight_decay": self.weight_decay},
            {"params": list(self.head.parameters()), "lr": lr,
             "weight_decay": self.weight_decay},
        ]


@register("finetune", "fine-tune every layer from the pre-trained weights", FineTuneConfig)
def build_finetune(source: Backbone, num_classes: int, **hyperparameters: Any) -> FineTune:
    return FineTune(source, num_classes, **hyperparameters)


@register("l2", "fine-tuning with weight decay λ/2·‖w‖² (towards zero)", L2Config)
def build_l2(source: Backbone, num_classes: int, **hyperparameters: Any) -> FineTune:
    return FineTune(source, num_classes, **hyperparameters)


class L2SP(FineTune):
    """L2-SP: ``CE + α/2·‖w − w⁰‖² + β/2·‖w_head‖²`` (arXiv 1802.01483, eq. 4).

    ``w⁰`` are the pre-trained backbone parameters (kept as non-persistent buffers), ``w`` the
    fine-tuned ones; the new head's weight matrix is decayed towards zero. Hyperparameters:
    :class:`L2SPConfig` (``bn_in_penalty``: whether BatchNorm's scale and shift count in ``w``).
    """

    def __init__(self, source: Backbone, num_classes: int, **hyperparameters: Any):
        config = L2SPConfig(**hyperparameters)
        super().__init__(source, num_classes, config.backbone_lr_scale)
        self.alpha, self.beta = config.alpha, config.beta
        norm_params = {id(p) for m in self.backbone.modules()
                       if isinstance(m, nn.modules.batchnorm._BatchNorm)
                       for p in m.parameters(recurse=False)}
        self.anchored = [name for name, p in self.backbone.named_parameters()
                         if config.bn_in_penalty or id(p) not in norm_params]
        params = dict(self.backbone.named_parameters())
        for i, name in enumerate(self.anchored):
            self.register_buffer(f"_w0_{i}", params[name].detach().clone(), persistent=False)

    def starting_point_penalty(self) -> torch.Tensor:
        """``½·‖w − w⁰‖²`` summed over the anchored backbone parameters (one fused op per
        list)."""
        named = dict(self.backbone.named_parameters())
        params = [named[name] for name in self.anchored]
        anchors = [getattr(self, f"_w0_{i}") for i in range(len(params))]
        diffs = torch._foreach_sub(params, anchors)
        return 0.5 * torch.stack(torch._foreach_norm(diffs)).pow(2).sum()

    def loss_terms(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        terms = super().loss_terms(x, y)
        terms["l2sp"] = self.alpha * self.starting_point_penalty()
        terms["head_l2"] = 0.5 * self.beta * self.head.weight.pow(2).sum()
        return terms


@register("l2sp", "fine-tuning pulled towards the pre-trained weights (L2-SP)", L2SPConfig,
          paper="arXiv 1802.01483")
def build_l2sp(source: Backbone, num_classes: int, **hyperparameters: Any) -> L2SP:
    return L2SP(source, num_classes, **hyperparameters)
