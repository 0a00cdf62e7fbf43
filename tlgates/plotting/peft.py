"""Views of the parameter-efficient methods beside the others: how many numbers each trains
against its accuracy, and where in the network it changed the source's weights."""
from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd
import seaborn as sns
import torch
from matplotlib.figure import Figure

from tlgates.backbones import Backbone
from tlgates.source import source_model

if TYPE_CHECKING:
    from tlgates.experiment import RunResult


def layer_of(name: str) -> str:
    """The backbone layer a parameter belongs to: ``"stem"`` or ``"block N"`` (1-based)."""
    parts = name.split(".")
    return f"block {int(parts[1]) + 1}" if parts[0] == "blocks" else parts[0]


@torch.no_grad()
def weight_change(backbone: Backbone, source: Backbone) -> pd.Series:
    """Per layer, the relative change of its weights from the source's,
    ``‖W − W⁰‖ / ‖W⁰‖`` over every convolution and BatchNorm parameter of the layer."""
    reference = dict(source.named_parameters())
    moved: dict[str, float] = {}
    norm: dict[str, float] = {}
    for name, p in backbone.named_parameters():
        layer = layer_of(name)
        moved[layer] = moved.get(layer, 0.0) + (p - reference[name]).pow(2).sum().item()
        norm[layer] = norm.get(layer, 0.0) + reference[name].pow(2).sum().item()
    return pd.Series({k: (moved[k] / norm[k]) ** 0.5 for k in moved}, name="relative change")


def plot_weight_change(changes: pd.DataFrame, *, title: str = "") -> Figure:
    """One line per method (columns) over the layers (index): the relative weight change."""
    fig = Figure(figsize=(7, 3.4))
    ax = fig.subplots()
    for method in changes.columns:
        ax.plot(changes.index, changes[method], marker="o", label=method)
    ax.set(ylim=(0, None), ylabel="‖W − W⁰‖ / ‖W⁰‖", xlabel="layer",
           title=title or "Where each method changed the source's weights")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_accuracy_vs_parameters(frame: pd.DataFrame, *, title: str = "") -> Figure:
    """Test accuracy of every seed against the trainable parameters of its method (log scale).

    ``frame`` has the columns ``method``, ``accuracy`` (in [0, 1]) and ``trainable``.
    """
    data = frame.assign(accuracy=100 * frame["accuracy"])
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    sns.stripplot(data=data, x="trainable", y="accuracy", hue="method", native_scale=True,
                  log_scale=(True, False), jitter=0.02, ax=ax, size=5)
    means = data.groupby("method", sort=False)[["trainable", "accuracy"]].mean()
    for method, (x, y) in means.iterrows():
        ax.annotate(method, (x, y), xytext=(5, 4), textcoords="offset points", fontsize=8)
    ax.set(xlabel="trainable parameters (log scale)", ylabel="test accuracy (%)",
           title=title or "Accuracy against what each method trains (one dot per seed)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def dashboard_view(result: RunResult) -> Figure:
    """Dashboard view: where the last seed's model changed the weights of the glyph source
    model (:func:`tlgates.source.source_model`, cached), per layer."""
    if result.model is None:
        raise ValueError("the run has no model to look at")
    change = weight_change(result.model.merged_backbone(), source_model(progress=False).backbone)
    return plot_weight_change(change.to_frame(result.method),
                              title=f"{result.method}: where the weights changed")
