"""BatchNorm-only tuning, BitFit for convolutional networks.

BitFit (Ben Zaken, Ravfogel & Goldberg, ACL 2022, arXiv 2106.10199) fine-tunes only the bias
terms of a pre-trained Transformer. The convolutions of a BatchNorm ResNet have no biases: what
plays their part is BatchNorm's affine map ``y = γ·x̂ + β``. Training BatchNorm's scale and shift
(and nothing else of the backbone) is what Frankle, Schwab & Morcos studied ("Training BatchNorm
and only BatchNorm", ICLR 2021, arXiv 2003.00152); ``shift_only=True`` trains the shift ``β``
alone, BitFit's biases-only in the strict sense. The new head trains too.

Ours: the running statistics of every BatchNorm follow the target data in training, as in
fine-tuning (they are buffers, not trained parameters); the weights of the convolutions never
change. At initialisation the network computes exactly what the source network computes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from tlgates.backbones import Backbone
from tlgates.methods.base import Classifier, Deviation, MethodConfig, hyperparameter, register


@dataclass(frozen=True)
class BNFitConfig(MethodConfig):
    shift_only: bool = hyperparameter(False, "train only BatchNorm's shift β (false: its scale "
                                             "γ too)")


class BNFit(Classifier):
    """A copy of the source backbone of which only BatchNorm's ``γ`` and ``β`` (or ``β``) train,
    and a new head. Hyperparameters: :class:`BNFitConfig`."""

    def __init__(self, source: Backbone, num_classes: int, **hyperparameters: Any):
        super().__init__(source, num_classes)
        hp = BNFitConfig(**hyperparameters)
        self.backbone.requires_grad_(False)
        for module in self.backbone.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.bias.requires_grad_(True)
                module.weight.requires_grad_(not hp.shift_only)


@register("bnfit", "BitFit / BatchNorm-only tuning: train BatchNorm's scale and shift and the "
          "head", BNFitConfig, paper="arXiv 2106.10199, 2003.00152", deviations=[
              Deviation("what is tuned", "BatchNorm's γ and β (the backbone's convolutions "
                        "have no biases)", "BitFit: every bias of a Transformer", "a BatchNorm "
                        "ResNet's biases are BatchNorm's shifts", "paper"),
          ])
def build_bnfit(source: Backbone, num_classes: int, **hyperparameters: Any) -> BNFit:
    return BNFit(source, num_classes, **hyperparameters)
