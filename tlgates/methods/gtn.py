r"""GTN, the Gated Transfer Network (Zhu, Xue & Newsam, ACCV 2018, arXiv 1810.12521).

Question: are all pre-trained features equally useful for the new task? GTN lets the network
decide, per example and per channel, how much of each pooled pre-trained feature to pass on.
On the pooled feature ``f`` (B×D) of a fine-tuned backbone (official code: jiaxue-ai/GTN):

.. math::

    g = \sigma\big(W_2\,\mathrm{Dropout}(\mathrm{ReLU}(W_1 f))\big) \in (0, 1)^D,
    \qquad \mathrm{logits} = W_c\,\mathrm{Dropout}(g \odot f)

(a squeeze-and-excitation style self-gate, ``W_1``: D → D/r, ``W_2``: D/r → D). An auxiliary
linear classifier ``W_a`` on the pooled output ``h`` of an intermediate stage, read from the same
forward pass, adds a deep-supervision term; it is not used at inference:

.. math::

    L = \mathrm{CE}(\mathrm{logits}, y) + \lambda_{aux}\,\mathrm{CE}(W_a h, y),
    \qquad \lambda_{aux} = 0.2 \text{ in the paper.}

Schedule: the new layers (gate and heads) alone for the first ``warmup_epochs`` epochs, then
everything. The official code warms up for 21 epochs by setting the backbone's learning rate to
0 while it stays in train mode, so its BatchNorm statistics follow the target data
(``warmup_bn="train"``); ours freezes the backbone in eval mode (``warmup_bn="eval"``: weights
and statistics stay the source's). Our defaults were chosen on the validation split of the
5-shot digits (30-epoch one-cycle schedule, 3–5 seeds): no warm-up (0, 1, 2 and 5 epochs
tried) and dropout 0.2 in the gate and before the classifier (0, 0.2, 0.3 and 0.5 tried; with
0.5 the ReLUs of the tiny ResNet's 8-unit bottleneck sometimes all died, leaving a constant
gate). The official code uses dropout 0.7 in the gate and 0.5 before the classifier, and new
layers without biases (``bias=False``); the ``"paper"`` preset selects all of these. The
ablation of the paper is reachable through the hyperparameters ``gate`` and ``aux_weight`` (see
:data:`ABLATION`); every variant shares the dropout and the warm-up.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tlgates.backbones import Backbone
from tlgates.methods.base import Deviation, MethodConfig, TransferModel, hyperparameter, \
    register, varying_share

WARMUP_BN = ("eval", "train")

#: The paper's ablation as ``gtn`` hyperparameters: label → overrides.
ABLATION: dict[str, dict[str, Any]] = {
    "fine-tune": {"gate": False, "aux_weight": 0.0},
    "+ aux": {"gate": False},
    "+ gate": {"aux_weight": 0.0},
    "GTN": {},
}


class FeatureGate(nn.Module):
    """``g = σ(W₂·Dropout(ReLU(W₁·f)))``: a gate in (0, 1) for each of the D features.

    Args:
        dim: the feature size D.
        reduction: the bottleneck has ``max(1, D // reduction)`` units (16 in the paper).
        dropout: the dropout probability inside the bottleneck.
        bias: give ``W₁`` and ``W₂`` biases (the official code has none).

    Shape: ``(B, D) → (B, D)``.
    """

    def __init__(self, dim: int, reduction: int = 16, dropout: float = 0.2, bias: bool = True):
        super().__init__()
        hidden = max(1, dim // reduction)
        self.squeeze = nn.Linear(dim, hidden, bias=bias)
        self.dropout = nn.Dropout(dropout)
        self.excite = nn.Linear(hidden, dim, bias=bias)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.excite(self.dropout(F.relu(self.squeeze(f)))))


_DROPOUT_WHY = ("0, 0.2, 0.3 and 0.5 tried on the validation split; at 0.5 the 8-unit "
                "bottleneck of the tiny ResNet's gate sometimes died (a constant gate)")


@dataclass(frozen=True)
class GTNConfig(MethodConfig):
    """GTN's hyperparameters. ``gate=False`` fixes ``g = 1``; ``aux_weight=0`` builds no
    auxiliary head; ``aux_stage`` indexes ``stage_ends`` (``-2``: the second-to-last stage);
    ``warmup_bn="train"`` lets BatchNorm statistics follow the data while the weights are
    frozen, as the official code's learning rate 0 in train mode does."""

    gate: bool = hyperparameter(True, "gate the pooled features (false: g = 1)")
    aux_weight: float = hyperparameter(0.2, "λ_aux of the auxiliary classifier (0: none)",
                                       low=0.0, high=10.0)
    aux_stage: int = hyperparameter(-2, "stage the auxiliary head reads (index into "
                                        "stage_ends; ResNets have 4)", low=-4, high=3)
    reduction: int = hyperparameter(16, "gate bottleneck: D // reduction units", low=1,
                                    high=1024)
    dropout: float = hyperparameter(0.2, "dropout before the classifier", low=0.0, high=0.95,
                                    paper=0.5, origin="official code", why=_DROPOUT_WHY)
    gate_dropout: float = hyperparameter(0.2, "dropout inside the gate's bottleneck", low=0.0,
                                         high=0.95, paper=0.7, origin="official code",
                                         why=_DROPOUT_WHY)
    bias: bool = hyperparameter(True, "biases in the new layers (gate, classifier, aux head)",
                                paper=False, origin="official code",
                                why="PyTorch's default for nn.Linear (not tuned)")
    warmup_epochs: int = hyperparameter(
        0, "first epochs with the backbone's weights frozen (heads only)", low=0, high=1000,
        paper=21, origin="official code",
        why="0, 1, 2 and 5 epochs tried on the validation split: none was best; the official "
            "21 are of 100 epochs, of our 30 they leave 9 to fine-tune")
    warmup_bn: str = hyperparameter(
        "eval", "backbone BatchNorm in the warm-up: eval (source statistics kept) or train "
                "(statistics follow the data)", choices=WARMUP_BN, paper="train",
        origin="official code", why="a frozen backbone whose statistics drift is not frozen; "
                                    "the official code's lr 0 in train mode lets them drift")


class GatedTransferNetwork(TransferModel):
    """A fine-tuned copy of the source backbone, a feature gate, a classifier and an aux head.

    Args:
        source: the pre-trained backbone (copied, never modified).
        num_classes: classes of the target task.
        **hyperparameters: :class:`GTNConfig`. The warm-up is set by :meth:`on_epoch_start`.

    ``last_decisions`` holds ``"feature"`` (the pooled ``f``, B×D) and, with the gate,
    ``"gate"`` (``g``, B×D).
    """

    def __init__(self, source: Backbone, num_classes: int, **hyperparameters: Any):
        super().__init__()
        hp = GTNConfig(**hyperparameters)
        stages = len(source.stage_ends)
        if not -stages <= hp.aux_stage < stages:
            raise ValueError(f"aux_stage must index one of the backbone's {stages} stages "
                             f"(from {-stages} to {stages - 1}), got {hp.aux_stage}")
        self.backbone = copy.deepcopy(source)
        self.backbone.requires_grad_(True)
        dim = source.feature_dim
        self.gate = FeatureGate(dim, hp.reduction, hp.gate_dropout, hp.bias) if hp.gate else None
        self.dropout = nn.Dropout(hp.dropout)
        self.head = nn.Linear(dim, num_classes, bias=hp.bias)
        self.aux_weight = hp.aux_weight
        self.aux_block = source.stage_ends[hp.aux_stage]
        self.aux_head = (nn.Linear(source.block_channels[self.aux_block], num_classes,
                                   bias=hp.bias) if hp.aux_weight > 0 else None)
        self.warmup_epochs, self.warmup_bn = hp.warmup_epochs, hp.warmup_bn
        self.backbone_frozen = False

    def classify(self, f: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
        """``W_c·Dropout(g ⊙ f)``; with ``g=None`` the features pass ungated (``g = 1``)."""
        return self.head(self.dropout(f if g is None else g * f))

    def forward_with_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Class logits and auxiliary logits (``None`` without aux head), from ONE pass.

        The auxiliary head reads the intermediate map that the backbone computed anyway on its
        way to ``f``; nothing is computed twice.
        """
        maps = self.backbone.feature_maps(x)
        f = Backbone.pool(maps[-1])
        g = self.gate(f) if self.gate is not None else None
        self.last_decisions = {"feature": f.detach()}
        if g is not None:
            self.last_decisions["gate"] = g.detach()
        aux = None
        if self.aux_head is not None and self.training:
            aux = self.aux_head(Backbone.pool(maps[self.aux_block]))
        return self.classify(f, g), aux

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_aux(x)[0]

    def loss_terms(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """``ce`` and, with an auxiliary head in training, ``aux = λ_aux·CE(aux logits)``."""
        logits, aux = self.forward_with_aux(x)
        terms = {"ce": F.cross_entropy(logits, y)}
        if aux is not None:
            terms["aux"] = self.aux_weight * F.cross_entropy(aux, y)
        return terms

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """The backbone and the new layers, all at ``lr`` (frozen ones get no gradient)."""
        new = [p for name, p in self.named_parameters() if not name.startswith("backbone.")]
        return [{"params": list(self.backbone.parameters()), "lr": lr},
                {"params": new, "lr": lr}]

    @property
    def ddp_find_unused_parameters(self) -> bool:
        """During the warm-up the backbone's weights get no gradient."""
        return self.warmup_epochs > 0

    def freeze_backbone(self, frozen: bool) -> None:
        """Freeze (or release) the backbone's weights (no gradients); with
        ``warmup_bn="eval"`` its BatchNorm also stays in eval mode while frozen."""
        self.backbone_frozen = frozen
        self.backbone.requires_grad_(not frozen)
        self.train(self.training)

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        """Warm-up: the new layers alone for the first ``warmup_epochs``, then everything."""
        self.freeze_backbone(epoch < self.warmup_epochs)

    def train(self, mode: bool = True) -> GatedTransferNetwork:
        super().train(mode)
        if self.backbone_frozen and self.warmup_bn == "eval":
            self.backbone.eval()  # running statistics stay the pre-trained ones
        return self

    def epoch_record(self, decisions: dict[str, torch.Tensor],
                     y: torch.Tensor) -> dict[str, Any]:
        """Mean gate, fraction of gates below 0.5, and the mean gate of every channel."""
        if "gate" not in decisions:
            return {}
        g = decisions["gate"]
        return {"gate_mean": g.mean().item(), "gate_below_half": (g < 0.5).float().mean().item(),
                "gate_channel_mean": g.mean(dim=0).tolist()}

    def decision_summary(self, decisions: dict[str, torch.Tensor]) -> dict[str, Any]:
        """The gates gate features of the fine-tuned network: no pre-trained share."""
        if "gate" not in decisions:
            return {}
        g = decisions["gate"].float()
        return {"decides": "a gate g ∈ (0, 1) per pooled feature",
                "choices per image": g.shape[1], "pre-trained share": float("nan"),
                "reading": f"{(g < 0.5).float().mean():.0%} of the features switched off "
                           f"(g < 0.5); mean gate {g.mean():.2f}",
                "varies between images": varying_share(g)}


@register("gtn", "Gated Transfer Network: a self-gate on the pooled features + an aux head",
          GTNConfig, paper="arXiv 1810.12521", deviations=[
              Deviation("training schedule", "the course's loop: SGD, one-cycle to lr 0.05, "
                        "30 epochs, no weight decay", "SGD lr 0.01, ÷10 every 40 epochs, 100 "
                        "epochs, weight decay 1e-4, batch 64", "one loop for every method; the "
                        "official schedule is for full-size data sets", "official code"),
              Deviation("learning rate of the new layers", "the backbone's", "10× the "
                        "backbone's", "not tuned; every method's new layers share the loop's "
                        "lr", "official code"),
          ])
def build_gtn(source: Backbone, num_classes: int, **params: Any) -> GatedTransferNetwork:
    return GatedTransferNetwork(source, num_classes, **params)
