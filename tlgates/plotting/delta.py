"""Views of DELTA (arXiv 1901.09229): channel attention, where feature maps move, Ω at work.

The inputs are plain objects of :mod:`tlgates.methods.delta`: a :class:`ChannelAttention`
(loss rises and weights per channel), fine-tuned backbones next to the frozen source, the
``omega`` records of a :class:`~tlgates.train.History`, and the long tables of
:func:`tlgates.experiment.compare`. Every function returns a matplotlib ``Figure`` made without
pyplot.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import seaborn as sns
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from tlgates.backbones import Backbone
from tlgates.methods.delta import DELTA, ChannelAttention, FeatureMapRegularization, stage_maps
from tlgates.train import History
from tlgates.methods.base import per_class_mean
from tlgates.plotting import draw_image

if TYPE_CHECKING:
    from tlgates.experiment import RunResult


def _layer_names(blocks: Sequence[int]) -> list[str]:
    return [f"stage {i + 1} (block {b})" for i, b in enumerate(blocks)]


def plot_channel_attention(attention: ChannelAttention, temperature: float = 5.0, *,
                           title: str = "") -> Figure:
    """Per layer (columns): the channel weights sorted from largest (top) and, below, the loss
    rise when each of those channels is zeroed (the numbers the weights come from)."""
    weights = attention.weights(temperature)
    n = len(weights)
    fig = Figure(figsize=(3.1 * n, 4.6))
    axes = fig.subplots(2, n, squeeze=False)
    for col, (w, rise, name) in enumerate(zip(weights, attention.rises,
                                              _layer_names(attention.blocks))):
        order = torch.argsort(w, descending=True)
        rank = np.arange(len(w))
        ax_w, ax_r = axes[0, col], axes[1, col]
        ax_w.bar(rank, w[order].numpy(), width=1.0, color="tab:blue")
        ax_w.axhline(1.0, color="0.3", ls="--", lw=1, label="no attention (all 1)")
        ax_w.set(title=f"{name}, {len(w)} channels", xlabel="channel (sorted by weight)",
                 ylabel="weight $w_{l,c}$" if col == 0 else "")
        ax_r.bar(rank, rise[order].numpy(), width=1.0, color="tab:orange")
        ax_r.set(xlabel="channel (same order)",
                 ylabel="loss rise when zeroed" if col == 0 else "")
        ax_r.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(title or f"Channel attention ($T$ = {temperature:g}; each layer's weights sum "
                 f"to its channel count; head loss {attention.base_loss:.3f} with no channel "
                 "zeroed)", fontsize=10)
    fig.tight_layout()
    return fig


@torch.no_grad()
def discrepancy_maps(backbone: Backbone, source: Backbone, x: torch.Tensor,
                     regularizer: FeatureMapRegularization, blocks: Sequence[int], *,
                     weighted: bool = True) -> list[torch.Tensor]:
    """Per layer, ``(B, H_l, W_l)``: ``Σ_c w_{l,c}(FM^t_{l,c} − FM^s_{l,c})²`` at each pixel,
    both networks in eval mode (``weighted=False``: every ``w`` is 1)."""
    modes = backbone.training, source.training
    backbone.eval(), source.eval()
    try:
        target, src = stage_maps(backbone, x, blocks), stage_maps(source, x, blocks)
    finally:
        backbone.train(modes[0]), source.train(modes[1])
    return regularizer.spatial(src, target, weighted=weighted)


def plot_attention_maps(models: Mapping[str, Backbone], source: Backbone, image: torch.Tensor,
                        regularizer: FeatureMapRegularization, blocks: Sequence[int], *,
                        title: str = "") -> Figure:
    """Where each fine-tuned network's feature maps moved away from the source's, on one image.

    Rows: for each model, the squared difference summed over channels weighted by the channel
    attention, then unweighted. Columns: the image, then one layer each, upsampled and laid
    over the image. One colour scale per layer and row kind, shared by the models, so a dimmer
    map moved less; the number is the layer's distance (the map's mean).
    """
    x = image.unsqueeze(0)
    rows = []
    for label, backbone in models.items():
        for weighted in (True, False):
            maps = discrepancy_maps(backbone, source, x, regularizer, blocks, weighted=weighted)
            rows.append((label, weighted, [m[0].cpu() for m in maps]))
    n_layers = len(blocks)
    scale = {(weighted, layer): max(float(r[2][layer].max()) for r in rows if r[1] == weighted)
             or 1.0 for weighted in (True, False) for layer in range(n_layers)}
    fig = Figure(figsize=(1.9 * (n_layers + 1), 1.95 * len(rows) + 0.5))
    axes = fig.subplots(len(rows), n_layers + 1, squeeze=False)
    size = image.shape[-2:]
    names = _layer_names(blocks)
    for row, (label, weighted, maps) in enumerate(rows):
        draw_image(axes[row, 0], image)
        axes[row, 0].set_title(f"{label}\n{'attention-weighted' if weighted else 'unweighted'}",
                               fontsize=8)
        for layer, m in enumerate(maps):
            ax = axes[row, layer + 1]
            up = F.interpolate(m[None, None], size=size, mode="bilinear", align_corners=False)
            draw_image(ax, image)
            ax.imshow(up[0, 0].numpy(), cmap="inferno", alpha=0.65, vmin=0,
                      vmax=scale[(weighted, layer)])
            top = names[layer] + "\n" if row == 0 else ""
            ax.set_title(f"{top}distance {m.mean():.3g}", fontsize=8)
    fig.suptitle(title or "Where the feature maps moved away from the source network "
                 "(bright: large squared difference)", fontsize=10)
    fig.tight_layout()
    return fig


@torch.no_grad()
def feature_drift(models: Mapping[str, Backbone], source: Backbone, x: torch.Tensor,
                  blocks: Sequence[int], *, batch_size: int = 256) -> pd.DataFrame:
    """Mean squared distance per channel and pixel between each model's and the source's
    feature maps at ``blocks`` (eval mode, no attention), one row per model and layer."""
    channels = [source.block_channels[b] for b in blocks]
    uniform = FeatureMapRegularization([torch.ones(c) for c in channels]).to(x.device)
    rows = []
    for label, backbone in models.items():
        sums, count = [0.0] * len(blocks), 0
        for i in range(0, len(x), batch_size):
            maps = discrepancy_maps(backbone, source, x[i:i + batch_size], uniform, blocks,
                                    weighted=False)
            sums = [total + m.mean(dim=(1, 2)).sum().item() for total, m in zip(sums, maps)]
            count += len(maps[0])
        rows += [{"model": label, "layer": name, "distance per channel": total / count / c}
                 for name, total, c in zip(_layer_names(blocks), sums, channels)]
    return pd.DataFrame(rows)


def plot_feature_drift(frame: pd.DataFrame, *, title: str = "") -> Figure:
    """Grouped bars of :func:`feature_drift`: how far each model's feature maps moved, per
    layer (log scale)."""
    fig = Figure(figsize=(8, 3.4))
    ax = fig.subplots()
    sns.barplot(data=frame, x="layer", y="distance per channel", hue="model", ax=ax)
    ax.set(yscale="log", xlabel="", ylabel="mean squared difference\nper channel and pixel",
           title=title or "How far the fine-tuned feature maps moved from the source's "
           "(test images)")
    ax.legend(fontsize=8, ncols=2)
    fig.tight_layout()
    return fig


def plot_distance_by_class(distances: torch.Tensor, y: torch.Tensor,
                           class_names: Sequence[str], blocks: Sequence[int], *,
                           title: str = "") -> Figure:
    """Classes × layers heatmap of the mean weighted distance to the source (``distances``:
    ``(N, L)`` from :meth:`DELTA.distances`), each layer scaled by its mean over classes."""
    num_classes = len(class_names)
    means = per_class_mean(distances, y, num_classes)
    relative = (means / means.mean(dim=0).clamp_min(1e-12)).numpy()
    fig = Figure(figsize=(5.5, 0.3 * num_classes + 1.6))
    ax = fig.subplots()
    sns.heatmap(relative, ax=ax, cmap="magma", annot=True, fmt=".2f", annot_kws={"size": 7},
                xticklabels=_layer_names(blocks), yticklabels=list(class_names),
                cbar_kws={"label": "distance / layer's mean"})
    ax.set(xlabel="", ylabel="true class",
           title=title or "Which classes' feature maps moved most (test images)")
    ax.tick_params(axis="y", rotation=0)
    ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    return fig


def plot_omega_history(histories: Mapping[str, History], *, title: str = "") -> Figure:
    """Left: Ω (without α) over the training epochs, one line per run. Right: the first
    run's Ω split by layer (stacked)."""
    fig = Figure(figsize=(9, 3.0))
    ax_total, ax_layers = fig.subplots(1, 2)
    first = None
    for label, history in histories.items():
        frame = history.frame()
        if "omega" not in frame:
            continue
        ax_total.plot(frame["epoch"], frame["omega"], label=label)
        first = first if first is not None else (label, frame)
    ax_total.set(xlabel="epoch", ylabel="Ω (training batches)", title="Ω over training")
    if first is not None:
        label, frame = first
        layers = np.array(frame["omega_layers"].tolist())
        names = [f"stage {i + 1}" for i in range(layers.shape[1])]
        ax_layers.stackplot(frame["epoch"], layers.T, labels=names, alpha=0.8)
        ax_layers.legend(fontsize=8, loc="upper left")
        ax_layers.set(xlabel="epoch", ylabel="Ω per layer (stacked)",
                      title=f"{label}: Ω by layer")
        ax_total.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_alpha_sweep(frame: pd.DataFrame, references: Mapping[str, float] | None = None, *,
                     title: str = "") -> Figure:
    """Test accuracy against α (log scale), mean ± std over seeds and one dot per seed.

    ``frame`` has columns ``alpha``, ``seed``, ``accuracy`` (and optionally ``method`` for
    one line per method); ``references`` are horizontal lines (label → accuracy in [0, 1]).
    """
    data = frame.assign(accuracy=100 * frame["accuracy"])
    hue = "method" if "method" in data else None
    fig = Figure(figsize=(6, 3.6))
    ax = fig.subplots()
    sns.lineplot(data=data, x="alpha", y="accuracy", hue=hue, marker="o", errorbar="sd",
                 err_style="bars", ax=ax)
    sns.scatterplot(data=data, x="alpha", y="accuracy", hue=hue, ax=ax, alpha=0.35, s=18,
                    legend=False)
    for i, (label, value) in enumerate((references or {}).items()):
        ax.axhline(100 * value, ls=("--", ":", "-.")[i % 3], color="0.35", lw=1,
                   label=f"{label} ({100 * value:.1f} %)")
    seeds = data["seed"].nunique()
    ax.set(xscale="log", xlabel="α (log scale)", ylabel="test accuracy (%)",
           title=title or "Accuracy against the strength α of Ω "
           + ("(one seed)" if seeds == 1 else f"(mean ± std over {seeds} seeds)"))
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def dashboard_view(result: RunResult) -> Figure:
    """Dashboard view of a ``delta``/``fml2`` run: the channel weights of the last seed (sorted,
    one line per layer) and Ω per layer over its epochs."""
    model = result.model
    fig = Figure(figsize=(9, 2.9))
    ax_w, ax_o = fig.subplots(1, 2)
    if isinstance(model, DELTA):
        for name, w in zip(_layer_names(model.blocks), model.regularizer.channel_weights):
            w = torch.sort(w.cpu(), descending=True).values
            ax_w.plot(np.linspace(0, 1, len(w)), w.numpy(), label=name)
        ax_w.legend(fontsize=7)
    ax_w.axhline(1.0, color="0.3", ls="--", lw=1)
    ax_w.set(xlabel="channel rank (0 = largest weight)", ylabel="weight $w_{l,c}$",
             title="Channel weights (last seed)")
    frame = result.histories[-1].frame() if result.histories else pd.DataFrame()
    if "omega_layers" in frame:
        layers = np.array(frame["omega_layers"].tolist())
        ax_o.stackplot(frame["epoch"], layers.T, alpha=0.8,
                       labels=[f"stage {i + 1}" for i in range(layers.shape[1])])
        ax_o.legend(fontsize=7, loc="upper left")
    else:
        ax_o.text(0.5, 0.5, "no Ω recorded (α = 0)", ha="center", va="center")
    ax_o.set(xlabel="epoch", ylabel="Ω per layer (stacked)", title="Ω over training")
    fig.suptitle(f"{result.method}: {100 * result.mean:.1f} % test accuracy, "
                 f"{result.shots} labels per class", fontsize=10)
    fig.tight_layout()
    return fig
