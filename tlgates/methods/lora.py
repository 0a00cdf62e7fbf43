r"""LoRA on convolutions (Hu et al., ICLR 2022, arXiv 2106.09685).

LoRA keeps a pre-trained weight ``W`` frozen and learns a low-rank update beside it,

.. math:: W' = W + \Delta W, \qquad \Delta W = \tfrac{\alpha}{r}\,B\,A,

with ``A`` (r × d_in) randomly initialised and ``B`` (d_out × r) initialised to zero, so the
network starts exactly as the source network and only ``r·(d_in + d_out)`` numbers per layer
train. The paper adapted a Transformer's attention matrices. For a convolution with weight
``W`` (C_out × C_in × k × k) we read it as the matrix C_out × (C_in·k·k) and factor the update
as two convolutions: ``A``, r filters of size C_in × k × k with the convolution's stride and
padding, then ``B``, a 1×1 convolution from r to C_out channels. Their composition is one
convolution with the weight ``(α/r)·B·A`` reshaped, so the update can be **merged**:
``merge_for_inference=True`` runs, at evaluation, the single convolution ``W + ΔW`` (same
outputs, one convolution's cost), and :meth:`LoRA.merged_backbone` gives a plain backbone
with the merged weights — all that must be stored per task besides the head.

The default α = 1 (a scale α/r = ¼ at rank 4) was chosen on the validation split of the 5-shot
digits among 0.25, 1 and 4 (3 seeds; mean validation accuracy 75.7, 75.7 and 52.2 %: at α = 4
training was unstable on some seeds, the one-cycle peak learning rate acting on the product
B·A).

Ours: the factorisation of a convolution (the paper has only matrices), ``A``'s initialisation
(PyTorch's default for a convolution, Kaiming-uniform), which convolutions are adapted
(``layers``), BatchNorm frozen in its scale and shift with running statistics that follow the
target data in training, as in fine-tuning.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tlgates.backbones import Backbone
from tlgates.methods.base import (
    LAYER_GROUPS, Classifier, Deviation, MethodConfig, convolutions, hyperparameter, merged_copy,
    register, replace_module,
)


class LoRAConv2d(nn.Module):
    """``conv(x; W) + (α/r)·B(A(x))`` with ``W`` frozen; ``merged=True``: at evaluation,
    ``conv(x; W + ΔW)``, one convolution.

    Shape: that of ``conv``.
    """

    def __init__(self, conv: nn.Conv2d, rank: int, alpha: float, merged: bool = False):
        super().__init__()
        if conv.groups != 1:
            raise ValueError("LoRA needs convolutions with groups=1")
        self.conv = conv.requires_grad_(False)
        self.lora_a = nn.Conv2d(conv.in_channels, rank, conv.kernel_size, conv.stride,
                                conv.padding, conv.dilation, bias=False)
        self.lora_b = nn.Conv2d(rank, conv.out_channels, 1, bias=False)
        nn.init.zeros_(self.lora_b.weight)
        self.scale, self.merged = alpha / rank, merged

    def delta_weight(self) -> torch.Tensor:
        """``ΔW = (α/r)·B·A`` in the shape of the convolution's weight."""
        a = self.lora_a.weight.flatten(1)  # r × (C_in·k·k)
        return (self.scale * self.lora_b.weight.flatten(1) @ a).view_as(self.conv.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged and not self.training:
            c = self.conv
            return F.conv2d(x, c.weight + self.delta_weight(), c.bias, c.stride, c.padding,
                            c.dilation)
        return self.conv(x) + self.scale * self.lora_b(self.lora_a(x))


@dataclass(frozen=True)
class LoRAConfig(MethodConfig):
    rank: int = hyperparameter(4, "rank r of the update ΔW = (α/r)·B·A", low=1, high=64)
    alpha: float = hyperparameter(1.0, "α: the update is scaled by α/r", low=0.01, high=256.0)
    layers: str = hyperparameter("all", "which convolutions get an update: all, the early or "
                                        "the late half of the stages", choices=LAYER_GROUPS)
    merge_for_inference: bool = hyperparameter(False, "at evaluation, run the merged "
                                                      "convolution W + ΔW")


class LoRA(Classifier):
    """A copy of the source backbone whose chosen convolutions become :class:`LoRAConv2d`
    (only ``A`` and ``B`` train), and a new head. Hyperparameters: :class:`LoRAConfig`."""

    def __init__(self, source: Backbone, num_classes: int, **hyperparameters: Any):
        super().__init__(source, num_classes)
        hp = LoRAConfig(**hyperparameters)
        self.backbone.requires_grad_(False)
        self.adapted = [name for name, _ in convolutions(self.backbone, hp.layers)]
        for name in self.adapted:
            conv = self.backbone.get_submodule(name)
            replace_module(self.backbone, name,
                           LoRAConv2d(conv, hp.rank, hp.alpha, hp.merge_for_inference))

    def merged_backbone(self) -> Backbone:
        """A plain backbone with ``W + ΔW`` in every adapted convolution."""
        return merged_copy(self.backbone, self.adapted)


@register("lora", "LoRA: a low-rank update (α/r)·B·A beside every frozen convolution",
          LoRAConfig, paper="arXiv 2106.09685", deviations=[
              Deviation("where the update goes", "convolutions, factored as a k×k convolution "
                        "to r channels then a 1×1 one", "a Transformer's attention matrices",
                        "a ResNet's weights are convolutions", "reconstruction"),
          ])
def build_lora(source: Backbone, num_classes: int, **hyperparameters: Any) -> LoRA:
    return LoRA(source, num_classes, **hyperparameters)
