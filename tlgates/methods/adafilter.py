"""AdaFilter: adaptive filter fine-tuning (Guo et al., AAAI 2020, arXiv 1911.09659).

Question: not *which blocks* but *which filters* should adapt to the new task, and for which
image? Every convolution keeps its pre-trained weights ``W_pt`` (frozen) beside fine-tuned
weights ``W_ft`` (initialised to ``W_pt``). Per example and per output filter a binary gate
``G ∈ {0, 1}`` picks one of the two, each path with its own BatchNorm ("gated batch norm"):

.. math::

    y_l = G_l \\odot \\mathrm{BN}^{ft}_l(W^{ft}_l * x_l)
          + (1 - G_l) \\odot \\mathrm{BN}^{pt}_l(W^{pt}_l * x_l)

The gates come from ONE recurrent network shared across layers that reads the pooled input of
each gated layer, so the decisions of layer ``l`` depend on what the layers before it did:

.. math::

    s_l = P_l\\,\\mathrm{norm}(\\mathrm{GAP}(x_l)), \\qquad
    h_l, c_l = \\mathrm{LSTM}(s_l, (h_{l-1}, c_{l-1})), \\qquad
    G_l = \\mathrm{hard}\\big(\\sigma(Q_l h_l / \\tau)\\big)

``P_l`` (``C_in → hidden``) and ``Q_l`` (``hidden → C_out``) are per-layer linear maps (the
layers differ in width); the LSTM cell is shared; ``norm`` is the identity by default, or a
per-channel standardisation over the batch (``gate_input="standardized"``). ``hard`` is the
threshold at 0.5 with a straight-through gradient (the forward value is exactly 0 or 1, the
gradient is the sigmoid's), optionally after adding logistic noise (Gumbel-sigmoid). At
evaluation the decision is deterministic: ``G = [σ(Q_l h_l) > 0.5]``.

**What is the paper's and what is ours.** The paper has no public code; this module is a
reconstruction from its description. From the paper: frozen ``W_pt`` beside fine-tuned ``W_ft``
initialised to it; binary gates per example and per output filter; gated batch norm; one LSTM
shared across layers that reads the previous layer's pooled activations; training through the
binary gates with a straight-through style estimator. Ours: the linear maps ``P_l``/``Q_l``
and ``s_l ∈ R^hidden``; the optional standardisation of ``GAP(x_l)`` (``gate_input``); one
LSTM step per distinct layer input (a block's projection shortcut reads the block input, like
``conv1``, so it shares ``conv1``'s step with its own ``Q``); the stem convolution and the
shortcuts gated like the others; the temperature ``τ``, the Gumbel-sigmoid option, the optional
usage penalty ``λ·mean_l (mean(G_l) − ρ)²``, the gate network's own learning rate and every
default value.

What is gated: every convolution of the backbone that is followed by a BatchNorm: the stem's,
``conv1``/``conv2`` (and ``conv3`` of a Bottleneck) of every residual block and the projection
shortcut (``downsample``: 1×1 conv + BN). The identity shortcut has no weights. The head is new.
The pre-trained path is a :class:`~tlgates.methods.base.Frozen` copy of the whole source backbone
(BatchNorm ``"eval"``: source statistics, or ``"batch"``); the fine-tuned path a trainable copy.

Efficiency: each gated convolution is ONE convolution with both weight sets concatenated along
the output channels, split afterwards (:func:`paired_conv_bn`); the frozen BN (eval mode) is
folded into the frozen weights; the backward computes the input gradient through both halves
but the weight gradient only for ``W_ft`` (:class:`_PairedConv2d`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tlgates.backbones import Backbone
from tlgates.methods.base import FROZEN_BATCHNORM, Deviation, Frozen, MethodConfig, \
    TransferModel, frozen_and_trainable, hyperparameter, register, varying_share

ESTIMATORS = ("straight-through", "gumbel")
GATE_INPUTS = ("raw", "standardized")


class _PairedConv2d(torch.autograd.Function):
    """``conv(x, [W_ft; W_pt]) + [0; b_pt]``: one convolution for both paths, and no weight
    gradient for the frozen half.

    Autograd of ``F.conv2d(x, torch.cat([W_ft, W_pt]))`` would compute the weight gradient of
    the concatenated weight and throw half of it away; here the backward asks
    ``convolution_backward`` for the input gradient through all ``2·C_out`` filters and for the
    weight gradient of the ``C_out`` fine-tuned filters only.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w_ft: torch.Tensor, w_pt: torch.Tensor,
                bias: torch.Tensor | None, conv: nn.Conv2d) -> torch.Tensor:
        weight = torch.cat([w_ft, w_pt])
        ctx.save_for_backward(x, weight)
        ctx.conv = conv
        return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        conv, c_out = ctx.conv, weight.shape[0] // 2
        args = (None, conv.stride, conv.padding, conv.dilation, False, [0, 0], 1)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad, x, weight, *args, [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            grad_w = torch.ops.aten.convolution_backward(
                grad[:, :c_out], x, weight[:c_out], *args, [False, True, False])[1]
        return grad_x, grad_w, None, None, None


def paired_conv_bn(x: torch.Tensor, conv_ft: nn.Conv2d, bn_ft: nn.BatchNorm2d,
                   conv_pt: nn.Conv2d, bn_pt: nn.BatchNorm2d,
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(BN_ft(W_ft∗x), BN_pt(W_pt∗x))`` from ONE convolution, each half with its own BN.

    A BatchNorm in eval mode is the affine map ``z·a + b`` (``a = γ/√(σ²+ε)``,
    ``b = β − μ·a``), so the frozen path's BN is folded into its weights and a bias:
    ``BN_pt(W_pt∗x) = (a·W_pt)∗x + b``. A BN in training mode (the fine-tuned path, or the
    frozen one with ``frozen_bn="batch"``) runs on its half of the output.
    """
    w_pt, bias, fold = conv_pt.weight, None, not bn_pt.training
    if fold:
        scale = bn_pt.weight * torch.rsqrt(bn_pt.running_var + bn_pt.eps)
        w_pt = w_pt * scale[:, None, None, None]
        bias = torch.cat([torch.zeros_like(scale), bn_pt.bias - bn_pt.running_mean * scale])
    if torch.is_grad_enabled() and (x.requires_grad or conv_ft.weight.requires_grad):
        y = _PairedConv2d.apply(x, conv_ft.weight, w_pt, bias, conv_ft)
    else:
        y = F.conv2d(x, torch.cat([conv_ft.weight, w_pt]), bias, conv_ft.stride,
                     conv_ft.padding, conv_ft.dilation)
    y_ft, y_pt = y.chunk(2, dim=1)
    return bn_ft(y_ft), (y_pt if fold else bn_pt(y_pt))


def binary_gate(logits: torch.Tensor, *, temperature: float = 1.0,
                estimator: str = "straight-through", training: bool = True) -> torch.Tensor:
    """``hard(σ(logits/τ))`` ∈ {0, 1} with a straight-through gradient.

    In training, ``"gumbel"`` adds logistic noise ``log u − log(1 − u)`` (the difference of two
    Gumbel samples) to the logits first, so a filter whose logit is near 0 is sampled on either
    path; ``"straight-through"`` thresholds the logits themselves. The forward value is exactly
    0 or 1; the backward pass uses the gradient of ``σ((logits + noise)/τ)``. In evaluation the
    decision is ``[logits > 0]`` (``σ > 0.5``), with no noise.
    """
    if not training:
        return (logits > 0).to(logits.dtype)
    if estimator == "gumbel":
        u = torch.rand_like(logits).clamp(1e-6, 1 - 1e-6)
        logits = logits + torch.log(u) - torch.log1p(-u)
    soft = torch.sigmoid(logits / temperature)
    hard = (soft > 0.5).to(logits.dtype)
    return hard + (soft - soft.detach())  # exactly `hard`; the gradient of `soft`


@dataclass(frozen=True)
class GatedLayer:
    """Where one gated convolution sits: its name, LSTM step and number of filters."""

    name: str
    step: int
    filters: int


class Standardize(nn.BatchNorm1d):
    """Each channel standardised over the batch (``(v − mean) / std``, no learned scale), with
    running statistics at evaluation and for a batch of one."""

    def __init__(self, channels: int):
        super().__init__(channels, affine=False)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        if self.training and v.shape[0] == 1:
            return F.batch_norm(v, self.running_mean, self.running_var, eps=self.eps)
        return super().forward(v)


class GateLSTM(nn.Module):
    """The gate network: ``h_l = LSTM(P_l·norm(GAP(x_l)), h_{l−1})``, ``logits = Q_{l,k}·h_l``.

    Args:
        in_channels: channels of the input read at each LSTM step.
        out_channels: for each step, the filters of each convolution gated from it.
        hidden: the LSTM's hidden size (also the size of ``s_l``).
        gate_input: ``"raw"`` (``norm`` is the identity) or ``"standardized"``
            (:class:`Standardize`: what distinguishes the images in the batch).
    """

    def __init__(self, in_channels: list[int], out_channels: list[list[int]], hidden: int,
                 gate_input: str = "raw"):
        super().__init__()
        self.embed = nn.ModuleList(
            nn.Sequential(Standardize(c) if gate_input == "standardized" else nn.Identity(),
                          nn.Linear(c, hidden)) for c in in_channels)
        self.cell = nn.LSTMCell(hidden, hidden)
        self.heads = nn.ModuleList(nn.ModuleList(nn.Linear(hidden, c) for c in outs)
                                   for outs in out_channels)

    def step(self, index: int, x: torch.Tensor,
             state: tuple[torch.Tensor, torch.Tensor] | None,
             ) -> tuple[list[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """Read the feature map ``x`` (B×C×H×W) at step ``index``: gate logits per conv."""
        s = self.embed[index](Backbone.pool(x))
        h, c = self.cell(s, state)
        return [head(h) for head in self.heads[index]], (h, c)


def _gateable(conv: nn.Conv2d) -> bool:
    """A convolution that :func:`paired_conv_bn` can run: ungrouped, bias-free, zero padding."""
    return (conv.groups == 1 and conv.bias is None and conv.padding_mode == "zeros"
            and not isinstance(conv.padding, str))


def _foldable(bn: nn.Module) -> bool:
    """A BatchNorm2d with affine weights and running statistics (see :func:`paired_conv_bn`)."""
    return isinstance(bn, nn.BatchNorm2d) and bn.affine and bn.track_running_stats


def _check_block(block: nn.Module, index: int) -> list[str]:
    """The names of the block's convolutions in order; raise if it is not a ResNet block."""
    names = [n for n in ("conv1", "conv2", "conv3") if hasattr(block, n)]
    ok = names[:2] == ["conv1", "conv2"] and all(
        isinstance(getattr(block, c), nn.Conv2d) and
        _foldable(getattr(block, "bn" + c[-1], None)) for c in names)
    shortcut = getattr(block, "downsample", None)
    ok = ok and (shortcut is None or (
        isinstance(shortcut, nn.Sequential) and len(shortcut) == 2
        and isinstance(shortcut[0], nn.Conv2d) and _foldable(shortcut[1])))
    convs = [getattr(block, c) for c in names] + ([shortcut[0]] if shortcut is not None else [])
    if not ok or not all(_gateable(c) for c in convs):
        raise ValueError(f"block {index} ({type(block).__name__}) is not a ResNet block that "
                         "AdaFilter can gate: it needs conv1/bn1, conv2/bn2 (conv3/bn3), "
                         "ungrouped bias-free convolutions, affine BatchNorm2d layers with "
                         "running statistics, and downsample = None or "
                         "Sequential(Conv2d, BatchNorm2d)")
    return names


@dataclass(frozen=True)
class AdaFilterConfig(MethodConfig):
    """AdaFilter's hyperparameters. ``gate_input``: what ``P_l`` reads, the ``"raw"`` pooled
    activations ``GAP(x_l)`` or each channel ``"standardized"`` over the batch.
    ``temperature`` (τ of ``σ(logits/τ)``) shapes only the gradient (``σ'(l/τ)/τ``: large near
    ``l = 0`` and vanishing away from it for a small τ); the decision ``[logits (+ noise) > 0]``
    does not depend on it. ``frozen_bn``: BatchNorm of the pre-trained path, ``"eval"`` (source
    statistics, never updated) or ``"batch"`` (batch statistics in training)."""

    hidden: int = hyperparameter(32, "LSTM hidden size", low=1, high=1024)
    gate_input: str = hyperparameter("raw", "what the gate LSTM reads: raw or standardized "
                                            "pooled activations", choices=GATE_INPUTS)
    temperature: float = hyperparameter(1.0, "gate temperature τ of σ(logits/τ)", low=0.01,
                                        high=100.0)
    estimator: str = hyperparameter("straight-through", "gate estimator in training",
                                    choices=ESTIMATORS)
    gate_lr: float = hyperparameter(0.05, "learning rate of the gate network (LSTM, P, Q)",
                                    low=0.0, high=10.0)
    usage_target: float = hyperparameter(0.5, "fraction ρ of fine-tuned filters the usage "
                                              "penalty asks for", low=0.0, high=1.0)
    usage_weight: float = hyperparameter(0.0, "λ of the usage penalty λ·mean_l(mean G_l − ρ)² "
                                              "(0: none)", low=0.0, high=100.0)
    frozen_bn: str = hyperparameter("eval", "BatchNorm of the pre-trained path",
                                    choices=FROZEN_BATCHNORM)


class AdaFilter(TransferModel):
    """A source backbone in which every filter of every convolution is gated per example
    between its pre-trained and its fine-tuned version (see the module docstring).

    Args:
        source: the pre-trained backbone (copied twice, never modified).
        num_classes: classes of the target task.
        **hyperparameters: :class:`AdaFilterConfig`.

    ``last_decisions`` maps ``"gate/<layer>"`` to the binary gates ``(B, filters)`` of each
    gated convolution (1 = fine-tuned filter), in forward order; :attr:`layers` lists them.
    ``force_path`` (``None``, ``"pretrained"`` or ``"finetuned"``) overrides every gate.
    """

    def __init__(self, source: Backbone, num_classes: int, **hyperparameters: Any):
        super().__init__()
        hp = AdaFilterConfig(**hyperparameters)
        self.temperature, self.estimator, self.gate_lr = hp.temperature, hp.estimator, hp.gate_lr
        self.usage_target, self.usage_weight = hp.usage_target, hp.usage_weight
        hidden, gate_input, frozen_bn = hp.hidden, hp.gate_input, hp.frozen_bn
        self.pretrained: Frozen
        self.finetuned: Backbone
        self.pretrained, self.finetuned = frozen_and_trainable(source, frozen_bn)
        self.head = nn.Linear(source.feature_dim, num_classes)
        self.force_path: str | None = None
        self.layers, in_channels, out_channels = self._plan()
        self.gates = GateLSTM(in_channels, out_channels, hidden, gate_input)

    # ------------------------------------------------------------------ structure

    def _stem_convs(self) -> list[int]:
        """Indices of the stem's Conv2d layers (each followed by a BatchNorm2d)."""
        stem = self.finetuned.stem
        if not isinstance(stem, nn.Sequential):
            raise ValueError("AdaFilter needs the backbone's stem to be an nn.Sequential")
        convs = []
        for i, layer in enumerate(stem):
            if isinstance(layer, nn.Conv2d):
                followed_by_bn = i + 1 < len(stem) and _foldable(stem[i + 1])
                if not (followed_by_bn and _gateable(layer)):
                    raise ValueError(f"stem layer {i}: AdaFilter gates an ungrouped, bias-free "
                                     "Conv2d followed by a BatchNorm2d")
                convs.append(i)
            elif (not isinstance(layer, nn.BatchNorm2d)
                  and next(layer.parameters(), None) is not None):
                raise ValueError(f"stem layer {i} ({type(layer).__name__}) has weights that "
                                 "AdaFilter cannot gate")
        return convs

    def _plan(self) -> tuple[list[GatedLayer], list[int], list[list[int]]]:
        """The gated layers in forward order, and the LSTM steps' input/output widths."""
        layers, ins, outs = [], [], []

        def add_step(c_in: int, gated: list[tuple[str, int]]) -> None:
            for name, filters in gated:
                layers.append(GatedLayer(name, len(ins), filters))
            ins.append(c_in)
            outs.append([filters for _, filters in gated])

        for i in self._stem_convs():
            conv = self.finetuned.stem[i]
            add_step(conv.in_channels, [(f"stem.{i}", conv.out_channels)])
        for b, block in enumerate(self.finetuned.blocks):
            for k, name in enumerate(_check_block(block, b)):
                conv = getattr(block, name)
                gated = [(f"block{b}.{name}", conv.out_channels)]
                if k == 0 and block.downsample is not None:
                    gated.append((f"block{b}.downsample", block.downsample[0].out_channels))
                add_step(conv.in_channels, gated)
        return layers, ins, outs

    @property
    def layer_names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    # ------------------------------------------------------------------ forward

    def _next_logits(self, x: torch.Tensor, state: Any) -> tuple[list[Any], Any]:
        """One LSTM step reading ``x``: the gate logits of the convolutions whose input is
        ``x`` (``None`` each, and no step, while the gates are forced)."""
        index, self._step = self._step, self._step + 1
        if self.force_path is not None:
            return [None] * len(self.gates.heads[index]), state
        return self.gates.step(index, x, state)

    def _gate(self, logits: torch.Tensor | None, x: torch.Tensor,
              filters: int) -> torch.Tensor:
        if self.force_path is not None:
            return x.new_full((x.shape[0], filters), float(self.force_path == "finetuned"))
        return binary_gate(logits, temperature=self.temperature, estimator=self.estimator,
                           training=self.training)

    def _gated(self, x: torch.Tensor, conv_ft: nn.Conv2d, bn_ft: nn.BatchNorm2d,
               conv_pt: nn.Conv2d, bn_pt: nn.BatchNorm2d, logits: torch.Tensor | None,
               name: str) -> torch.Tensor:
        """``y = G ⊙ BN_ft(W_ft∗x) + (1 − G) ⊙ BN_pt(W_pt∗x)``, ``G = hard(σ(logits/τ))``."""
        g = self._gate(logits, x, conv_ft.out_channels)
        self._decisions[f"gate/{name}"] = g.detach()
        self._gate_values.append(g)
        y_ft, y_pt = paired_conv_bn(x, conv_ft, bn_ft, conv_pt, bn_pt)
        return torch.lerp(y_pt, y_ft, g[:, :, None, None])

    def _block(self, b: int, x: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        ft, pt = self.finetuned.blocks[b], self.pretrained.module.blocks[b]
        names = [n for n in ("conv1", "conv2", "conv3") if hasattr(ft, n)]
        identity, out = x, x
        for k, name in enumerate(names):
            logits, state = self._next_logits(out, state)
            bn = "bn" + name[-1]
            out = self._gated(out, getattr(ft, name), getattr(ft, bn), getattr(pt, name),
                              getattr(pt, bn), logits[0], f"block{b}.{name}")
            if k == 0 and ft.downsample is not None:
                identity = self._gated(x, ft.downsample[0], ft.downsample[1],
                                       pt.downsample[0], pt.downsample[1], logits[1],
                                       f"block{b}.downsample")
            if k < len(names) - 1:
                out = F.relu(out)
        return F.relu(out + identity), state

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The output of every block, in order (like :meth:`Backbone.feature_maps`); records
        the gates in ``last_decisions``."""
        self._decisions: dict[str, torch.Tensor] = {}
        self._gate_values: list[torch.Tensor] = []
        self._step, state = 0, None
        stem_ft, stem_pt = self.finetuned.stem, self.pretrained.module.stem
        for i, layer in enumerate(stem_ft):
            if isinstance(layer, nn.Conv2d):
                logits, state = self._next_logits(x, state)
                x = self._gated(x, layer, stem_ft[i + 1], stem_pt[i], stem_pt[i + 1],
                                logits[0], f"stem.{i}")
            elif not isinstance(layer, nn.BatchNorm2d):
                x = layer(x)
        maps = []
        for b in range(len(self.finetuned.blocks)):
            x, state = self._block(b, x, state)
            maps.append(x)
        self.last_decisions = self._decisions
        return maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(Backbone.pool(self.feature_maps(x)[-1]))

    # ------------------------------------------------------------------ training

    def usage_penalty(self) -> torch.Tensor:
        """``λ · mean_l (mean(G_l) − ρ)²`` over the gates of the last forward pass."""
        usage = torch.stack([g.mean() for g in self._gate_values])
        return self.usage_weight * (usage - self.usage_target).pow(2).mean()

    def loss_terms(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """``ce`` and, with ``usage_weight > 0`` in training, the ``usage`` penalty."""
        terms = {"ce": F.cross_entropy(self(x), y)}
        if self.usage_weight > 0 and self.training and self.force_path is None:
            terms["usage_penalty"] = self.usage_penalty()
        return terms

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Fine-tuned weights and head at ``lr``; the gate network at its own ``gate_lr``."""
        return [{"params": list(self.finetuned.parameters()) + list(self.head.parameters()),
                 "lr": lr},
                {"params": list(self.gates.parameters()), "lr": self.gate_lr}]

    def _force(self, path: str | None) -> str | None:
        before, self.force_path = self.force_path, path
        return before

    def epoch_record(self, decisions: dict[str, torch.Tensor],
                     y: torch.Tensor) -> dict[str, Any]:
        """Per-layer fraction of fine-tuned filters (``ft_fraction``), their overall mean, and
        per layer the fraction of filters whose decision varies between examples."""
        gates = [decisions[f"gate/{name}"] for name in self.layer_names
                 if f"gate/{name}" in decisions]
        if not gates:
            return {}
        return {"ft_mean": torch.cat([g.flatten() for g in gates]).mean().item(),
                "ft_fraction": [g.mean().item() for g in gates],
                "varying_filters": [filters_that_vary(g).float().mean().item() for g in gates]}

    def decision_summary(self, decisions: dict[str, torch.Tensor]) -> dict[str, Any]:
        gates = torch.cat([v.flatten(1).float() for k, v in decisions.items()
                           if k.startswith("gate/")], dim=1)
        return {"decides": "pre-trained or fine-tuned weights per filter",
                "choices per image": gates.shape[1], "pre-trained share": 1 - gates.mean().item(),
                "reading": f"{gates.mean():.0%} of the filters on fine-tuned weights",
                "varies between images": varying_share(gates)}


def filters_that_vary(gates: torch.Tensor) -> torch.Tensor:
    """For gates ``(N, C)`` of N examples: which of the C filters are not on the same path for
    every example (a boolean per filter)."""
    return gates.amax(dim=0) != gates.amin(dim=0)


_NOT_STATED = "not stated in the paper; no public code"


@register("adafilter", "per-example, per-filter choice between pre-trained and "
          "fine-tuned filters, gated by an LSTM over layers", AdaFilterConfig,
          paper="arXiv 1911.09659",
          deviations=[
              Deviation("gate network's maps", "per-layer linear P_l (C_in → hidden) and Q_l "
                        "(hidden → C_out) around one shared LSTM cell", _NOT_STATED,
                        "layers differ in width; the LSTM is shared as the paper says",
                        "reconstruction"),
              Deviation("binary gate estimator", "straight-through threshold at 0.5 (option: "
                        "Gumbel-sigmoid noise)", "a straight-through style estimator",
                        "the simplest estimator with exact 0/1 forward values",
                        "reconstruction"),
              Deviation("pre-trained path's BatchNorm", "frozen with the source statistics "
                        "(frozen_bn=eval)", "gated batch norm: one BN per path; whether the "
                        "pre-trained path's BN trains is not stated", "the pre-trained path "
                        "stays the source network exactly", "reconstruction"),
              Deviation("gate inputs", "not detached: the gate gradient reaches the "
                        "activations it reads", _NOT_STATED, "end-to-end, as the paper's "
                        "differentiable optimisation", "reconstruction"),
              Deviation("what is gated", "every convolution followed by a BatchNorm, the "
                        "stem's and the projection shortcuts included", "the convolutional "
                        "filters of the network", "one rule for every architecture",
                        "reconstruction"),
              Deviation("every default value", "hidden 32, τ 1, gate lr 0.05, no usage "
                        "penalty", _NOT_STATED, "chosen on the validation split",
                        "reconstruction"),
          ])
def build_adafilter(source: Backbone, num_classes: int, **params: Any) -> AdaFilter:
    return AdaFilter(source, num_classes, **params)
