"""The method interface: what every transfer method gives the one training loop.

A method is a :class:`TransferModel` (an ``nn.Module``) built from the pre-trained source
backbone by a builder function registered with :func:`register`. The loop (``tlgates.train``)
asks the model for

- ``loss_terms(x, y)``: the named scalar terms of the loss (``"ce"`` plus any regulariser),
  summed for the gradient and logged one by one;
- ``param_groups(lr)``: optimizer parameter groups with their own learning rates and decay;
- ``on_fit_start(train)``: what is computed once from the training set (DELTA's attention);
- ``on_epoch_start(epoch, num_epochs)``: schedules such as GTN's warm-up;
- ``last_decisions``: what the last forward pass decided per example (gates, routes), which the
  loop gathers over the evaluation set and hands to ``epoch_record`` for per-epoch records;
- ``training_record()``: per-epoch records gathered during the training steps themselves
  (DELTA's Ω), kept with or without an evaluation set;
- ``decision_summary(decisions)``: what it decided over an evaluation set, in the columns the
  comparison of all methods reads (:data:`SUMMARY_COLUMNS`);
- ``forcing(path)``: for a method that chooses between pre-trained and fine-tuned parts, a
  context in which every decision takes one path (:data:`PATHS`).
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tlgates.backbones import Backbone


#: The two sides a gated method chooses between, for :meth:`TransferModel.forcing`.
PATHS = ("pretrained", "finetuned")
#: The columns of :meth:`TransferModel.decision_summary`.
SUMMARY_COLUMNS = ("decides", "choices per image", "pre-trained share", "reading",
                   "varies between images")
#: A continuous decision "varies between images" when its std over them exceeds this.
VARIES = 0.05


def check_path(path: str | None) -> str | None:
    """``path`` if it is one of :data:`PATHS` or ``None``; a ``ValueError`` otherwise."""
    if path is not None and path not in PATHS:
        raise ValueError(f"path must be one of {', '.join(PATHS)} or None, got {path!r}")
    return path


def varying_share(choices: torch.Tensor) -> float:
    """Share of the columns of ``choices`` (images × choices) that are not the same for every
    image (binary choices) or spread by more than :data:`VARIES` (continuous ones)."""
    if ((choices == 0) | (choices == 1)).all():
        return (choices.amax(0) != choices.amin(0)).float().mean().item()
    return (choices.std(0) > VARIES).float().mean().item()


def per_class_mean(values: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(num_classes, K)``: the mean of ``values`` ``(N, K)`` over the examples of each class
    (0 for a class without examples)."""
    sums = torch.zeros(num_classes, values.shape[1]).index_add_(0, y.cpu(), values.float().cpu())
    return sums / torch.bincount(y.cpu(), minlength=num_classes).clamp(min=1)[:, None]


class TransferModel(nn.Module):
    """Base class of every method's model; ``forward(x)`` returns class logits.

    ``ddp_find_unused_parameters`` is true for a model some of whose trainable parameters get
    no gradient in some training steps (DistributedDataParallel must then look for them).
    """

    ddp_find_unused_parameters: bool = False

    def __init__(self) -> None:
        super().__init__()
        self.last_decisions: dict[str, torch.Tensor] = {}

    def loss_terms(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named loss terms for one batch; the loop minimises their sum."""
        return {"ce": F.cross_entropy(self(x), y)}

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups: by default every trainable parameter at ``lr``."""
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr": lr}]

    def on_fit_start(self, train: Any) -> None:
        """Called by the loop once before training with the training set (a ``Dataset``).

        For what must be computed from the target data before the first step, such as DELTA's
        channel attention. It runs before the loop seeds its random generators, so what it
        draws does not change the training that follows.
        """

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        """Called by the loop before each training epoch (0-based)."""

    def epoch_record(self, decisions: dict[str, torch.Tensor],
                     y: torch.Tensor) -> dict[str, Any]:
        """Per-epoch summary of the decisions gathered over the evaluation set."""
        return {}

    def training_record(self) -> dict[str, Any]:
        """Per-epoch summary of what the epoch's training steps gathered (called after the
        last step of every epoch, whether or not the loop evaluates)."""
        return {}

    def decision_summary(self, decisions: dict[str, torch.Tensor]) -> dict[str, Any]:
        """What the model decided over the examples of ``decisions`` (gathered by the loop's
        ``evaluate``), one value per :data:`SUMMARY_COLUMNS`; empty for a method that decides
        nothing per example."""
        return {}

    @contextmanager
    def forcing(self, path: str | None) -> Iterator[TransferModel]:
        """Within the block every decision takes ``path`` (one of :data:`PATHS`; ``None``: the
        learned decisions). Methods that choose between pre-trained and fine-tuned parts
        override :meth:`_force`; the others raise a ``TypeError``."""
        check_path(path)
        before = self._force(path)
        try:
            yield self
        finally:
            self._force(before)

    def _force(self, path: str | None) -> str | None:
        """Force every decision to ``path``; return the previous forcing."""
        raise TypeError(f"{type(self).__name__} makes no choice between pre-trained and "
                        "fine-tuned parts to force")


FROZEN_BATCHNORM = ("eval", "batch")


class Frozen(nn.Module):
    """A module that is not trained: its weights get no gradients and never change.

    ``batchnorm`` says how its BatchNorm layers behave while the parent trains:

    - ``"eval"`` (default): always normalise with the source statistics, which never change.
      ``train()`` on a parent does not switch it back to training mode. (Setting
      ``requires_grad=False`` alone would still let the running statistics drift.)
    - ``"batch"``: follow the parent's mode, as the official SpotTune code did: in training,
      normalise with batch statistics and update this copy's running statistics.
    """

    def __init__(self, module: nn.Module, batchnorm: str = "eval"):
        super().__init__()
        if batchnorm not in FROZEN_BATCHNORM:
            raise ValueError(f"batchnorm must be one of {', '.join(FROZEN_BATCHNORM)}, "
                             f"got {batchnorm!r}")
        self.batchnorm = batchnorm
        self.module = module.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> Frozen:
        return super().train(mode and self.batchnorm == "batch")

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)


def frozen_and_trainable(module: nn.Module,
                         batchnorm: str = "eval") -> tuple[Frozen, nn.Module]:
    """Two copies of a pre-trained ``module``: a :class:`Frozen` one and a trainable one.

    SpotTune, AdaFilter and PTU keep both beside each other. The frozen copy costs one more set
    of weights but no gradients and no optimizer state; ``module`` itself is left untouched.
    """
    return Frozen(copy.deepcopy(module), batchnorm), copy.deepcopy(module).requires_grad_(True)


#: Which layers a parameter-efficient method adapts: all of them, or the stages in the first
#: (``"early"``: the stem included) or the second (``"late"``) half of the network.
LAYER_GROUPS = ("all", "early", "late")


def convolutions(backbone: Backbone, layers: str = "all") -> list[tuple[str, nn.Conv2d]]:
    """The ``(name, conv)`` pairs of ``backbone``'s convolutions in a layer group."""
    if layers not in LAYER_GROUPS:
        raise ValueError(f"layers must be one of {', '.join(LAYER_GROUPS)}, got {layers!r}")
    stages = len(backbone.stage_ends)
    first_late_block = backbone.stage_ends[(stages + 1) // 2 - 1] + 1
    found = []
    for name, module in backbone.named_modules():
        if not isinstance(module, nn.Conv2d):
            continue
        block = int(name.split(".")[1]) if name.startswith("blocks.") else -1
        late = block >= first_late_block
        if layers == "all" or (layers == "late") == late:
            found.append((name, module))
    return found


def trainable_parameters(model: nn.Module) -> int:
    """How many numbers training changes: the parameters that require a gradient."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def replace_module(root: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` in the place of ``root``'s submodule called ``name`` (dotted)."""
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, new)


@torch.no_grad()
def merged_copy(backbone: Backbone, names: Sequence[str]) -> Backbone:
    """A copy of ``backbone`` in which each wrapper at ``names`` (a module with ``conv`` and
    ``delta_weight()``, such as LoRA's or an adapter's) becomes its convolution with the update
    added to the weight: one plain convolution per layer, the same outputs."""
    merged = copy.deepcopy(backbone)
    for name in names:
        wrapper = merged.get_submodule(name)
        wrapper.conv.weight.add_(wrapper.delta_weight())
        replace_module(merged, name, wrapper.conv)
    return merged


class Classifier(TransferModel):
    """``logits = head(backbone(x))``: a copy of the source backbone and a new linear head."""

    def __init__(self, source: Backbone, num_classes: int, *, freeze_backbone: bool = False):
        super().__init__()
        backbone = copy.deepcopy(source)
        self.backbone: nn.Module = Frozen(backbone) if freeze_backbone else backbone
        self.head = nn.Linear(source.feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def merged_backbone(self) -> Backbone:
        """The backbone this model computes, as a plain :class:`Backbone`: what must be stored
        per task besides the head (parameter-efficient methods merge their updates in)."""
        return self.backbone.module if isinstance(self.backbone, Frozen) else self.backbone


# ----------------------------------------------------------------------------- registry


#: Where the paper's side of a deviation comes from.
ORIGINS = ("official code", "paper", "reconstruction")
#: The training recipes every method can be built with (see :meth:`MethodSpec.check`).
PRESETS = ("tlgates", "paper")
#: The pre-trained networks a builder can take: the glyph CNN backbone, or the row LSTM.
SOURCE_KINDS = ("backbone", "row-lstm")


@dataclass(frozen=True)
class Param:
    """A method hyperparameter: its default, its allowed values and a one-line help.

    Numbers are checked against ``[low, high]``; strings against ``choices``. Where the paper
    or its official code used another value, ``paper`` holds it (what the ``"paper"`` preset
    selects), ``origin`` says where it comes from (one of :data:`ORIGINS`) and ``why`` why
    tlgates' default differs.
    """

    default: float | int | bool | str
    help: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] | None = None
    paper: float | int | bool | str | None = None
    origin: str = ""
    why: str = ""

    def __post_init__(self) -> None:
        if self.paper is not None:
            if self.origin not in ORIGINS or not self.why:
                raise ValueError(f"a Param with a paper value needs origin (one of "
                                 f"{', '.join(ORIGINS)}) and why, got {self.origin!r}")
            self.parse("paper", self.paper)

    def parse(self, name: str, value: Any) -> Any:
        """Convert ``value`` (maybe a string from the command line) and check it."""
        kind = type(self.default)
        try:
            if kind is bool and isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError
                value = value.lower() in ("true", "1")
            elif kind is int and isinstance(value, float) and value.is_integer():
                value = int(value)
            elif kind is int and isinstance(value, float):
                raise ValueError
            value = kind(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a {kind.__name__} ({self.allowed()}), "
                             f"got {value!r}") from None
        if isinstance(value, float) and math.isnan(value):
            raise ValueError(f"{name} must be {self.allowed()}, got {value!r}")
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"{name} must be {self.allowed()}, got {value!r}")
        if (self.low is not None and value < self.low) or (
                self.high is not None and value > self.high):
            raise ValueError(f"{name} must be {self.allowed()}, got {value!r}")
        return value

    def allowed(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(self.choices)
        if self.low is not None or self.high is not None:
            lo = "-inf" if self.low is None else f"{self.low:g}"
            hi = "inf" if self.high is None else f"{self.high:g}"
            return f"in [{lo}, {hi}]"
        return f"a {type(self.default).__name__}"


def hyperparameter(default: Any, help: str, *, low: float | None = None,
                   high: float | None = None, choices: tuple[str, ...] | None = None,
                   paper: Any = None, origin: str = "", why: str = "") -> Any:
    """A field of a method's config (:class:`MethodConfig`): the one place where a
    hyperparameter's default, allowed values, help and the paper's value are stated."""
    return field(default=default, metadata={"param": Param(default, help, low, high, choices,
                                                           paper, origin, why)})


@dataclass(frozen=True)
class MethodConfig:
    """The hyperparameters of a method, one :func:`hyperparameter` field each (in the manner of
    peft's ``LoraConfig``). Building one checks and converts every value; the registry, the
    command line, the dashboards and the deviations table read the fields' :class:`Param`."""

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name, f.metadata["param"].parse(f.name,
                                                                       getattr(self, f.name)))

    @classmethod
    def params(cls) -> dict[str, Param]:
        """Name → :class:`Param` of every hyperparameter, in declaration order."""
        return {f.name: f.metadata["param"] for f in fields(cls)}


@dataclass(frozen=True)
class Deviation:
    """A way in which tlgates differs from the paper or its official code.

    ``switch`` names the hyperparameter that selects the paper's way; ``None`` when there is
    none. The ``"paper"`` preset takes every switch declared on a :class:`Param` (its
    ``paper`` value); a deviation registered with a switch is one the preset does not take, and
    its ``why`` says why.
    """

    setting: str
    ours: str
    paper: str
    why: str
    origin: str
    switch: str | None = None

    def __post_init__(self) -> None:
        if self.origin not in ORIGINS:
            raise ValueError(f"origin must be one of {', '.join(ORIGINS)}, got {self.origin!r}")


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: its builder, its hyperparameters and where it comes from.

    ``deviations`` lists the differences from the paper that no hyperparameter switches;
    :meth:`deviation_table` adds those that one does. ``source`` names the pre-trained network
    the builder takes (one of :data:`SOURCE_KINDS`; ``tlgates.source.source_network`` loads it).
    """

    name: str
    summary: str
    build: Callable[..., TransferModel]
    params: dict[str, Param] = field(default_factory=dict)
    paper: str = ""
    deviations: tuple[Deviation, ...] = ()
    source: str = "backbone"

    def defaults(self, preset: str = "tlgates") -> dict[str, Any]:
        """The hyperparameters of a recipe: tlgates' defaults, or the paper's where known."""
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}")
        return {name: p.paper if preset == "paper" and p.paper is not None else p.default
                for name, p in self.params.items()}

    def check(self, overrides: dict[str, Any], preset: str = "tlgates") -> dict[str, Any]:
        """The ``preset``'s values updated with ``overrides``, each checked; unknown names
        raise."""
        unknown = sorted(set(overrides) - set(self.params))
        if unknown:
            allowed = ", ".join(self.params) or "none"
            raise ValueError(f"unknown hyperparameter {unknown[0]!r} for method {self.name!r}; "
                             f"allowed: {allowed}")
        values = self.defaults(preset)
        values.update({k: self.params[k].parse(k, v) for k, v in overrides.items()})
        return values

    def deviation_table(self) -> list[Deviation]:
        """Every known difference from the paper: switchable ones first, then the others."""
        switchable = [Deviation(name, str(p.default), str(p.paper), p.why, p.origin, name)
                      for name, p in self.params.items() if p.paper is not None]
        return switchable + list(self.deviations)


METHODS: dict[str, MethodSpec] = {}


def register(name: str, summary: str, config: type[MethodConfig] = MethodConfig, *,
             paper: str = "", deviations: Sequence[Deviation] = (),
             source: str = "backbone") -> Callable[[Callable[..., TransferModel]],
                                                   Callable[..., TransferModel]]:
    """Register ``build(source, num_classes, **hyperparameters) -> TransferModel`` as method
    ``name``, with the hyperparameters of ``config``.

    ``deviations``: the differences from the paper that no hyperparameter switches;
    ``source``: the kind of pre-trained network ``build`` takes (:data:`SOURCE_KINDS`).
    """
    if source not in SOURCE_KINDS:
        raise ValueError(f"source must be one of {', '.join(SOURCE_KINDS)}, got {source!r}")

    def decorator(build: Callable[..., TransferModel]) -> Callable[..., TransferModel]:
        if name in METHODS:
            raise ValueError(f"method {name!r} is registered twice")
        METHODS[name] = MethodSpec(name, summary, build, config.params(), paper,
                                   tuple(deviations), source)
        return build

    return decorator


def get_method(name: str) -> MethodSpec:
    """The registered method ``name``; unknown names raise a ``ValueError`` listing them."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}")
    return METHODS[name]


def build_method(name: str, source: Backbone, num_classes: int, *, preset: str = "tlgates",
                 **overrides: Any) -> TransferModel:
    """Build method ``name`` for a ``num_classes`` task from the ``source`` backbone.

    ``preset`` picks the recipe the ``overrides`` start from: ``"tlgates"`` (the defaults) or
    ``"paper"`` (the paper's or official code's value of every switchable deviation). The
    source backbone is never modified: builders copy what they train.
    """
    spec = get_method(name)
    return spec.build(source, num_classes, **spec.check(overrides, preset))
