"""Plots shared by every notebook; each method's own views live in ``tlgates.plotting.<method>``.

Every function returns a matplotlib ``Figure`` (made without pyplot, so it can be drawn from
a dashboard's background thread and displayed as the last value of a notebook cell).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.figure import Figure

from tlgates.train import History


def class_labels(class_names: Sequence[str] | None, num_classes: int) -> list[str]:
    """The class names to print: ``class_names``, or ``"0"``, ``"1"``, … when none are given."""
    return list(class_names) if class_names is not None else [str(c) for c in range(num_classes)]


def draw_image(ax: Any, image: torch.Tensor) -> None:
    """Draw one image ``(C, H, W)`` in [0, 1] on ``ax`` (grey when it has one channel), no axes."""
    array = image.detach().cpu().permute(1, 2, 0).clamp(0, 1).numpy()
    ax.imshow(array[..., 0] if array.shape[2] == 1 else array, cmap="gray")
    ax.set_axis_off()


def show_images(images: torch.Tensor, labels: Sequence[str] | None = None, *, ncols: int = 10,
                title: str | None = None, size: float = 1.0) -> Figure:
    """A grid of images ``(N, C, H, W)`` in [0, 1], each titled with its label if given."""
    n = len(images)
    nrows = max(1, -(-n // ncols))
    fig = Figure(figsize=(size * ncols, size * nrows * 1.15 + (0.4 if title else 0)))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i < n:
            draw_image(ax, images[i])
            if labels is not None:
                ax.set_title(str(labels[i]), fontsize=8, pad=2)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_history(histories: History | Sequence[History],
                 labels: Sequence[str] | None = None) -> Figure:
    """Training loss and validation accuracy per epoch, one line per history."""
    if isinstance(histories, History):
        histories = [histories]
    labels = list(labels) if labels is not None else [None] * len(histories)
    fig = Figure(figsize=(8, 2.8))
    ax_loss, ax_acc = fig.subplots(1, 2)
    for history, label in zip(histories, labels):
        frame = history.frame()
        if frame.empty:
            continue
        ax_loss.plot(frame["epoch"], frame["loss"], label=label)
        if "val_acc" in frame:  # validated every epoch, or every few (``val_every``)
            val = frame.dropna(subset=["val_acc"])
            ax_acc.plot(val["epoch"], 100 * val["val_acc"], label=label,
                        marker="o" if len(val) < len(frame) else None, markersize=3)
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="Loss")
    ax_acc.set(xlabel="epoch", ylabel="validation accuracy (%)", title="Validation accuracy")
    if any(labels):
        ax_acc.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_accuracy_vs_shots(frame: pd.DataFrame, *, title: str = "") -> Figure:
    """Test accuracy against labels per class, one line per method, error bars = std over seeds.

    ``frame`` is the long table of :func:`tlgates.experiment.compare`.
    """
    data = frame.assign(accuracy=100 * frame["accuracy"])
    fig = Figure(figsize=(6, 3.8))
    ax = fig.subplots()
    sns.lineplot(data=data, x="shots", y="accuracy", hue="method", style="method",
                 markers=True, dashes=False, errorbar="sd", err_style="bars", ax=ax)
    ax.set(xscale="log", xlabel="labels per class (log scale)", ylabel="test accuracy (%)",
           title=title or "Test accuracy against labels per class (mean ± std over seeds)")
    shots = sorted(data["shots"].unique())
    ax.set_xticks(shots, [str(s) for s in shots])
    ax.minorticks_off()
    fig.tight_layout()
    return fig


def plot_method_bars(frame: pd.DataFrame, *, title: str = "") -> Figure:
    """Test accuracy per method as bars with std over seeds (one labels-per-class value)."""
    data = frame.assign(accuracy=100 * frame["accuracy"])
    fig = Figure(figsize=(max(6.0, 0.8 * data["method"].nunique()), 3.2))
    ax = fig.subplots()
    sns.barplot(data=data, x="method", y="accuracy", errorbar="sd", ax=ax, capsize=0.2,
                hue="method", legend=False)
    low = float(np.floor(data["accuracy"].min() / 10) * 10)
    ax.set(ylim=(max(0.0, low - 10), 100), ylabel="test accuracy (%)", xlabel="",
           title=title or "Test accuracy (mean ± std over seeds)")
    fig.tight_layout()
    return fig


def plot_path_accuracies(table: pd.DataFrame, *, title: str = "") -> Figure:
    """Bars of :func:`tlgates.train.path_accuracies`: the learned decisions against every
    decision forced to one path, for the same trained model."""
    fig = Figure(figsize=(5.5, 2.8))
    ax = fig.subplots()
    values = 100 * table["accuracy"].to_numpy()
    ax.barh(table.index, values, color=["#7570b3", "#c9d6e8", "#d95f02"][:len(table)])
    for i, v in enumerate(values):
        ax.text(v + 0.5, i, f"{v:.1f}%", va="center", fontsize=9)
    ax.set(xlim=(0, 105), xlabel="test accuracy (%)",
           title=title or "Same trained model, decisions learned or forced")
    ax.invert_yaxis()
    fig.tight_layout()
    return fig
