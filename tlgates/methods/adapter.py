r"""Residual adapters in parallel (Rebuffi, Bilen & Vedaldi, NeurIPS 2017, arXiv 1705.08045;
the parallel form: CVPR 2018, arXiv 1803.10082).

Beside each frozen 3×3 convolution a small 1×1 convolution ``A`` reads the same input, with the
same stride, and its output is added:

.. math:: y = W * x + A * x .

SpotTune compared itself with these adapters. ``A`` starts at zero, so the network starts
exactly as the source network; ``C_in·C_out`` numbers per convolution train, a ninth of the
3×3 weight. With padding 1, the 1×1 convolution reads exactly the centre tap of the 3×3
window, so the adapter can be **merged**: ``W + A`` placed at the kernel's centre is one 3×3
convolution with the same outputs (``merge_for_inference``, and
:meth:`ResidualAdapters.merged_backbone`).

Ours: the adapters' BatchNorm (the papers give each task its own) is frozen in scale and shift,
with running statistics that follow the target data in training, as in fine-tuning; which
convolutions get one (``layers``).
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


class ParallelAdapter(nn.Module):
    """``conv(x; W) + A * x`` with ``W`` frozen and ``A`` a zero-initialised 1×1 convolution
    with the same stride; ``merged=True``: at evaluation, one 3×3 convolution with ``A`` added
    at the kernel's centre.

    Shape: that of ``conv``.
    """

    def __init__(self, conv: nn.Conv2d, merged: bool = False):
        super().__init__()
        if conv.kernel_size != (3, 3) or conv.padding != (1, 1) or conv.dilation != (1, 1) \
                or conv.groups != 1:
            raise ValueError("a parallel adapter goes beside a 3×3 convolution with padding 1")
        self.conv = conv.requires_grad_(False)
        self.adapter = nn.Conv2d(conv.in_channels, conv.out_channels, 1, conv.stride,
                                 bias=False)
        nn.init.zeros_(self.adapter.weight)
        self.merged = merged

    def delta_weight(self) -> torch.Tensor:
        """The adapter as a 3×3 kernel: ``A`` at the centre, zeros around it."""
        return F.pad(self.adapter.weight, [1, 1, 1, 1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged and not self.training:
            c = self.conv
            return F.conv2d(x, c.weight + self.delta_weight(), c.bias, c.stride, c.padding)
        return self.conv(x) + self.adapter(x)


@dataclass(frozen=True)
class AdapterConfig(MethodConfig):
    layers: str = hyperparameter("all", "which 3×3 convolutions get an adapter: all, the early "
                                        "or the late half of the stages", choices=LAYER_GROUPS)
    merge_for_inference: bool = hyperparameter(False, "at evaluation, run the merged 3×3 "
                                                      "convolution")


class ResidualAdapters(Classifier):
    """A copy of the source backbone with a :class:`ParallelAdapter` beside each chosen 3×3
    convolution (only the adapters train), and a new head. Hyperparameters:
    :class:`AdapterConfig`."""

    def __init__(self, source: Backbone, num_classes: int, **hyperparameters: Any):
        super().__init__(source, num_classes)
        hp = AdapterConfig(**hyperparameters)
        self.backbone.requires_grad_(False)
        self.adapted = [name for name, conv in convolutions(self.backbone, hp.layers)
                        if conv.kernel_size == (3, 3)]
        for name in self.adapted:
            replace_module(self.backbone, name, ParallelAdapter(
                self.backbone.get_submodule(name), hp.merge_for_inference))

    def merged_backbone(self) -> Backbone:
        """A plain backbone with every adapter merged into its 3×3 convolution."""
        return merged_copy(self.backbone, self.adapted)


@register("adapter", "residual adapters: a zero-initialised 1×1 convolution beside every frozen "
          "3×3 one", AdapterConfig, paper="arXiv 1705.08045, 1803.10082", deviations=[
              Deviation("BatchNorm", "the source's, scale and shift frozen", "one BatchNorm per "
                        "task, trained", "only the adapters and the head train; the statistics "
                        "still follow the data", "paper"),
          ])
def build_adapter(source: Backbone, num_classes: int, **hyperparameters: Any) -> ResidualAdapters:
    return ResidualAdapters(source, num_classes, **hyperparameters)
