"""PTU, the Parameter Transfer Unit (Zhang, Zhang & Yang, PAKDD 2019, arXiv 1804.08613).

Question: which layers should a target network *share* with the source network (keep the
pre-trained parameters fixed) and which should it *fine-tune*? Instead of choosing by hand, PTU
keeps both and learns a continuous mix per channel. In every layer ``l`` the frozen source
layer gives ``a_s`` and a trainable target copy (initialised to the source weights) gives
``a_t``, both from the same input ``h_{l-1}`` (the previous unit's output):

.. math::

    z = \\sigma(U_z [a_s; a_t] + b_z), \\qquad r = \\sigma(U_r [a_s; a_t] + b_r), \\qquad
    h_l = z \\odot a_s + r \\odot a_t .

``(z, r) = (1, 0)`` is parameter sharing (the layer is the source layer) and ``(0, 1)`` is
fine-tuning (the layer is the target copy), so the discrete transfer states are corners of a
continuous gate space; ``(1, 1)`` adds both and ``(0, 0)`` switches the channel off.

There is no public code: the gate equation above is our reconstruction from the paper's
abstract (two gates mixing the source and target activations, with sharing and fine-tuning as
special cases), not an equation copied from the paper. Our choices where that is silent:

- **Convolutional layers** (:class:`ConvPTU`): one unit per element of the backbone contract,
  the ``stem`` and each residual block. The gates are per example and per channel, computed
  from the globally pooled activations ``[GAP(a_s); GAP(a_t)]`` (2C → 2C, one linear layer for
  both gates), not from a 1×1 convolution per pixel: cheaper, and one ``(z, r)`` point per
  channel is what the gate plane shows.
- **Initialisation**: ``U = 0`` and ``b_z = logit(z₀)``, ``b_r = logit(1 − z₀)``, so every gate
  starts at ``(z₀, 1 − z₀)`` on the anti-diagonal ``z + r = 1``. The target copy starts equal to
  the source, so the network starts *exactly* as the pre-trained one for any ``z₀``; ``z₀`` near
  1 starts near sharing, near 0 near fine-tuning.
- **Recurrent cells** (:class:`PTULSTM`): the source LSTM cell (frozen) and its target copy read
  the same input ``x_t`` and the same previous state ``(h, c)``; the gates are computed from
  their hidden states ``[h_s; h_t]``. The output mixes the hidden states as the paper's
  equation, ``h = z ⊙ h_s + r ⊙ h_t``; the cell state (the LSTM's memory, carried from step to
  step) is mixed with the normalised weights, ``c = (z ⊙ c_s + r ⊙ c_t) / (z + r)``. Without
  the normalisation, gates with ``z + r ≠ 1`` rescale the memory at every step, the scale
  compounds over the time steps, and training diverged in our trials. ``(1, 0)`` is still
  exactly the source LSTM and ``(0, 1)`` exactly the target one. Its demo reads an image row
  by row (:class:`RowLSTM`), pretrained on the glyph source domain (:func:`rnn_source_model`).
- **Frozen BatchNorm**: the source layers normalise with the source statistics
  (``batchnorm="eval"``, default) or with batch statistics as SpotTune's code did (``"batch"``).
- **Learning rates**: the gate biases ``b_z, b_r`` (where each channel sits in the gate
  plane) have their own rate, ``gate_lr_scale`` × the base rate; the matrices ``U`` train at
  the base rate. At 1× the biases of a 5-shot run move by a few hundredths in its 120 steps,
  so the "learned" strategy would be the initialisation; scaling ``U`` as well made the gate
  logits reach ±100 (gates stuck at exactly 0 or 1 in float32). Defaults: 100 for the CNN,
  10 for the LSTM (whose gates act at every time step), chosen on the validation split of
  the 5-shot digits (3 seeds) among 10, 30, 100 and 3, 10, 30; the validation accuracies
  were within about 4 points of each other, the size of the seed noise.

Registered methods: ``ptu`` (the CNN form on the source backbone) and ``ptu-rnn`` (the LSTM
form; its ``transfer`` hyperparameter also gives the plain sharing and fine-tuning baselines of
the recurrent network). Plain sharing of the CNN is the registered ``linear`` probe.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tlgates.backbones import Backbone
from tlgates.methods.base import (
    FROZEN_BATCHNORM, Deviation, Frozen, MethodConfig, TransferModel, frozen_and_trainable,
    hyperparameter, register, varying_share,
)

TRANSFER_MODES = ("ptu", "finetune", "share")


def _check_z_init(z_init: float) -> float:
    if not 0.0 < z_init < 1.0:
        raise ValueError(f"z_init must be in (0, 1) (the sigmoid never reaches 0 or 1), "
                         f"got {z_init!r}")
    return float(z_init)


class PTUGate(nn.Module):
    """The two gates of a PTU: ``(z, r) = σ(U·[s; t] + b)``, ``U`` = ``[U_z; U_r]`` (2C × 2C).

    Args:
        channels: C, the number of channels (or hidden units) gated.
        z_init: every gate starts at ``(z_init, 1 − z_init)`` (``U = 0``, biases the logits).

    Inputs: ``s`` and ``t``, the source and target activations ``(B, C)`` (pooled for CNNs).
    Outputs: ``z`` and ``r``, each ``(B, C)`` in (0, 1).
    """

    def __init__(self, channels: int, z_init: float = 0.5):
        super().__init__()
        z_init = _check_z_init(z_init)
        self.channels = channels
        self.proj = nn.Linear(2 * channels, 2 * channels)
        nn.init.zeros_(self.proj.weight)
        with torch.no_grad():
            self.proj.bias[:channels] = math.log(z_init / (1 - z_init))
            self.proj.bias[channels:] = math.log((1 - z_init) / z_init)
        self.forced: tuple[float, float] | None = None  # set by :func:`forced_gates`

    def forward(self, s: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.forced is not None:
            return torch.full_like(s, self.forced[0]), torch.full_like(t, self.forced[1])
        z, r = torch.sigmoid(self.proj(torch.cat([s, t], dim=1))).chunk(2, dim=1)
        return z, r


@contextmanager
def forced_gates(model: nn.Module, z: float, r: float) -> Iterator[None]:
    """Inside the ``with`` block every :class:`PTUGate` of ``model`` outputs the constants
    ``(z, r)``: ``(1, 0)`` turns a PTU network into the source network, ``(0, 1)`` into its
    target copy (the discrete transfer states as special cases)."""
    if not (0 <= z <= 1 and 0 <= r <= 1):
        raise ValueError(f"forced gates must lie in [0, 1], got z={z!r}, r={r!r}")
    gates = [m for m in model.modules() if isinstance(m, PTUGate)]
    if not gates:
        raise ValueError(f"{type(model).__name__} has no PTU gates to force")
    for gate in gates:
        gate.forced = (float(z), float(r))
    try:
        yield
    finally:
        for gate in gates:
            gate.forced = None


def _out_channels(module: nn.Module) -> int:
    """Output channels of a convolutional stage: those of its last Conv2d or BatchNorm2d."""
    layers = [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]
    if not layers:
        raise ValueError(f"cannot tell the output channels of {type(module).__name__}: "
                         "it has no Conv2d or BatchNorm2d")
    last = layers[-1]
    return last.num_features if isinstance(last, nn.BatchNorm2d) else last.out_channels


class ConvPTU(nn.Module):
    """One PTU around a convolutional layer (a stem or a residual block).

    ``a_s = source(h)`` (frozen), ``a_t = target(h)`` (trainable copy); the gates read the
    pooled activations and mix the maps per channel: ``out = z ⊙ a_s + r ⊙ a_t``.

    Args:
        layer: the pre-trained layer (copied twice; never modified).
        channels: its output channels C.
        z_init: initial ``z`` (``r`` starts at ``1 − z_init``).
        batchnorm: how the frozen copy's BatchNorm behaves (``"eval"`` or ``"batch"``, see
            :class:`~tlgates.methods.base.Frozen`).

    Shape: ``(B, C_in, H, W) → (B, C, H', W')``, and ``z``, ``r`` of shape ``(B, C)``.
    """

    def __init__(self, layer: nn.Module, channels: int, *, z_init: float = 0.5,
                 batchnorm: str = "eval"):
        super().__init__()
        self.source, self.target = frozen_and_trainable(layer, batchnorm)
        self.gate = PTUGate(channels, z_init)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a_s, a_t = self.source(h), self.target(h)
        z, r = self.gate(Backbone.pool(a_s), Backbone.pool(a_t))
        return z[:, :, None, None] * a_s + r[:, :, None, None] * a_t, z, r


@dataclass(frozen=True)
class _GateConfig(MethodConfig):
    z_init: float = hyperparameter(0.5, "initial z of every gate (r starts at 1 − z): near 1 "
                                        "starts near sharing, near 0 near fine-tuning",
                                   low=0.01, high=0.99)
    target_lr_scale: float = hyperparameter(1.0, "the target copies' learning rate as a "
                                                 "fraction of the base lr", low=0.0, high=1.0)


_GATE_LR_HELP = ("the gate biases' learning rate as a multiple of the base lr (the gate "
                 "matrices U train at the base lr)")


@dataclass(frozen=True)
class PTUConfig(_GateConfig):
    """The CNN form's hyperparameters."""

    gate_lr_scale: float = hyperparameter(100.0, _GATE_LR_HELP, low=0.01, high=1000.0)
    batchnorm: str = hyperparameter("eval", "BatchNorm of the frozen source layers: source "
                                            "statistics (eval) or batch statistics (batch)",
                                    choices=FROZEN_BATCHNORM)


@dataclass(frozen=True)
class RecurrentPTUConfig(_GateConfig):
    """The recurrent form's gate hyperparameters."""

    gate_lr_scale: float = hyperparameter(10.0, _GATE_LR_HELP, low=0.01, high=1000.0)


@dataclass(frozen=True)
class PTURNNConfig(RecurrentPTUConfig):
    """``ptu-rnn``: the recurrent form, or its plain corners as baselines (``transfer``)."""

    transfer: str = hyperparameter("ptu", "ptu (learned gates), finetune or share (the "
                                          "corners (0, 1) and (1, 0) as plain networks)",
                                   choices=TRANSFER_MODES)


_FORCED_GATES = {"pretrained": (1.0, 0.0), "finetuned": (0.0, 1.0)}


class _GatedByPTU(TransferModel):
    """What the CNN and recurrent PTU networks share: forcing and summarising their gates."""

    def _force(self, path: str | None) -> str | None:
        gates = [m for m in self.modules() if isinstance(m, PTUGate)]
        paths = {forced: name for name, forced in _FORCED_GATES.items()}
        before = paths.get(gates[0].forced)
        for gate in gates:
            gate.forced = None if path is None else _FORCED_GATES[path]
        return before

    def decision_summary(self, decisions: dict[str, torch.Tensor]) -> dict[str, Any]:
        """The source's weight in the mix, ``z / (z + r)``, is the pre-trained share."""
        z, r = (decisions[name].flatten(1).float() for name in ("z", "r"))
        return {"decides": "gates (z, r) mixing source and target activations per channel",
                "choices per image": 2 * z.shape[1],
                "pre-trained share": (z / (z + r).clamp_min(1e-8)).mean().item(),
                "reading": f"mean z (source) {z.mean():.2f}, mean r (target) {r.mean():.2f}",
                "varies between images": varying_share(torch.cat([z, r], dim=1))}


class PTUNetwork(_GatedByPTU):
    """A backbone in which the stem and every block is a :class:`ConvPTU`, and a new head.

    ``logits = head(GAP(h_L))`` with ``h_l = unit_l(h_{l−1})``, ``h_0 = x``.

    Args:
        source: the pre-trained backbone (copied, never modified).
        num_classes: classes of the target task.
        **hyperparameters: :class:`PTUConfig`.

    ``last_decisions`` holds ``"z"`` and ``"r"``, each ``(B, ΣC)``: the gates of every channel of
    every unit, in the order of ``layer_names`` (``layer_channels`` gives the sizes).
    """

    def __init__(self, source: Backbone, num_classes: int, **hyperparameters: Any):
        super().__init__()
        hp = PTUConfig(**hyperparameters)
        layers = [source.stem, *source.blocks]
        self.layer_names = ["stem"] + [f"block {i + 1}" for i in range(len(source.blocks))]
        self.layer_channels = [_out_channels(source.stem), *source.block_channels]
        self.units = nn.ModuleList(
            ConvPTU(layer, c, z_init=hp.z_init, batchnorm=hp.batchnorm)
            for layer, c in zip(layers, self.layer_channels))
        self.head = nn.Linear(source.feature_dim, num_classes)
        self.gate_lr_scale, self.target_lr_scale = hp.gate_lr_scale, hp.target_lr_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        zs, rs = [], []
        for unit in self.units:
            x, z, r = unit(x)
            zs.append(z)
            rs.append(r)
        self.last_decisions = {"z": torch.cat(zs, 1).detach(), "r": torch.cat(rs, 1).detach()}
        return self.head(Backbone.pool(x))

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Target copies at ``target_lr_scale·lr``, gate matrices at ``lr``, gate biases at
        ``gate_lr_scale·lr``, head at ``lr``; no weight decay (the frozen source copies have no
        trainable parameters)."""
        return [
            {"params": [p for u in self.units for p in u.target.parameters()],
             "lr": lr * self.target_lr_scale},
            {"params": [u.gate.proj.weight for u in self.units], "lr": lr},
            {"params": [u.gate.proj.bias for u in self.units], "lr": lr * self.gate_lr_scale},
            {"params": list(self.head.parameters()), "lr": lr},
        ]

    def epoch_record(self, decisions: dict[str, torch.Tensor],
                     y: torch.Tensor) -> dict[str, Any]:
        """Mean ``z`` and ``r``, and each channel's mean ``z`` and ``r`` over the examples."""
        return _gate_record(decisions)


def _gate_record(decisions: dict[str, torch.Tensor]) -> dict[str, Any]:
    if "z" not in decisions:
        return {}
    z, r = decisions["z"].float(), decisions["r"].float()
    channel_dims = tuple(range(z.dim() - 1))  # all but the channel (hidden unit) axis
    return {"z_mean": z.nanmean().item(), "r_mean": r.nanmean().item(),
            "z_channel": z.nanmean(dim=channel_dims).tolist(),
            "r_channel": r.nanmean(dim=channel_dims).tolist()}


# ----------------------------------------------------------------------------- recurrent form


class RowLSTM(nn.Module):
    """Reads an image row by row: ``(B, C, H, W)`` → a sequence of H rows of ``C·W`` values
    → a one-layer LSTM → its last hidden state ``(B, hidden)``.

    Args:
        row_size: values per row, ``C·W`` (96 for 3×32×32 images).
        hidden: LSTM hidden units (``feature_dim``).
        forget_bias: added to the forget gate's bias at initialisation (1 is the usual
            remedy for an LSTM that forgets too early; with it the glyph source reached
            77 % instead of 64 % after 4 epochs in our measurement).
    """

    def __init__(self, row_size: int = 96, hidden: int = 64, forget_bias: float = 1.0):
        super().__init__()
        if row_size < 1 or hidden < 1:
            raise ValueError(f"row_size and hidden must be ≥ 1, got {row_size}, {hidden}")
        self.lstm = nn.LSTM(row_size, hidden, batch_first=True)
        with torch.no_grad():  # PyTorch orders the gates input, forget, cell, output
            self.lstm.bias_ih_l0[hidden:2 * hidden] += forget_bias
        self.row_size, self.feature_dim = row_size, hidden

    @staticmethod
    def rows(x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) → (B, H, C·W)``: row ``i`` holds the pixels of row ``i``, channel by
        channel."""
        return x.permute(0, 2, 1, 3).flatten(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lstm(self.rows(x))[1][0][0]


def lstm_cell(lstm: nn.LSTM) -> nn.LSTMCell:
    """An ``nn.LSTMCell`` with the weights of a one-layer, unidirectional ``nn.LSTM`` (a copy)."""
    if lstm.num_layers != 1 or lstm.bidirectional or lstm.proj_size:
        raise ValueError("lstm_cell needs a one-layer, unidirectional LSTM without projection")
    cell = nn.LSTMCell(lstm.input_size, lstm.hidden_size, bias=lstm.bias)
    with torch.no_grad():
        cell.weight_ih.copy_(lstm.weight_ih_l0)
        cell.weight_hh.copy_(lstm.weight_hh_l0)
        if lstm.bias:
            cell.bias_ih.copy_(lstm.bias_ih_l0)
            cell.bias_hh.copy_(lstm.bias_hh_l0)
    return cell.to(lstm.weight_ih_l0.device)


class PTULSTM(nn.Module):
    """PTU between a frozen source LSTM cell and its trainable copy, over a sequence.

    At every step both cells read ``x_t`` and the shared state ``(h, c)``:
    ``(h_s, c_s) = cell_s(x_t, (h, c))``, ``(h_t, c_t) = cell_t(x_t, (h, c))``,
    ``(z, r) = gate(h_s, h_t)``, then ``h = z ⊙ h_s + r ⊙ h_t`` and
    ``c = (z ⊙ c_s + r ⊙ c_t) / (z + r)`` (the memory keeps its scale over time steps).

    Args:
        lstm: the pre-trained one-layer ``nn.LSTM`` (copied; never modified).
        z_init: initial ``z`` of every gate (``r = 1 − z_init``).

    Inputs: ``x`` ``(B, T, D)`` and optional ``lengths`` ``(B,)`` (each sequence's true length
    ``1 ≤ L ≤ T``; the state stops changing after it, as with a packed sequence).
    Outputs: the last hidden state ``(B, H)`` (at each sequence's own length), and ``z``, ``r``
    ``(B, T, H)``; steps past a sequence's length hold NaN (no gate was used there).
    """

    def __init__(self, lstm: nn.LSTM, *, z_init: float = 0.5):
        super().__init__()
        self.source, self.target = frozen_and_trainable(lstm_cell(lstm))
        self.gate = PTUGate(lstm.hidden_size, z_init)
        self.hidden = lstm.hidden_size

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch, steps, _ = x.shape
        if lengths is not None:
            lengths = torch.as_tensor(lengths, device=x.device)
            if lengths.shape != (batch,) or lengths.min() < 1 or lengths.max() > steps:
                raise ValueError(f"lengths must hold {batch} values in [1, {steps}], "
                                 f"got {lengths.tolist()}")
        h = c = x.new_zeros(batch, self.hidden)
        zs, rs = [], []
        for step in range(steps):
            h_s, c_s = self.source(x[:, step], (h, c))
            h_t, c_t = self.target(x[:, step], (h, c))
            z, r = self.gate(h_s, h_t)
            h_new, c_new = z * h_s + r * h_t, (z * c_s + r * c_t) / (z + r)
            if lengths is not None:
                active = (step < lengths)[:, None]
                h, c = torch.where(active, h_new, h), torch.where(active, c_new, c)
                z, r = z.masked_fill(~active, math.nan), r.masked_fill(~active, math.nan)
            else:
                h, c = h_new, c_new
            zs.append(z)
            rs.append(r)
        return h, torch.stack(zs, 1), torch.stack(rs, 1)


class RecurrentClassifier(TransferModel):
    """``logits = head(RowLSTM(x))``: the recurrent network trained as a whole or frozen.

    Used to pretrain the source LSTM on glyphs, and as the recurrent baselines: fine-tuning
    (``freeze=False``) and parameter sharing (``freeze=True``: a linear probe on the frozen
    LSTM), which are PTU's ``(0, 1)`` and ``(1, 0)`` corners.
    """

    def __init__(self, encoder: RowLSTM, num_classes: int, *, freeze: bool = False):
        super().__init__()
        encoder = copy.deepcopy(encoder)
        self.encoder: nn.Module = Frozen(encoder) if freeze else encoder.requires_grad_(True)
        self.head = nn.Linear(encoder.feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


class RecurrentPTU(_GatedByPTU):
    """``logits = head(h_T)`` where ``h_T`` is the last state of a :class:`PTULSTM` reading the
    image row by row (see :class:`RowLSTM`).

    Args:
        source: the pre-trained :class:`RowLSTM` (copied, never modified).
        num_classes: classes of the target task.
        **hyperparameters: :class:`RecurrentPTUConfig`.

    ``last_decisions`` holds ``"z"`` and ``"r"``, each ``(B, T, H)``: the gates of every hidden
    unit at every time step (image row). ``layer_names`` and ``layer_channels`` describe the one
    gated layer, as for :class:`PTUNetwork`.
    """

    def __init__(self, source: RowLSTM, num_classes: int, **hyperparameters: Any):
        super().__init__()
        hp = RecurrentPTUConfig(**hyperparameters)
        self.unit = PTULSTM(source.lstm, z_init=hp.z_init)
        self.layer_names, self.layer_channels = ["LSTM"], [source.feature_dim]
        self.head = nn.Linear(source.feature_dim, num_classes)
        self.gate_lr_scale, self.target_lr_scale = hp.gate_lr_scale, hp.target_lr_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, z, r = self.unit(RowLSTM.rows(x))
        self.last_decisions = {"z": z.detach(), "r": r.detach()}
        return self.head(h)

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Target cell at ``target_lr_scale·lr``, gate matrix at ``lr``, gate biases at
        ``gate_lr_scale·lr``, head at ``lr``."""
        return [
            {"params": list(self.unit.target.parameters()), "lr": lr * self.target_lr_scale},
            {"params": [self.unit.gate.proj.weight], "lr": lr},
            {"params": [self.unit.gate.proj.bias], "lr": lr * self.gate_lr_scale},
            {"params": list(self.head.parameters()), "lr": lr},
        ]

    def epoch_record(self, decisions: dict[str, torch.Tensor],
                     y: torch.Tensor) -> dict[str, Any]:
        """Mean ``z`` and ``r``; per hidden unit (``*_channel``) and per time step (``*_time``)."""
        record = _gate_record(decisions)
        if record:
            for name in ("z", "r"):
                record[f"{name}_time"] = decisions[name].float().nanmean(dim=(0, 2)).tolist()
        return record


# ----------------------------------------------------------------------------- registry

_NOT_STATED = "not stated in the abstract; no public code"
_PTU_DEVIATIONS = [
    Deviation("gate equation", "z, r = σ(U·[a_s; a_t] + b), h = z ⊙ a_s + r ⊙ a_t",
              "two gates mixing source and target; (1, 0) sharing, (0, 1) fine-tuning",
              "the simplest unit with those special cases", "reconstruction"),
    Deviation("gate initialisation", "U = 0, (z, r) = (z_init, 1 − z_init)", _NOT_STATED,
              "the network starts exactly as the source", "reconstruction"),
    Deviation("gate learning rate", "biases at gate_lr_scale × the base lr", _NOT_STATED,
              "at 1× the gates barely move in a 5-shot run", "reconstruction"),
]


@register("ptu", "Parameter Transfer Unit: learned per-channel mix of a frozen source layer "
                 "and its fine-tuned copy", PTUConfig, paper="arXiv 1804.08613",
          deviations=[*_PTU_DEVIATIONS,
                      Deviation("CNN gates", "per channel, from the pooled activations",
                                _NOT_STATED, "one (z, r) point per channel; cheaper than a "
                                "1×1 convolution per pixel", "reconstruction"),
                      Deviation("frozen source BatchNorm", "source statistics (batchnorm=eval)",
                                _NOT_STATED, "the source layer stays the source network",
                                "reconstruction")])
def build_ptu(source: Backbone, num_classes: int, **params: Any) -> PTUNetwork:
    return PTUNetwork(source, num_classes, **params)


@register("ptu-rnn", "PTU in an LSTM reading the image row by row (its own glyph-pretrained "
                     "source LSTM)", PTURNNConfig, paper="arXiv 1804.08613", source="row-lstm",
          deviations=[*_PTU_DEVIATIONS,
                      Deviation("LSTM cell state", "c = (z ⊙ c_s + r ⊙ c_t) / (z + r)",
                                _NOT_STATED, "without the normalisation training diverged",
                                "reconstruction")])
def build_ptu_rnn(source: RowLSTM, num_classes: int, *, transfer: str,
                  **params: Any) -> TransferModel:
    """The recurrent form on a pretrained :class:`RowLSTM` source (``run_method`` passes the
    glyph-pretrained one, ``tlgates.source.rnn_source_model().encoder``).
    ``transfer="finetune"`` and ``"share"`` ignore the gate hyperparameters (they have no
    gates)."""
    if not isinstance(source, RowLSTM):
        raise TypeError(f"ptu-rnn needs a RowLSTM source, got {type(source).__name__}; use "
                        "tlgates.source.rnn_source_model().encoder (run_method does)")
    encoder = source
    if transfer == "ptu":
        return RecurrentPTU(encoder, num_classes, **params)
    return RecurrentClassifier(encoder, num_classes, freeze=transfer == "share")
