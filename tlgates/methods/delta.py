"""DELTA: DEep Learning Transfer using Feature Map with Attention (Li et al., ICLR 2019,
arXiv 1901.09229; official code lixingjian/DELTA, a port in TLlib
``tllib/regularization/delta.py``).

Question: L2-SP keeps the fine-tuned *weights* near the pre-trained ones, yet what transfers is
what the network *computes*. DELTA keeps the fine-tuned network's feature maps near those of
the frozen source network on the same target images, and only for the channels that matter for
the new task. With ``FM^t_l`` and ``FM^s_l`` the outputs of stage ``l`` (``C_l × H_l × W_l``,
read at the backbone's ``stage_ends``) of the fine-tuned and of the source network:

.. math::

    L = \\mathrm{CE} + \\alpha\\,\\Omega + \\tfrac{\\beta}{2}\\lVert W_{head}\\rVert^2, \\qquad
    \\Omega = \\frac{1}{B}\\sum_{b=1}^{B}\\sum_l\\sum_{c=1}^{C_l} w_{l,c}\\,
        \\frac{\\lVert FM^t_{l,c}(x_b) - \\mathrm{sg}(FM^s_{l,c}(x_b))\\rVert^2}{H_l W_l}

(``sg``: no gradient reaches the source network). The channel attention ``w`` comes from the
source network alone: a new head is fitted on its frozen pooled features, then zeroing channel
``c`` of stage ``l`` raises the head's loss on the target training set by ``Δ_{l,c}``;
standardised within the layer (``z = (Δ − mean Δ) / std Δ``),

.. math::

    w_{l,c} = C_l\\,\\mathrm{softmax}_c(z_{l,c} / T) \\qquad (T = 5),

so the weights of a layer are positive and sum to ``C_l``; all ones is feature-map L2 without
attention (the ablation, method ``fml2``).

Choices where the paper is silent or where we differ from the official code (each switch
below is a hyperparameter, and the ``"paper"`` preset selects the official code's way):

- Ω is a *mean* over the batch, like the cross-entropy it is added to, so that α does not
  depend on the batch size (``batch_reduction="mean"``). The official code sums over the batch
  and halves (``0.5·Σ_b``, ``"sum"``), so its α acts B/2 times more strongly:
  ``α_ours = α_official · B / 2``.
- The regularised maps are the block outputs at the stage ends (``feature_point="block"``);
  the official code hooks the last convolution of each stage's last block, *before* its
  BatchNorm and the residual add (``"conv"``). The channel whose importance is measured is
  zeroed at the same point, the very feature map that Ω compares (at ``"conv"``, zeroing the
  output channel of a bias-free convolution is zeroing its filter, as the official code does).
- The head penalty is on the weight matrix; the official code includes the bias
  (``head_bias``). Its feature-map ablation (``fml2``) has no ``1/(H·W)`` (``area_norm``).
- The head for the attention is an L2-regularised logistic regression on the pooled source
  features, fitted to convergence with L-BFGS from zero on the whole training set
  (deterministic, no random numbers); the official code trains the head for 10 epochs with
  SGD and zeroes filters over 4 batches.
- The frozen source copy's BatchNorm is ``"batch"`` by default: in training it normalises with
  the batch statistics, as the fine-tuned network does, so Ω is zero before the first step;
  its running statistics never change, so the reference stays the pre-trained network.
  ``"eval"`` uses the source statistics, as the official code (``model_source.eval()``) and
  TLlib's example do.

Fast channel attention: the naive recipe runs the whole network once per channel and batch
(:func:`channel_loss_rises_naive`). :func:`channel_loss_rises` keeps each stage's output from one
pass, zeroes several channels in stacked copies of it and runs only the rest of the network.
:func:`channel_attention` caches the loss rises per source model and training set under
``tlgates.paths.data_dir()``.
"""
from __future__ import annotations

import copy
import hashlib
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from tlgates.backbones import Backbone
from tlgates.cache import load as load_cache
from tlgates.cache import save as save_cache
from tlgates.methods.base import FROZEN_BATCHNORM, Deviation, Frozen, MethodConfig, \
    hyperparameter, register
from tlgates.methods.baselines import FineTune
from tlgates.paths import data_dir

CACHE_VERSION = 1
#: How Ω is reduced over the batch: our mean, or the official code's ``0.5·Σ_b``.
BATCH_REDUCTIONS = ("mean", "sum")


@contextmanager
def batch_statistics(module: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Inside the block, every BatchNorm of ``module`` normalises with the batch statistics
    and leaves its running statistics (and their counter) untouched."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.training, m.track_running_stats) for m in norms]
    if enabled:
        for m in norms:
            m.training, m.track_running_stats = True, False
    try:
        yield
    finally:
        for m, (training, track) in zip(norms, saved):
            m.training, m.track_running_stats = training, track


# ----------------------------------------------------------------------------- the regularizer


class FeatureMapRegularization(nn.Module):
    """DELTA's behavioural regulariser Ω, the mean over the batch of

    .. math:: \\sum_l \\sum_c w_{l,c}\\,\\lVert FM^t_{l,c} - \\mathrm{sg}(FM^s_{l,c})\\rVert^2
              / (H_l W_l)

    Args:
        channel_weights: one non-negative tensor ``(C_l,)`` per layer (kept as buffers; replace
            them with :meth:`set_weights`). All ones: feature-map L2 without attention.
        area_norm: divide each channel's squared distance by ``H_l·W_l`` (false: the sum over
            pixels, as the official code's feature-map L2 ablation).

    Inputs: ``source_maps`` and ``target_maps``, lists of ``(B, C_l, H_l, W_l)`` tensors, one per
    layer in the order of the weights. No gradient flows into ``source_maps``.

    Shape: ``forward`` → a scalar; :meth:`distances` → ``(B, L)``, the weighted distance of
    every example and layer; :meth:`spatial` → one ``(B, H_l, W_l)`` map per layer.
    """

    def __init__(self, channel_weights: Sequence[torch.Tensor], area_norm: bool = True):
        super().__init__()
        self.area_norm = area_norm
        self.num_layers = len(channel_weights)
        if self.num_layers == 0:
            raise ValueError("channel_weights must hold one tensor per regularised layer")
        for i, w in enumerate(channel_weights):
            self.register_buffer(f"weight_{i}", torch.empty(len(w)))
        self.set_weights(channel_weights)

    @property
    def channel_weights(self) -> list[torch.Tensor]:
        return [getattr(self, f"weight_{i}") for i in range(self.num_layers)]

    def set_weights(self, channel_weights: Sequence[torch.Tensor]) -> None:
        """Copy in new channel weights (same number of layers and channels, ≥ 0, finite)."""
        if len(channel_weights) != self.num_layers:
            raise ValueError(f"expected weights for {self.num_layers} layers, "
                             f"got {len(channel_weights)}")
        for i, (old, new) in enumerate(zip(self.channel_weights, channel_weights)):
            new = torch.as_tensor(new, dtype=old.dtype)
            if new.shape != old.shape:
                raise ValueError(f"layer {i}: expected {tuple(old.shape)} channel weights, "
                                 f"got {tuple(new.shape)}")
            if not torch.isfinite(new).all() or (new < 0).any():
                raise ValueError(f"layer {i}: channel weights must be finite and ≥ 0")
            old.copy_(new)

    def _check(self, source_maps: Sequence[torch.Tensor],
               target_maps: Sequence[torch.Tensor]) -> None:
        if not len(source_maps) == len(target_maps) == self.num_layers:
            raise ValueError(f"expected {self.num_layers} source and target maps, got "
                             f"{len(source_maps)} and {len(target_maps)}")
        for i, (s, t, w) in enumerate(zip(source_maps, target_maps, self.channel_weights)):
            if s.shape != t.shape or s.dim() != 4 or s.shape[1] != len(w):
                raise ValueError(f"layer {i}: source {tuple(s.shape)} and target "
                                 f"{tuple(t.shape)} maps must both be (B, {len(w)}, H, W)")

    def distances(self, source_maps: Sequence[torch.Tensor],
                  target_maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """``(B, L)``: ``Σ_c w_{l,c} ‖FM^t_{l,c} − sg(FM^s_{l,c})‖² / (H_l W_l)`` per example
        (without the division when ``area_norm`` is false)."""
        self._check(source_maps, target_maps)
        per_layer = []
        reduce = torch.mean if self.area_norm else torch.sum
        for s, t, w in zip(source_maps, target_maps, self.channel_weights):
            diff = t - s.detach()
            per_layer.append(reduce(diff * diff, dim=(2, 3)) @ w)  # d·d: faster than d²
        return torch.stack(per_layer, dim=1)

    def forward(self, source_maps: Sequence[torch.Tensor],
                target_maps: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.distances(source_maps, target_maps).sum(dim=1).mean()

    @torch.no_grad()
    def spatial(self, source_maps: Sequence[torch.Tensor], target_maps: Sequence[torch.Tensor],
                *, weighted: bool = True) -> list[torch.Tensor]:
        """Where the maps disagree: ``Σ_c w_{l,c} (FM^t_{l,c} − FM^s_{l,c})²`` at every pixel,
        one ``(B, H_l, W_l)`` map per layer (``weighted=False``: every ``w`` is 1). The
        spatial mean of a map is the layer's term of :meth:`distances`."""
        self._check(source_maps, target_maps)
        return [torch.einsum("bchw,c->bhw", (t - s).pow(2),
                             w if weighted else torch.ones_like(w))
                for s, t, w in zip(source_maps, target_maps, self.channel_weights)]


# ----------------------------------------------------------------------------- channel attention


def check_blocks(backbone: Backbone, blocks: Sequence[int] | None = None) -> list[int]:
    """The block indices whose outputs are regularised: ``backbone.stage_ends`` by default."""
    if not all(hasattr(backbone, a) for a in ("stem", "blocks", "stage_ends", "block_channels")):
        raise TypeError("DELTA needs a tlgates Backbone (stem, blocks, stage_ends, "
                        f"block_channels), got {type(backbone).__name__}")
    blocks = list(backbone.stage_ends if blocks is None else blocks)
    n = len(backbone.blocks)
    if not blocks or any(not 0 <= b < n for b in blocks) or len(set(blocks)) != len(blocks):
        raise ValueError(f"blocks must be distinct indices of the backbone's {n} blocks "
                         f"(0 to {n - 1}), got {blocks}")
    return sorted(blocks)


#: Where the regularised feature maps are read: a block's output, or the output of the last
#: convolution of its residual branch (before its BatchNorm and the residual add).
FEATURE_POINTS = ("block", "conv")


def regularized_module(backbone: Backbone, block: int, point: str = "block") -> nn.Module:
    """The module whose output is the feature map of ``block`` at ``point``."""
    if point not in FEATURE_POINTS:
        raise ValueError(f"feature_point must be one of {', '.join(FEATURE_POINTS)}, "
                         f"got {point!r}")
    module = backbone.blocks[block]
    if point == "block":
        return module
    conv = getattr(module, "conv3", None) or getattr(module, "conv2", None)
    if not isinstance(conv, nn.Conv2d):
        raise ValueError(f"feature_point='conv' needs residual blocks with conv2 (or conv3) "
                         f"as their last convolution; block {block} is {type(module).__name__}")
    return conv


@contextmanager
def captured_outputs(modules: Sequence[nn.Module]) -> Iterator[list[torch.Tensor]]:
    """Inside the block, the list holds the latest output of each module (hooks removed
    after)."""
    outputs: list[torch.Tensor] = [torch.empty(0)] * len(modules)

    def hook(i: int) -> Any:
        return lambda module, inputs, out: outputs.__setitem__(i, out)

    handles = [m.register_forward_hook(hook(i)) for i, m in enumerate(modules)]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


def stage_maps(backbone: Backbone, x: torch.Tensor, blocks: Sequence[int],
               point: str = "block") -> list[torch.Tensor]:
    """The feature maps of ``backbone.blocks[b]`` at ``point`` for ``b`` in ``blocks``; stops
    after the last of them."""
    modules = [regularized_module(backbone, b, point) for b in blocks]
    with captured_outputs(modules) as maps:
        h = backbone.stem(x)
        for block in backbone.blocks[: max(blocks) + 1]:
            h = block(h)
    return list(maps)


def _run_from(backbone: Backbone, start: int, h: torch.Tensor) -> torch.Tensor:
    """Pooled features from the input ``h`` of block ``start`` (the rest of the network)."""
    for block in backbone.blocks[start:]:
        h = block(h)
    return Backbone.pool(h)


def _batches(train: Dataset, batch_size: int, max_examples: int | None,
             device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    seen = 0
    for x, y in DataLoader(train, batch_size=batch_size):
        if max_examples is not None:
            x, y = x[: max_examples - seen], y[: max_examples - seen]
        if len(x) == 0:
            return
        seen += len(x)
        yield x.to(device), y.to(device)


@torch.no_grad()
def _features(backbone: Backbone, batches: Iterator[tuple[torch.Tensor, torch.Tensor]]
              ) -> tuple[torch.Tensor, torch.Tensor]:
    feats, labels = zip(*[(backbone(x), y) for x, y in batches])
    return torch.cat(feats), torch.cat(labels)


def fit_probe(features: torch.Tensor, y: torch.Tensor, num_classes: int, *,
              decay: float = 1e-3, max_iter: int = 200) -> nn.Linear:
    """A linear head on frozen features: ``min CE(W f + b, y) + decay/2·‖W‖²`` by L-BFGS.

    Starts from zero (no random numbers are drawn), so the result is deterministic.
    """
    head = nn.utils.skip_init(nn.Linear, features.shape[1], num_classes,
                              device=features.device, dtype=features.dtype)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    optimizer = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=max_iter,
                                  history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(head(features), y) + 0.5 * decay * head.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return head.requires_grad_(False)


def _zeroed(out: torch.Tensor, channels: torch.Tensor) -> torch.Tensor:
    """Stacked copies ``(K·B, C, H, W)`` of a batch with channel ``channels[k]`` zeroed in
    copy ``k``."""
    out = out.view(len(channels), -1, *out.shape[1:]).clone()
    out[torch.arange(len(channels), device=out.device), :, channels] = 0
    return out.flatten(0, 1)


@torch.no_grad()
def channel_loss_rises(backbone: Backbone, head: nn.Module, train: Dataset,
                       blocks: Sequence[int], *, point: str = "block", batch_size: int = 256,
                       max_examples: int | None = None,
                       chunk_elements: int = 2 ** 20) -> tuple[list[torch.Tensor], float]:
    """Mean rise of ``CE(head(backbone(x)), y)`` when one channel of a stage's feature map
    (at ``point``, see :func:`regularized_module`) is zeroed.

    The fast recipe: one pass keeps the output of every block in ``blocks`` (or, at
    ``"conv"``, its input); for block ``b``, stacked copies of it, each with one channel
    zeroed, run through the rest of the network only (at ``"conv"``: block ``b`` itself, a
    hook zeroing the channel of its last convolution, then the rest), as many channels per pass
    as ``chunk_elements`` allows (the copies' total number of elements). BatchNorm must be in
    eval mode (per-example computation).

    Returns the rises (one float64 ``(C_l,)`` tensor per block, on the CPU) and the base loss.
    """
    device = next(backbone.parameters()).device
    sums = [torch.zeros(backbone.block_channels[b], dtype=torch.float64) for b in blocks]
    total, base_sum = 0, 0.0
    for x, y in _batches(train, batch_size, max_examples, device):
        h, kept = backbone.stem(x), []
        for i, block in enumerate(backbone.blocks):
            if i in blocks and point == "conv":
                kept.append(h)
            h = block(h)
            if i in blocks and point == "block":
                kept.append(h)
        base = F.cross_entropy(head(Backbone.pool(h)), y, reduction="none").double()
        for sum_l, b, fm in zip(sums, blocks, kept):
            channels = len(sum_l)
            per_pass = max(1, min(channels, chunk_elements // fm.numel()))
            for c0 in range(0, channels, per_pass):
                cs = torch.arange(c0, min(c0 + per_pass, channels), device=device)
                copies = fm.unsqueeze(0).expand(len(cs), *fm.shape).flatten(0, 1)
                if point == "block":
                    logits = head(_run_from(backbone, b + 1, _zeroed(copies, cs)))
                else:
                    handle = regularized_module(backbone, b, point).register_forward_hook(
                        lambda module, inputs, out, cs=cs: _zeroed(out, cs))
                    try:
                        logits = head(_run_from(backbone, b, copies))
                    finally:
                        handle.remove()
                loss = F.cross_entropy(logits, y.repeat(len(cs)), reduction="none")
                sum_l[c0:c0 + len(cs)] += (loss.double().view(len(cs), -1) - base).sum(1).cpu()
        total += len(x)
        base_sum += base.sum().item()
    if total == 0:
        raise ValueError("the training set is empty: no channel attention can be computed")
    return [s / total for s in sums], base_sum / total


@torch.no_grad()
def channel_loss_rises_naive(backbone: Backbone, head: nn.Module, train: Dataset,
                             blocks: Sequence[int], *, point: str = "block",
                             batch_size: int = 256, max_examples: int | None = None
                             ) -> tuple[list[torch.Tensor], float]:
    """The same as :func:`channel_loss_rises` the naive way: for every channel of every block
    in ``blocks``, a forward hook zeroes it at ``point`` and the whole network runs again on
    the batch."""
    device = next(backbone.parameters()).device
    sums = [torch.zeros(backbone.block_channels[b], dtype=torch.float64) for b in blocks]
    total, base_sum = 0, 0.0
    for x, y in _batches(train, batch_size, max_examples, device):
        base = F.cross_entropy(head(backbone(x)), y, reduction="none").double()
        for sum_l, b in zip(sums, blocks):
            for c in range(len(sum_l)):
                def zero_channel(module: nn.Module, inputs: Any, out: torch.Tensor,
                                 c: int = c) -> torch.Tensor:
                    out = out.clone()
                    out[:, c] = 0
                    return out

                module = regularized_module(backbone, b, point)
                handle = module.register_forward_hook(zero_channel)
                try:
                    loss = F.cross_entropy(head(backbone(x)), y, reduction="none")
                finally:
                    handle.remove()
                sum_l[c] += (loss.double() - base).sum().item()
        total += len(x)
        base_sum += base.sum().item()
    if total == 0:
        raise ValueError("the training set is empty: no channel attention can be computed")
    return [s / total for s in sums], base_sum / total


def attention_weights(rises: torch.Tensor, temperature: float = 5.0) -> torch.Tensor:
    """``C·softmax(z / T)`` with ``z`` the standardised loss rises of one layer's C channels.

    The weights are positive and sum to C; a layer whose rises are all equal gets all ones.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    rises = rises.double()
    z = (rises - rises.mean()) / rises.std(unbiased=False).clamp_min(1e-12)
    return (len(rises) * torch.softmax(z / temperature, dim=0)).float()


@dataclass
class ChannelAttention:
    """The loss rise of every channel of every regularised block, and the weights from them.

    Attributes:
        blocks: the block indices (``stage_ends`` by default).
        rises: one float64 ``(C_l,)`` tensor per block: mean loss rise when the channel is
            zeroed (can be negative: a channel that hurt the head).
        base_loss: the head's mean loss on the training set with no channel zeroed.
        examples: how many training examples were used.
        seconds: computing time (0 when loaded from the cache).
        from_cache: loaded from ``data_dir()``.
    """

    blocks: list[int]
    rises: list[torch.Tensor]
    base_loss: float
    examples: int
    seconds: float = 0.0
    from_cache: bool = False

    def weights(self, temperature: float = 5.0) -> list[torch.Tensor]:
        """``w_{l,c} = C_l·softmax(z_{l,c} / T)`` per block (see :func:`attention_weights`)."""
        return [attention_weights(r, temperature) for r in self.rises]


def _update_hash(digest: Any, tensor: torch.Tensor) -> None:
    digest.update(str(tensor.dtype).encode() + str(tuple(tensor.shape)).encode())
    digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())


def attention_key(backbone: Backbone, train: Dataset, num_classes: int, blocks: Sequence[int],
                  *, probe_decay: float, max_examples: int | None,
                  point: str = "block") -> str:
    """A hash of everything the attention depends on: the source weights (and BatchNorm
    statistics), the training examples and labels, and the settings."""
    settings = (CACHE_VERSION, num_classes, list(blocks), probe_decay, max_examples)
    if point != "block":  # the keys of block-point attentions predate the setting
        settings += (point,)
    digest = hashlib.sha1(repr(settings).encode())
    for name, tensor in sorted(backbone.state_dict().items()):
        digest.update(name.encode())
        _update_hash(digest, tensor)
    if isinstance(train, TensorDataset) and max_examples is None:
        for tensor in train.tensors:
            _update_hash(digest, tensor)
    else:
        for x, y in _batches(train, 256, max_examples, torch.device("cpu")):
            _update_hash(digest, x)
            _update_hash(digest, y)
    return digest.hexdigest()[:16]


def channel_attention(backbone: Backbone, train: Dataset, num_classes: int, *,
                      blocks: Sequence[int] | None = None, point: str = "block",
                      probe_decay: float = 1e-3, max_examples: int | None = None,
                      cache: bool = True, fast: bool = True) -> ChannelAttention:
    """DELTA's channel attention of the source ``backbone`` for the target task ``train``.

    Fits a head on the frozen pooled features (:func:`fit_probe`), then measures each channel's
    loss rise (:func:`channel_loss_rises`; ``fast=False``: the naive recipe). The backbone runs
    in eval mode (its mode is restored after) on its own device, without augmentation.

    Args:
        backbone: the source network (not modified).
        train: the target training set (``(x, y)`` pairs).
        num_classes: classes of the target task.
        blocks: the blocks to weigh (default ``stage_ends``).
        point: where in each block a channel is zeroed (:data:`FEATURE_POINTS`).
        probe_decay: L2 strength on the head's weights (keeps its loss off zero on few shots).
        max_examples: use only the first examples (for large data sets); default all.
        cache: load from / save to ``data_dir()/delta-attention-<key>.pt``, where the key hashes
            the source weights, the training set and these settings. A corrupt file is
            recomputed with a warning.
    """
    blocks = check_blocks(backbone, blocks)
    for b in blocks:
        regularized_module(backbone, b, point)  # checks the point
    if probe_decay < 0:
        raise ValueError(f"probe_decay must be ≥ 0, got {probe_decay}")
    if max_examples is not None and max_examples < 1:
        raise ValueError(f"max_examples must be ≥ 1 or None, got {max_examples}")
    path = key = None
    if cache:
        key = attention_key(backbone, train, num_classes, blocks, probe_decay=probe_decay,
                            max_examples=max_examples, point=point)
        path = data_dir() / f"delta-attention-{key}.pt"
        def matches(saved: dict[str, Any]) -> bool:
            rises = saved["rises"]
            return saved["key"] == key and saved["blocks"] == blocks and len(rises) == len(
                blocks) and all(r.shape == (backbone.block_channels[b],)
                                and bool(torch.isfinite(r).all()) for r, b in zip(rises, blocks))

        saved = load_cache(path, version=CACHE_VERSION, what="channel attention",
                           matches=matches, rebuild="computing it again (seconds)")
        if saved is not None:
            return ChannelAttention(blocks, [r.double() for r in saved["rises"]],
                                    float(saved["base_loss"]), int(saved["examples"]), 0.0,
                                    from_cache=True)
    was_training = backbone.training
    backbone.eval()
    device = next(backbone.parameters()).device
    try:
        start = time.perf_counter()
        feats, labels = _features(backbone, _batches(train, 256, max_examples, device))
        if labels.numel() and not 0 <= int(labels.min()) <= int(labels.max()) < num_classes:
            raise ValueError(f"labels must lie in [0, {num_classes}), got "
                             f"[{int(labels.min())}, {int(labels.max())}]")
        head = fit_probe(feats, labels, num_classes, decay=probe_decay)
        rises_fn = channel_loss_rises if fast else channel_loss_rises_naive
        rises, base = rises_fn(backbone, head, train, blocks, point=point,
                               max_examples=max_examples)
        result = ChannelAttention(blocks, rises, base, len(labels), time.perf_counter() - start)
    finally:
        backbone.train(was_training)
    if path is not None:
        save_cache(path, {"key": key, "blocks": blocks, "rises": rises, "base_loss": base,
                          "examples": result.examples}, version=CACHE_VERSION)
    return result


# ----------------------------------------------------------------------------- the method


@dataclass(frozen=True)
class FeatureMapL2Config(MethodConfig):
    """The hyperparameters of feature-map L2 (``fml2``): DELTA's, without the attention."""

    alpha: float = hyperparameter(0.01, "strength α of the feature-map term α·Ω (Ω a mean over "
                                        "the batch)", low=0.0, high=100.0)
    beta: float = hyperparameter(0.01, "strength β of β/2·‖W_head‖²", low=0.0, high=100.0)
    area_norm: bool = hyperparameter(True, "divide each channel's squared distance by H·W "
                                           "(false: the official ablation's sum over pixels)")
    source_bn: str = hyperparameter(
        "batch", "BatchNorm of the frozen source copy in training: batch statistics like the "
                 "target's (running statistics kept), or the source's (eval)",
        choices=FROZEN_BATCHNORM, paper="eval", origin="official code",
        why="both networks normalise alike, so Ω is 0 before the first step")
    feature_point: str = hyperparameter(
        "block", "where the maps are read: block output, or the last convolution's output "
                 "before its BatchNorm and the residual add", choices=FEATURE_POINTS,
        paper="conv", origin="official code",
        why="the block output is what the next stage reads, and what the backbone contract "
            "gives every architecture")
    batch_reduction: str = hyperparameter(
        "mean", "Ω over the batch: mean, or the official 0.5·sum (α then depends on the batch "
                "size)", choices=BATCH_REDUCTIONS, paper="sum", origin="official code",
        why="a mean like the cross-entropy's: α does not depend on the batch size "
            "(α_ours = α_official·B/2)")
    head_bias: bool = hyperparameter(False, "include the head's bias in the head penalty",
                                     paper=True, origin="official code",
                                     why="the paper's equation names the weights")


@dataclass(frozen=True)
class DELTAConfig(FeatureMapL2Config):
    """DELTA's hyperparameters: feature-map L2's and the attention's temperature T."""

    temperature: float = hyperparameter(5.0, "attention temperature T in C·softmax(z/T)",
                                        low=0.01, high=1000.0)


class DELTA(FineTune):
    """Fine-tuning with ``α·Ω`` (feature maps near the source's) and ``β/2·‖W_head‖²``.

    Args:
        source: the pre-trained backbone (copied twice: a trainable and a frozen copy).
        num_classes: classes of the target task.
        attention: weigh channels by attention (DELTA) or all by 1 (feature-map L2).
        blocks: the regularised blocks (default ``source.stage_ends``).
        backbone_lr_scale: backbone learning rate as a fraction of the head's.
        **hyperparameters: :class:`DELTAConfig` (α = 0: fine-tuning plus the head term, and no
            source pass is run; a large T makes all weights near 1).

    The attention is computed (or loaded from the cache) by :meth:`on_fit_start` from the
    training set. ``forward`` is plain fine-tuning's (``head(backbone(x))``): the source network
    runs only for the loss and for :meth:`distances`.
    """

    def __init__(self, source: Backbone, num_classes: int, *, attention: bool = True,
                 blocks: Sequence[int] | None = None, backbone_lr_scale: float = 1.0,
                 **hyperparameters: Any):
        hp = DELTAConfig(**hyperparameters)
        blocks = check_blocks(source, blocks)
        for b in blocks:
            regularized_module(source, b, hp.feature_point)  # checks the point fits the blocks
        super().__init__(source, num_classes, backbone_lr_scale)  # same RNG use as finetune
        # The reference never changes: in eval mode it keeps the source statistics, and with
        # "batch" :meth:`source_maps` normalises with batch statistics without tracking them.
        self.source = Frozen(copy.deepcopy(source), "eval")
        self.source_bn, self.feature_point = hp.source_bn, hp.feature_point
        self.batch_reduction, self.head_bias = hp.batch_reduction, hp.head_bias
        self.alpha, self.beta, self.temperature = hp.alpha, hp.beta, hp.temperature
        self.use_attention, self.blocks = attention, blocks
        self.regularizer = FeatureMapRegularization(
            [torch.ones(source.block_channels[b]) for b in blocks], hp.area_norm)
        self.attention: ChannelAttention | None = None
        self._omega_sum: torch.Tensor | None = None
        self._omega_steps = 0

    def set_attention(self, attention: ChannelAttention) -> None:
        """Weigh the channels by ``attention`` at this model's temperature."""
        if attention.blocks != self.blocks:
            raise ValueError(f"the attention is for blocks {attention.blocks}, "
                             f"this model regularises {self.blocks}")
        self.attention = attention
        self.regularizer.set_weights(attention.weights(self.temperature))

    def on_fit_start(self, train: Any) -> None:
        """Compute (or load) the channel attention for this training set."""
        if self.use_attention:
            self.set_attention(channel_attention(self.source.module, train,
                                                 self.head.out_features, blocks=self.blocks,
                                                 point=self.feature_point))

    def source_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The frozen source network's maps at the regularised blocks (no gradient). In
        training with ``source_bn="batch"`` its BatchNorm uses the batch statistics and leaves
        its running statistics as they are."""
        batch_stats = self.training and self.source_bn == "batch"
        with torch.no_grad(), batch_statistics(self.source.module, batch_stats):
            return stage_maps(self.source.module, x, self.blocks, self.feature_point)

    def target_maps(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The fine-tuned network's maps at the regularised blocks and its pooled features,
        from one pass."""
        if self.feature_point == "block":
            maps = self.backbone.feature_maps(x)
            return [maps[b] for b in self.blocks], Backbone.pool(maps[-1])
        modules = [regularized_module(self.backbone, b, self.feature_point)
                   for b in self.blocks]
        with captured_outputs(modules) as maps:
            features = self.backbone(x)
        return list(maps), features

    @torch.no_grad()
    def distances(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, L)``: each example's weighted distance to the source, per regularised layer,
        both networks in eval mode (Ω is their sum over layers, averaged over examples)."""
        was_training = self.training
        self.eval()
        try:
            maps = stage_maps(self.backbone, x, self.blocks, self.feature_point)
            return self.regularizer.distances(self.source_maps(x), maps)
        finally:
            self.train(was_training)

    def loss_terms(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """``ce``, ``delta = α·Ω`` (when α > 0) and ``head_l2 = β/2·‖W_head‖²``."""
        maps, features = self.target_maps(x)
        terms = {"ce": F.cross_entropy(self.head(features), y)}
        if self.alpha > 0:
            distances = self.regularizer.distances(self.source_maps(x), maps)
            per_layer = distances.mean(0)  # Ω's record is per example in either reduction
            self._omega_sum = per_layer.detach() + (
                self._omega_sum if self._omega_sum is not None else 0)
            self._omega_steps += 1
            scale = 1.0 if self.batch_reduction == "mean" else 0.5 * len(x)
            terms["delta"] = self.alpha * scale * per_layer.sum()
        head = self.head.weight.pow(2).sum()
        if self.head_bias:
            head = head + self.head.bias.pow(2).sum()
        terms["head_l2"] = 0.5 * self.beta * head
        return terms

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        self._omega_sum, self._omega_steps = None, 0

    def training_record(self) -> dict[str, Any]:
        """Ω (without α) averaged over the epoch's training steps: ``omega`` and, per layer,
        ``omega_layers``. Nothing when α = 0 (no source pass is run then)."""
        if self._omega_sum is None:
            return {}
        layers = (self._omega_sum / self._omega_steps).tolist()
        return {"omega": sum(layers), "omega_layers": layers}


_ATTENTION_DEVIATIONS = [
    Deviation("attention's head", "L-BFGS logistic regression on all training examples",
              "the new head trained 10 epochs with SGD", "deterministic and exact on few shots",
              "official code"),
    Deviation("attention's examples", "the whole training set", "4 batches",
              "the K-shot training sets are small", "official code"),
]
_SCHEDULE = Deviation("training schedule", "the course's loop: SGD, one-cycle to lr 0.05, 30 "
                      "epochs", "SGD lr 0.01, exponential decay, 6000 iterations, batch 64",
                      "one loop for every method; the official schedule is for full-size data",
                      "official code")


@register("delta", "DELTA: feature maps kept near the source's, channels weighted by attention",
          DELTAConfig, paper="arXiv 1901.09229",
          deviations=[*_ATTENTION_DEVIATIONS, _SCHEDULE])
def build_delta(source: Backbone, num_classes: int, **params: Any) -> DELTA:
    return DELTA(source, num_classes, **params)


@register("fml2", "feature-map L2: DELTA without attention (every channel weight 1)",
          FeatureMapL2Config, paper="arXiv 1901.09229", deviations=[
              Deviation("area_norm", "True: Σ_c ‖·‖² / (H·W), DELTA's scale",
                        "False: no 1/(H·W)", "the official ablation's α is not published; with "
                        "DELTA's α = 0.01 and the official sum over the batch the loss became "
                        "NaN in the first epoch here, so the paper recipe keeps 1/(H·W)",
                        "official code", switch="area_norm"),
              _SCHEDULE])
def build_fml2(source: Backbone, num_classes: int, **params: Any) -> DELTA:
    return DELTA(source, num_classes, attention=False, **params)
