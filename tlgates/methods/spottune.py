"""SpotTune: adaptive fine-tuning per image (Guo et al., CVPR 2019, arXiv 1811.08737).

Question: *which residual blocks should this image be fine-tuned through?* Every block ``l`` of
the backbone exists twice: a frozen pre-trained copy ``F_l`` and a fine-tuned copy ``F̂_l``
(both start from the source weights). A small policy network reads the raw (downsampled) image
and outputs two logits per block; a decision ``I_l(x) ∈ {0, 1}`` picks one copy per example:

.. math::

    x_l = \\big(1 - I_l(x)\\big)\\,F_l(x_{l-1}) + I_l(x)\\,\\hat F_l(x_{l-1}),
    \\qquad I_l(x) = \\mathrm{onehot}\\Big(\\arg\\max_j\\,(\\alpha_{l,j} + G_{l,j})\\Big)_1

with ``α_l`` the policy's logits and ``G`` i.i.d. Gumbel(0, 1) noise in training. The discrete
sample is trained with the straight-through Gumbel-softmax estimator
(``F.gumbel_softmax(α, τ, hard=True)``): the forward value is the hard one-hot, the gradient is
that of ``softmax((α + G)/τ)``. The temperature ``τ`` (5 in the paper) therefore only scales and
smooths the gradient; the sampled route has probability ``softmax(α)`` whatever ``τ`` is. At
evaluation the route is deterministic, ``argmax_j α_{l,j}`` (``sample_at_eval=True`` keeps
sampling, as the official code ``gyhui14/spottune`` did).

**SpotTune-Global** (the paper's global variant): with ``v_l`` the fraction of the batch that
fine-tunes block ``l``, a penalty pushes every example to fine-tune the same ``k`` blocks,

.. math::

    L_{global} = \\lambda_g\\Big[\\big(\\textstyle\\sum_l v_l - k\\big)^2
                 + \\textstyle\\sum_l H(v_l)\\Big], \\qquad H(v) = -v\\log v - (1-v)\\log(1-v),

the first term asks for ``k`` fine-tuned blocks, the second for agreement between examples.

**What is ours, not the paper's** (the changes that keep routing per-example on a small
target task; measured on the default task, 5 labels per class):

1. *Standardised policy margins* (``policy_norm="batch"``, :class:`PolicyNetwork`). The plain
   policy collapses: its logits move together for all images, so every image takes the same
   route (often within the first epoch), and once the softmax saturates no gradient brings it
   back. Standardising each block's margin ``α_{l,1} − α_{l,0}`` over the batch and scaling it
   by ``s`` lets the network decide *which* images fine-tune a block and a learned bias ``β_l``
   *how many*. ``policy_norm="none"`` is the plain policy, for comparison. Standardised margins
   split every batch by construction, so SpotTune-Global, which wants all images to agree,
   uses the plain policy: the default ``policy_norm="auto"`` is ``"batch"``, or ``"none"``
   when ``global_weight > 0``.
2. A *usage target* in the manner of ConvNet-AIG's target-rate loss (Veit & Belongie,
   arXiv 1711.11503), ``L_usage = λ_u · mean_l (v_l − t)²``, which keeps ``β_l`` from drifting
   to "all images" or "none" (``usage_weight=0`` turns it off).
3. ``lr_scale``: the stem, the fine-tuned blocks and the head train at ``lr_scale ×`` the loop's
   learning rate (0.2 by default). At the loop's peak rate of 0.05 the mixture of frozen and
   fine-tuned blocks diverged mid-training (training loss above 4), even with routes held
   fixed.
4. The policy network: two convolutions with ReLU (no BatchNorm, whose running statistics lag
   badly over a few steps per epoch) on the image average-pooled to ``policy_size`` pixels, a
   4×4 pooled map and one linear layer (the paper used a small ResNet). The stem before the
   first block is fine-tuned, as in the official code; the head is new.

The defaults (``s = 3``, ``τ = 5``, policy learning rate 0.05, ``lr_scale = 0.2``) were chosen on
the validation split of the default task (5 seeds), not on its test split.

Efficiency: in training both copies of every block run on the whole batch (the straight-through
gradient of ``I_l`` needs both outputs); the frozen copy's weights get no gradients, so its
backward is the input gradient only. At evaluation each example runs only through the copy it
chose.

The frozen copies' BatchNorm (``frozen_bn``): ``"eval"`` (default: source statistics, nothing
of the copy changes), ``"batch"`` (batch statistics in training, running statistics follow the
target data; :class:`~tlgates.methods.base.Frozen`), or ``"train"``, the official code's
"frozen" path: only the convolution weights are frozen, BatchNorm's scale and shift train with
the fine-tuned blocks and its statistics follow the data. (The official network also trains a
final BatchNorm after the blocks; the tiny ResNet has none.)

The ``"paper"`` preset selects the official code's choices where they are switches: plain
policy, no usage target, the agent's learning rate 0.01, sampling at evaluation and the
``"train"`` frozen path. The SpotTune-Global penalty above is our reading of the paper's text,
not checked against code (the official repository has no global variant).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tlgates.backbones import Backbone
from tlgates.methods.base import FROZEN_BATCHNORM, Deviation, MethodConfig, TransferModel, \
    frozen_and_trainable, hyperparameter, per_class_mean, register, varying_share


POLICY_NORMS = ("auto", "batch", "none")
#: BatchNorm of the frozen copies: the two of :class:`Frozen`, and the official code's "train".
FROZEN_PATHS = (*FROZEN_BATCHNORM, "train")


class PolicyNetwork(nn.Module):
    r"""Reads the image, outputs two logits ``α = (−m/2, m/2)`` (frozen, fine-tuned) per block.

    ``x`` is average-pooled to ``size × size`` pixels, then
    ``conv3×3(C→w) → ReLU → conv3×3 stride 2 (w→2w) → ReLU → pool to 4×4 → linear → m₀`` (one
    raw margin per block). With ``norm="batch"`` the margins are standardised per block over
    the batch (``BatchNorm1d`` without affine; running statistics at evaluation):

    .. math:: m_l = s\,\frac{m_{0,l} - \mu_l}{\sigma_l} + \beta_l

    so the network decides *which* images fine-tune block ``l`` (their rank), the learned bias
    ``β_l`` (starting at 0) *how many*, and the fixed scale ``s`` makes the decisions confident
    from the start. ``norm="none"`` is the plain policy ``m = m₀`` with its last layer
    initialised to zero (every route starts at probability ½).

    Args:
        num_blocks: how many decisions to make (blocks of the backbone).
        width: ``w``, channels of the first convolution.
        size: side of the downsampled image the policy reads.
        in_channels: channels of the input image.
        norm: ``"batch"`` or ``"none"``.
        scale: ``s``, the spread of the standardised margins.

    Shape: ``(B, C, H, W) → (B, num_blocks, 2)``.
    """

    def __init__(self, num_blocks: int, width: int = 8, size: int = 16, in_channels: int = 3,
                 norm: str = "batch", scale: float = 3.0):
        super().__init__()
        self.num_blocks, self.size, self.scale = num_blocks, size, scale
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, 1, 1), nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 3, 2, 1), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(),
        )
        self.margin = nn.Linear(2 * width * 16, num_blocks, bias=norm == "none")
        self.norm: nn.Module | None = None
        if norm == "batch":
            # the raw margins are small at initialisation (variance ~1e-5 on the digits):
            # an eps far below that keeps the standardisation exact
            self.norm = nn.BatchNorm1d(num_blocks, eps=1e-10, affine=False)
            self.bias = nn.Parameter(torch.zeros(num_blocks))
        else:
            nn.init.zeros_(self.margin.weight)
            nn.init.zeros_(self.margin.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.adaptive_avg_pool2d(x, self.size)
        m = self.margin(self.features(x))
        if self.norm is not None:
            if self.training and len(m) == 1:  # no batch statistics from one image
                m = F.batch_norm(m, self.norm.running_mean, self.norm.running_var,
                                 eps=self.norm.eps)
            else:
                m = self.norm(m)
            m = self.scale * m + self.bias
        return torch.stack([-m / 2, m / 2], dim=-1)


def _run_chosen(frozen: nn.Module, tuned: nn.Module, h: torch.Tensor,
                route: torch.Tensor) -> torch.Tensor:
    """Each example through the one copy its route chose (evaluation: no blend needed)."""
    tuned_rows = route.bool()
    if tuned_rows.all():
        return tuned(h)
    if not tuned_rows.any():
        return frozen(h)
    out_tuned, out_frozen = tuned(h[tuned_rows]), frozen(h[~tuned_rows])
    out = out_tuned.new_empty((h.shape[0],) + out_tuned.shape[1:])
    out[tuned_rows], out[~tuned_rows] = out_tuned, out_frozen
    return out


@dataclass(frozen=True)
class SpotTuneConfig(MethodConfig):
    """SpotTune's hyperparameters. ``temperature`` (τ) scales only the policy's gradient;
    ``lr_scale`` sets the learning rate of the stem, the fine-tuned blocks and the head as a
    fraction of the loop's; ``policy_norm`` chooses standardised margins (``"batch"``) or the
    plain policy (``"none"``) of :class:`PolicyNetwork`, ``"auto"`` the plain one for
    SpotTune-Global; ``global_blocks`` (k) must not exceed the backbone's blocks."""

    temperature: float = hyperparameter(5.0, "Gumbel-softmax temperature τ (scales the policy "
                                             "gradient)", low=1e-3, high=100.0)
    lr_scale: float = hyperparameter(0.2, "lr of stem, fine-tuned blocks and head, × the "
                                          "loop's lr", low=0.0, high=1.0)
    policy_lr: float = hyperparameter(
        0.05, "peak learning rate of the policy network", low=1e-6, high=10.0, paper=0.01,
        origin="official code", why="chosen on the validation split with the standardised "
                                    "policy")
    policy_weight_decay: float = hyperparameter(0.001, "weight decay of the policy network",
                                                low=0.0, high=1.0)
    policy_width: int = hyperparameter(8, "channels of the policy's first convolution", low=1,
                                       high=256)
    policy_size: int = hyperparameter(16, "side of the downsampled image the policy reads",
                                      low=4, high=512)
    policy_norm: str = hyperparameter(
        "auto", "batch: standardised policy margins; none: plain policy; auto: none for "
                "SpotTune-Global, else batch", choices=POLICY_NORMS, paper="none",
        origin="official code",
        why="the plain policy's routes collapsed to one route for all images on the small task")
    policy_scale: float = hyperparameter(3.0, "spread s of the standardised margins",
                                         low=1e-3, high=100.0)
    usage_target: float = hyperparameter(0.5, "target fraction t of images fine-tuning each "
                                              "block", low=0.0, high=1.0)
    usage_weight: float = hyperparameter(
        1.0, "λ_u of the usage target (0: off)", low=0.0, high=100.0, paper=0.0,
        origin="official code", why="keeps each block's usage from drifting to all or no "
                                    "images (ConvNet-AIG's target rate, arXiv 1711.11503)")
    global_weight: float = hyperparameter(0.0, "λ_g of the SpotTune-Global penalty (0: off)",
                                          low=0.0, high=100.0)
    global_blocks: int = hyperparameter(2, "k, blocks SpotTune-Global fine-tunes (at most the "
                                           "backbone's blocks; ResNet-50 has 16)", low=0,
                                        high=16)
    frozen_bn: str = hyperparameter(
        "eval", "BatchNorm of the frozen copies: eval (source statistics), batch (statistics "
                "follow the data) or train (scale and shift train too)", choices=FROZEN_PATHS,
        paper="train", origin="official code",
        why="a frozen copy that keeps the source network exactly")
    sample_at_eval: bool = hyperparameter(False, "sample routes at evaluation (official code)",
                                          paper=True, origin="official code",
                                          why="a deterministic prediction for each image")


class SpotTune(TransferModel):
    """A source backbone with a frozen and a fine-tuned copy of every block, and a policy.

    Args:
        source: the pre-trained backbone (copied, never modified).
        num_classes: classes of the target task.
        **hyperparameters: :class:`SpotTuneConfig`.

    ``last_decisions`` holds ``"route"`` (B×L, 1 = fine-tuned copy) and ``"p_finetune"``
    (B×L, the policy's probability ``softmax(α)_1`` of fine-tuning each block).
    """

    def __init__(self, source: Backbone, num_classes: int, **hyperparameters: Any):
        super().__init__()
        hp = SpotTuneConfig(**hyperparameters)
        num_blocks = len(source.blocks)
        if hp.global_blocks > num_blocks:
            raise ValueError(f"global_blocks must be in [0, {num_blocks}] (the backbone's "
                             f"number of blocks), got {hp.global_blocks}")
        self.temperature, self.policy_lr = hp.temperature, hp.policy_lr
        self.lr_scale = hp.lr_scale
        self.policy_weight_decay = hp.policy_weight_decay
        self.usage_target, self.usage_weight = hp.usage_target, hp.usage_weight
        self.global_weight, self.global_blocks = hp.global_weight, hp.global_blocks
        self.sample_at_eval = hp.sample_at_eval
        self.force_path: str | None = None  # set by :meth:`forcing`
        frozen_bn, policy_norm = hp.frozen_bn, hp.policy_norm
        self.stem = copy.deepcopy(source.stem).requires_grad_(True)
        pairs = [frozen_and_trainable(block, "batch" if frozen_bn == "train" else frozen_bn)
                 for block in source.blocks]
        self.frozen_blocks = nn.ModuleList(frozen for frozen, _ in pairs)
        self.frozen_bn_params: list[nn.Parameter] = []
        if frozen_bn == "train":  # the official code freezes the convolutions only
            self.frozen_bn_params = [p for m in self.frozen_blocks.modules()
                                     if isinstance(m, nn.modules.batchnorm._BatchNorm)
                                     for p in m.parameters(recurse=False)]
            for p in self.frozen_bn_params:
                p.requires_grad_(True)
        self.tuned_blocks = nn.ModuleList(tuned for _, tuned in pairs)
        self.head = nn.Linear(source.feature_dim, num_classes)
        in_channels = next(source.stem.parameters()).shape[1]
        if policy_norm == "auto":
            policy_norm = "none" if hp.global_weight > 0 else "batch"
        self.policy = PolicyNetwork(num_blocks, hp.policy_width, hp.policy_size, in_channels,
                                    policy_norm, hp.policy_scale)

    def routes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(I, p)``: the decisions ``I`` (B×L in {0, 1}, 1 = fine-tuned; straight-through
        gradient in training) and the policy's probabilities ``p`` of fine-tuning (B×L)."""
        alpha = self.policy(x)
        p_finetune = alpha.softmax(dim=-1)[..., 1]
        if self.training or self.sample_at_eval:
            return F.gumbel_softmax(alpha, tau=self.temperature, hard=True)[..., 1], p_finetune
        return (alpha[..., 1] > alpha[..., 0]).to(x.dtype), p_finetune

    def forward_with_routes(self, x: torch.Tensor,
                            routes: torch.Tensor | None = None) -> tuple[torch.Tensor,
                                                                         torch.Tensor]:
        """Class logits and the routes taken (B×L), from one pass.

        ``routes`` forces the decisions (a B×L or L tensor of 0/1; the policy is not run):
        all zeros is the source network's blocks, all ones plain fine-tuning's (what
        :meth:`forcing` does for every forward pass).
        """
        if routes is None and self.force_path is not None:
            routes = torch.full((len(self.tuned_blocks),), float(self.force_path == "finetuned"))
        if routes is None:
            routes, p_finetune = self.routes(x)
            self.last_decisions = {"route": routes.detach(), "p_finetune": p_finetune.detach()}
        else:
            routes = routes.to(x).expand(x.shape[0], len(self.tuned_blocks))
            self.last_decisions = {"route": routes.detach()}
        h = self.stem(x)
        for l, (frozen, tuned) in enumerate(zip(self.frozen_blocks, self.tuned_blocks)):
            if self.training:
                mix = routes[:, l].view(-1, *([1] * (h.dim() - 1)))
                h = (1 - mix) * frozen(h) + mix * tuned(h)
            else:
                h = _run_chosen(frozen, tuned, h, routes[:, l])
        return self.head(Backbone.pool(h)), routes

    def forward(self, x: torch.Tensor, routes: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_with_routes(x, routes)[0]

    def loss_terms(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """``ce``, and in training ``usage_penalty`` and ``global`` when their weights are > 0."""
        logits, routes = self.forward_with_routes(x)
        terms = {"ce": F.cross_entropy(logits, y)}
        if not self.training:
            return terms
        v = routes.mean(dim=0)  # fraction of the batch fine-tuning each block
        if self.usage_weight > 0:
            terms["usage_penalty"] = self.usage_weight * (v - self.usage_target).pow(2).mean()
        if self.global_weight > 0:
            vc = v.clamp(1e-4, 1 - 1e-4)
            entropy = -(vc * vc.log() + (1 - vc) * (1 - vc).log()).sum()
            terms["global"] = self.global_weight * ((v.sum() - self.global_blocks) ** 2
                                                    + entropy)
        return terms

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Stem and fine-tuned blocks, and head, at ``lr_scale·lr``; the policy at ``policy_lr``
        with its own weight decay. The frozen copies are in no group (no gradients), except
        their BatchNorm's scale and shift with ``frozen_bn="train"``, which join the stem's."""
        tuned = (list(self.stem.parameters()) + list(self.tuned_blocks.parameters())
                 + self.frozen_bn_params)
        return [{"params": tuned, "lr": lr * self.lr_scale, "weight_decay": 0.0},
                {"params": list(self.head.parameters()), "lr": lr * self.lr_scale,
                 "weight_decay": 0.0},
                {"params": list(self.policy.parameters()), "lr": self.policy_lr,
                 "weight_decay": self.policy_weight_decay}]

    def epoch_record(self, decisions: dict[str, torch.Tensor],
                     y: torch.Tensor) -> dict[str, Any]:
        """Per-block usage (fraction of examples fine-tuning it), per class, distinct routes."""
        route = decisions["route"]
        num_classes = self.head.out_features
        by_class = per_class_mean(route, y, num_classes)
        return {"usage": route.mean(dim=0).tolist(), "usage_by_class": by_class.tolist(),
                "distinct_routes": len(torch.unique(route, dim=0))}

    def decision_summary(self, decisions: dict[str, torch.Tensor]) -> dict[str, Any]:
        route = decisions["route"].float()
        return {"decides": "frozen or fine-tuned copy per residual block",
                "choices per image": route.shape[1], "pre-trained share": 1 - route.mean().item(),
                "reading": f"{len(torch.unique(route, dim=0))} distinct routes over the images",
                "varies between images": varying_share(route)}

    def _force(self, path: str | None) -> str | None:
        before, self.force_path = self.force_path, path
        return before


@register("spottune", "SpotTune: a policy routes each image through frozen or fine-tuned "
          "blocks", SpotTuneConfig, paper="arXiv 1811.08737", deviations=[
              Deviation("policy network", "two convolutions on the image pooled to 16 px",
                        "a small ResNet on the full image", "cheap on a CPU; the policy "
                        "reads 32 px digits", "official code"),
              Deviation("main network's learning rate", "lr_scale 0.2 × the loop's",
                        "the loop's, with step decay", "at the loop's peak 0.05 the mixture "
                        "of frozen and fine-tuned blocks diverged", "official code"),
              Deviation("SpotTune-Global penalty", "(Σ_l v_l − k)² + Σ_l H(v_l)",
                        "the paper's text", "our reading of the paper; no official code",
                        "reconstruction"),
          ])
def build_spottune(source: Backbone, num_classes: int, **params: Any) -> SpotTune:
    return SpotTune(source, num_classes, **params)
