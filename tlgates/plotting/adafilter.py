"""Views of what AdaFilter (arXiv 1911.09659) decided: which filters ran fine-tuned, per image.

The inputs are plain tensors from :func:`tlgates.train.evaluate` on an
:class:`~tlgates.methods.adafilter.AdaFilter`: ``evaluation.decisions["gate/<layer>"]`` holds
the binary gates ``(N, filters)`` of each gated convolution (1 = the fine-tuned filter, 0 = the
pre-trained one). Every function returns a matplotlib ``Figure`` made without pyplot.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.axes import Axes
from matplotlib.colors import Colormap, ListedColormap
from matplotlib.figure import Figure

from tlgates.methods.adafilter import AdaFilter, filters_that_vary
from tlgates.train import Evaluation, evaluate
from tlgates.methods.base import per_class_mean
from tlgates.plotting import class_labels, draw_image

if TYPE_CHECKING:
    from torch.utils.data import Dataset

    from tlgates.experiment import RunResult

PATH_COLORS = ListedColormap(["#c9d6e8", "#d95f02"])  # pre-trained (light), fine-tuned (orange)


def layer_gates(evaluation: Evaluation, layer_names: Sequence[str]) -> list[torch.Tensor]:
    """The gates ``(N, filters)`` of each layer, in ``layer_names`` order."""
    return [evaluation.decisions[f"gate/{name}"] for name in layer_names]


def usage_per_example(evaluation: Evaluation, layer_names: Sequence[str]) -> torch.Tensor:
    """Fraction of fine-tuned filters of every example in every layer: ``(N, layers)``."""
    return torch.stack([g.float().mean(dim=1) for g in layer_gates(evaluation, layer_names)], 1)


def usage_table(evaluation: Evaluation, layer_names: Sequence[str]) -> pd.DataFrame:
    """Per layer: filters, fine-tuned fraction (mean over examples and filters), its spread over
    examples, and the fractions of filters that are always fine-tuned, always pre-trained, or
    vary between examples."""
    rows = []
    for name, g in zip(layer_names, layer_gates(evaluation, layer_names)):
        per_example = g.float().mean(dim=1)
        rows.append({"layer": name, "filters": g.shape[1],
                     "fine-tuned": g.float().mean().item(),
                     "std over examples": per_example.std().item() if len(g) > 1 else 0.0,
                     "always fine-tuned": g.amin(dim=0).float().mean().item(),
                     "always pre-trained": (1 - g.amax(dim=0)).float().mean().item(),
                     "vary by example": filters_that_vary(g).float().mean().item()})
    return pd.DataFrame(rows).set_index("layer")


def plot_layer_usage(evaluation: Evaluation, layer_names: Sequence[str], *,
                     title: str = "") -> Figure:
    """Fraction of fine-tuned filters per layer: one dot per example (jittered), the mean as
    a bar; and per layer how many filters always/never/sometimes take the fine-tuned path."""
    usage = usage_per_example(evaluation, layer_names).numpy()
    table = usage_table(evaluation, layer_names)
    fig = Figure(figsize=(11, 3.6))
    ax_use, ax_kind = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.3, 1]})
    x = np.arange(len(layer_names))
    ax_use.bar(x, usage.mean(axis=0), color="#d95f02", alpha=0.35, label="mean")
    rng = np.random.default_rng(0)
    for i in x:
        ax_use.scatter(i + rng.uniform(-0.25, 0.25, len(usage)), usage[:, i], s=4,
                       color="#7f3b08", alpha=0.5, label="one example" if i == 0 else None)
    ax_use.set_xticks(x, layer_names, rotation=60, ha="right", fontsize=8)
    ax_use.set(ylim=(-0.02, 1.02), ylabel="fraction of filters fine-tuned",
               title="Fine-tuned filters per layer and example")
    ax_use.legend(fontsize=8, loc="upper left")
    kinds = table[["always pre-trained", "vary by example", "always fine-tuned"]]
    bottom = np.zeros(len(kinds))
    for column, color in zip(kinds.columns, ("#c9d6e8", "#7570b3", "#d95f02")):
        ax_kind.bar(x, kinds[column], bottom=bottom, color=color, label=column)
        bottom += kinds[column].to_numpy()
    ax_kind.set_xticks(x, layer_names, rotation=60, ha="right", fontsize=8)
    ax_kind.set(ylim=(0, 1), ylabel="fraction of the layer's filters",
                title="Filters: fixed path or chosen per example?")
    ax_kind.legend(fontsize=7, loc="lower left")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_class_usage(evaluation: Evaluation, layer_names: Sequence[str],
                     class_names: Sequence[str] | None = None, *, title: str = "") -> Figure:
    """Classes × layers heatmap of the fraction of fine-tuned filters, and each class's
    deviation from the layer's mean over all examples."""
    usage = usage_per_example(evaluation, layer_names)
    y = evaluation.y
    num_classes = len(class_names) if class_names is not None else int(y.max()) + 1
    names = class_labels(class_names, num_classes)
    means = per_class_mean(usage, y, num_classes).numpy()
    fig = Figure(figsize=(12, 0.32 * num_classes + 2.6))
    ax_abs, ax_rel = fig.subplots(1, 2)
    sns.heatmap(means, ax=ax_abs, cmap="Oranges", vmin=0, vmax=1, annot=False,
                xticklabels=layer_names, yticklabels=names,
                cbar_kws={"label": "fraction fine-tuned"})
    deviation = means - usage.mean(dim=0).numpy()
    bound = max(float(np.abs(deviation).max()), 1e-3)
    sns.heatmap(deviation, ax=ax_rel, cmap="RdBu_r", vmin=-bound, vmax=bound,
                xticklabels=layer_names, yticklabels=names,
                cbar_kws={"label": "class − all examples"})
    ax_abs.set(xlabel="layer", ylabel="true class", title="Fine-tuned filters per class")
    ax_rel.set(xlabel="layer", ylabel="true class",
               title="Per class, relative to all examples")
    for ax in (ax_abs, ax_rel):
        ax.tick_params(axis="x", rotation=60, labelsize=7)
        ax.tick_params(axis="y", rotation=0)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_usage_over_training(history_frame: pd.DataFrame, layer_names: Sequence[str]) -> Figure:
    """Per layer, the fraction of fine-tuned filters (validation set) and the fraction of
    filters whose path varies between examples, epoch by epoch."""
    usage = np.array(history_frame["ft_fraction"].tolist())
    varying = np.array(history_frame["varying_filters"].tolist())
    epochs = history_frame["epoch"].to_numpy()
    fig = Figure(figsize=(11, 3.4))
    ax_use, ax_var = fig.subplots(1, 2)
    colors = sns.color_palette("viridis", len(layer_names))
    for i, name in enumerate(layer_names):
        ax_use.plot(epochs, usage[:, i], color=colors[i], label=name)
        ax_var.plot(epochs, varying[:, i], color=colors[i], label=name)
    ax_use.set(xlabel="epoch", ylabel="fraction of filters fine-tuned", ylim=(-0.02, 1.02),
               title="Fine-tuned filters over training (validation)")
    ax_var.set(xlabel="epoch", ylabel="fraction of filters", ylim=(-0.02, 1.02),
               title="Filters whose path varies between examples")
    ax_var.legend(fontsize=6, ncol=2, loc="upper right", title="layer (first → last)",
                  title_fontsize=7)
    fig.tight_layout()
    return fig


def _filter_grid(evaluation: Evaluation, layer_names: Sequence[str], index: int) -> np.ndarray:
    """Layers × filters (padded with NaN to the widest layer) for example ``index``."""
    gates = layer_gates(evaluation, layer_names)
    grid = np.full((len(gates), max(g.shape[1] for g in gates)), np.nan)
    for row, g in enumerate(gates):
        grid[row, :g.shape[1]] = g[index].float().numpy()
    return grid


def _draw_grid(ax: Axes, grid: np.ndarray, layer_names: Sequence[str], title: str,
               cmap: Colormap = PATH_COLORS) -> None:
    ax.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap=cmap, vmin=0, vmax=1,
              interpolation="nearest")
    ax.set_facecolor("white")
    ax.set_yticks(range(len(layer_names)), layer_names, fontsize=7)
    ax.set(xlabel="filter index", title=title)


def plot_filter_map(evaluation: Evaluation, images: torch.Tensor, index: int,
                    layer_names: Sequence[str],
                    class_names: Sequence[str] | None = None) -> Figure:
    """One image beside its filter map: layers × filters, orange = fine-tuned filter, blue =
    pre-trained filter (white: the layer has fewer filters)."""
    y = int(evaluation.y[index])
    pred = int(evaluation.predictions[index])
    names = class_labels(class_names, evaluation.logits.shape[1])
    label, guess = names[y], names[pred]
    grid = _filter_grid(evaluation, layer_names, index)
    fig = Figure(figsize=(12, 3.4))
    ax_img, ax_map = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 6]})
    draw_image(ax_img, images[index])
    ax_img.set_title(f"image {index}\nclass '{label}', predicted '{guess}'", fontsize=9)
    _draw_grid(ax_map, grid, layer_names,
               f"Filter map: {np.nanmean(grid):.0%} of this image's filters fine-tuned "
               "(orange) — the rest pre-trained (blue)")
    fig.tight_layout()
    return fig


def plot_filter_map_pair(evaluation: Evaluation, images: torch.Tensor, first: int,
                         second: int, layer_names: Sequence[str],
                         class_names: Sequence[str] | None = None) -> Figure:
    """Two images, their filter maps, and where their decisions differ (black), with the
    fraction of filters on the same path per layer."""
    names = class_labels(class_names, evaluation.logits.shape[1])
    grids = [_filter_grid(evaluation, layer_names, i) for i in (first, second)]
    differ = np.where(np.isnan(grids[0]), np.nan, (grids[0] != grids[1]).astype(float))
    same = 1 - np.nanmean(differ, axis=1)
    fig = Figure(figsize=(13, 5.6))
    axes = fig.subplots(2, 3, gridspec_kw={"width_ratios": [1, 6, 6]})
    for row, (i, grid) in enumerate(zip((first, second), grids)):
        label = int(evaluation.y[i])
        draw_image(axes[row, 0], images[i])
        axes[row, 0].set_title(f"image {i}\nclass '{names[label]}'", fontsize=9)
        _draw_grid(axes[row, 1], grid, layer_names, f"filter map of image {i} "
                   "(orange: fine-tuned)")
    axes[1, 2].set_axis_off()
    ax_diff = axes[0, 2]
    _draw_grid(ax_diff, differ, layer_names, "where the two images' decisions differ (black)",
               cmap=ListedColormap(["#eeeeee", "black"]))
    ax_diff.set_yticks(range(len(layer_names)),
                       [f"{n}: {s:.0%} same" for n, s in zip(layer_names, same)], fontsize=7)
    agree = 1 - np.nanmean(differ)
    same_class = int(evaluation.y[first]) == int(evaluation.y[second])
    axes[1, 2].text(0.05, 0.5, f"{agree:.0%} of all filters take the same path\nfor both "
                    f"images ({'same class' if same_class else 'different classes'}).",
                    fontsize=11, va="center")
    fig.tight_layout()
    return fig


def decision_agreement(evaluation: Evaluation, layer_names: Sequence[str]) -> pd.DataFrame:
    """Per layer: the mean fraction of filters on the same path for two examples of the same
    class, and for two examples of different classes (all pairs)."""
    y = evaluation.y
    same_class = (y[:, None] == y[None, :]).float()
    off_diagonal = 1 - torch.eye(len(y))
    rows = []
    for name, g in zip(layer_names, layer_gates(evaluation, layer_names)):
        g = g.float()
        agree = (g @ g.T + (1 - g) @ (1 - g).T) / g.shape[1]  # fraction of equal decisions
        within = (agree * same_class * off_diagonal).sum() / (same_class * off_diagonal).sum()
        between = (agree * (1 - same_class)).sum() / (1 - same_class).sum()
        rows.append({"layer": name, "same class": within.item(),
                     "different classes": between.item()})
    return pd.DataFrame(rows).set_index("layer")


def plot_agreement(evaluation: Evaluation, layer_names: Sequence[str]) -> Figure:
    """Per layer, how alike the filter maps of two images are: same class vs different."""
    table = decision_agreement(evaluation, layer_names)
    fig = Figure(figsize=(9, 3.2))
    ax = fig.subplots()
    x = np.arange(len(table))
    ax.bar(x - 0.2, table["same class"], 0.4, label="two images of the same class")
    ax.bar(x + 0.2, table["different classes"], 0.4, label="two images of different classes")
    ax.set_xticks(x, table.index, rotation=60, ha="right", fontsize=8)
    low = float(table.min().min())
    ax.set(ylim=(max(0.0, low - 0.05), 1.0), ylabel="filters on the same path",
           title="How alike are the filter maps of two images? (all pairs of test images)")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return fig


def layer_correlation(evaluation: Evaluation, layer_names: Sequence[str]) -> pd.DataFrame:
    """Correlation over examples between the fine-tuned fractions of every pair of layers
    (NaN for a layer whose fraction is the same for every example)."""
    usage = usage_per_example(evaluation, layer_names).numpy()
    frame = pd.DataFrame(usage, columns=list(layer_names))
    return frame.corr()


def plot_layer_correlation(evaluation: Evaluation, layer_names: Sequence[str]) -> Figure:
    """The LSTM at work: how an example's decisions in one layer go with its decisions in the
    others. Left: correlation over examples of the per-layer fine-tuned fractions. Right: for
    each layer, how well the earlier layers' decisions predict it (R² of a least-squares fit
    on the fractions of all earlier layers)."""
    corr = layer_correlation(evaluation, layer_names)
    usage = usage_per_example(evaluation, layer_names).double()
    r2 = [np.nan]
    for i in range(1, usage.shape[1]):
        target = usage[:, i] - usage[:, i].mean()
        if target.abs().max() == 0:
            r2.append(np.nan)
            continue
        inputs = torch.cat([usage[:, :i], torch.ones(len(usage), 1, dtype=usage.dtype)], 1)
        fit = torch.linalg.lstsq(inputs, usage[:, i:i + 1]).solution
        residual = usage[:, i:i + 1] - inputs @ fit
        r2.append(1 - residual.pow(2).sum().item() / target.pow(2).sum().item())
    fig = Figure(figsize=(12, 4.6))
    ax_corr, ax_r2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.3, 1]})
    sns.heatmap(corr, ax=ax_corr, cmap="RdBu_r", vmin=-1, vmax=1, square=True,
                cbar_kws={"label": "correlation over examples"})
    ax_corr.set(title="Per-example fine-tuned fraction: layer vs layer", xlabel="layer",
                ylabel="layer")
    ax_corr.tick_params(labelsize=7)
    x = np.arange(len(layer_names))
    ax_r2.bar(x, np.nan_to_num(r2), color="#7570b3")
    ax_r2.set_xticks(x, layer_names, rotation=60, ha="right", fontsize=8)
    ax_r2.set(ylim=(0, 1), ylabel="R² from the earlier layers",
              title="How much of a layer's decision the\nearlier layers' decisions explain")
    fig.tight_layout()
    return fig


@torch.no_grad()
def evaluate_without_memory(model: AdaFilter, dataset: Dataset) -> Evaluation:
    """Evaluate with the LSTM's memory wiped before every step (``h_{l−1} = c_{l−1} = 0``):
    each layer's gates then see only that layer's own input, not the layers before it."""
    step = model.gates.step
    model.gates.step = lambda index, x, state: step(index, x, None)  # shadows the method
    try:
        return evaluate(model, dataset)
    finally:
        del model.gates.step


def plot_memory_ablation(evaluation: Evaluation, wiped: Evaluation,
                         layer_names: Sequence[str]) -> Figure:
    """Per layer, the fraction of decisions (examples × filters) that change when the LSTM's
    memory of the earlier layers is wiped (see :func:`evaluate_without_memory`)."""
    changed = [(a != b).float().mean().item() for a, b in
               zip(layer_gates(evaluation, layer_names), layer_gates(wiped, layer_names))]
    fig = Figure(figsize=(9, 3.2))
    ax = fig.subplots()
    x = np.arange(len(layer_names))
    ax.bar(x, changed, color="#1b9e77")
    ax.set_xticks(x, layer_names, rotation=60, ha="right", fontsize=8)
    ax.set(ylim=(0, max(0.05, 1.15 * max(changed))), ylabel="decisions that change",
           title=f"Wiping the LSTM's memory: test accuracy {evaluation.accuracy:.1%} → "
                 f"{wiped.accuracy:.1%}")
    fig.tight_layout()
    return fig


def dashboard_view(result: RunResult) -> Figure:
    """Dashboard view: fine-tuned filters per layer (per example) and per class, for the last
    seed's model on its test split."""
    if result.model is None or result.task is None:
        raise ValueError("the run has no trained model (was it stopped before one seed ended?)")
    model = result.model
    evaluation = evaluate(model, result.task.test)
    names = model.layer_names
    usage = usage_per_example(evaluation, names).numpy()
    y = evaluation.y
    classes = list(result.task.classes)
    means = np.stack([usage[(y == c).numpy()].mean(axis=0) for c in range(len(classes))])
    fig = Figure(figsize=(12, 3.8))
    ax_use, ax_cls = fig.subplots(1, 2)
    x = np.arange(len(names))
    ax_use.boxplot(usage, positions=x, widths=0.6, showfliers=False)
    ax_use.set_xticks(x, names, rotation=60, ha="right", fontsize=7)
    ax_use.set(ylim=(-0.02, 1.02), ylabel="fraction fine-tuned (per example)",
               title=f"Fine-tuned filters per layer (test accuracy {evaluation.accuracy:.1%})")
    sns.heatmap(means, ax=ax_cls, cmap="Oranges", vmin=0, vmax=1, xticklabels=names,
                yticklabels=classes, cbar_kws={"label": "fraction fine-tuned"})
    ax_cls.set(xlabel="layer", ylabel="true class", title="Per class")
    ax_cls.tick_params(axis="x", rotation=60, labelsize=7)
    ax_cls.tick_params(axis="y", rotation=0)
    fig.tight_layout()
    return fig
