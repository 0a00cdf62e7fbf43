"""Views of what SpotTune (arXiv 1811.08737) decided: which blocks each image was fine-tuned
through, per example, per class and over training.

The inputs are plain tensors from :func:`tlgates.train.evaluate`: ``evaluation.decisions``
holds ``"route"`` (N×L, 1 = the block's fine-tuned copy, 0 = its frozen copy) and
``"p_finetune"`` (N×L, the policy's probability of fine-tuning). Per-epoch usage comes from the
``usage`` and ``usage_by_class`` columns of ``History.frame()``. Every function returns a
matplotlib ``Figure`` made without pyplot.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.axes import Axes
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch, Patch

from tlgates.plotting import class_labels, draw_image, plot_history
from tlgates.train import Evaluation, evaluate
from tlgates.methods.base import per_class_mean

if TYPE_CHECKING:
    from tlgates.experiment import RunResult

FROZEN_COLOR, TUNED_COLOR = "#b8c4d6", "#e8743b"
ROUTE_CMAP = ListedColormap([FROZEN_COLOR, TUNED_COLOR])


def route_names(routes: torch.Tensor) -> list[str]:
    """Each route as a string, block 1 first: ``"0110"`` fine-tunes blocks 2 and 3."""
    return ["".join(str(int(v)) for v in row) for row in routes.round().int().tolist()]


def route_table(routes: torch.Tensor, y: torch.Tensor,
                class_names: Sequence[str] | None = None) -> pd.DataFrame:
    """How many test images took each route, most frequent first, with their classes."""
    names = class_labels(class_names, int(y.max()) + 1)
    frame = pd.DataFrame({"route": route_names(routes), "class": [names[i] for i in y.tolist()]})
    table = frame.groupby("route")["class"].agg(
        images="size", classes=lambda c: ", ".join(f"{k}×{v}" for k, v in
                                                  c.value_counts().items()))
    return table.sort_values("images", ascending=False)


def class_usage(routes: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Fraction of each class's images that fine-tune each block: ``(num_classes, L)``."""
    return per_class_mean(routes, y, num_classes)


def _legend(ax: Axes, **kwargs: object) -> None:
    ax.legend(handles=[Patch(color=FROZEN_COLOR, label="frozen (pre-trained) copy"),
                       Patch(color=TUNED_COLOR, label="fine-tuned copy")], **kwargs)


def draw_routing_matrix(ax: Axes, routes: torch.Tensor, y: torch.Tensor,
                        names: Sequence[str]) -> None:
    """Blocks × test images on ``ax``, images sorted by class, then by route."""
    codes = (routes.round() * 2 ** torch.arange(routes.shape[1])).sum(dim=1)
    order = np.lexsort((codes.numpy(), y.numpy()))
    ax.imshow(routes[order].T.numpy(), aspect="auto", cmap=ROUTE_CMAP, vmin=0, vmax=1,
              interpolation="nearest")
    counts = torch.bincount(y, minlength=len(names)).numpy()
    edges = np.cumsum(counts)
    for edge in edges[:-1]:
        ax.axvline(edge - 0.5, color="white", lw=2)
    ax.set_xticks(edges - counts / 2 - 0.5, names)
    ax.set_yticks(range(routes.shape[1]), [f"block {l + 1}" for l in range(routes.shape[1])])
    ax.set(xlabel=f"test images ({len(y)}), grouped by true class",
           title="Routing matrix: the copy of each block that every test image used")


def draw_block_usage(ax: Axes, routes: torch.Tensor) -> None:
    """Stacked bars: the fraction of images through each block's fine-tuned / frozen copy."""
    blocks = [f"{l + 1}" for l in range(routes.shape[1])]
    usage = routes.float().mean(dim=0).numpy()
    ax.bar(blocks, usage, color=TUNED_COLOR)
    ax.bar(blocks, 1 - usage, bottom=usage, color=FROZEN_COLOR)
    for l, u in enumerate(usage):
        ax.text(l, u / 2 if u > 0.12 else u + 0.03, f"{u:.0%}", ha="center", fontsize=8)
    ax.set(xlabel="block", ylabel="fraction of test images", ylim=(0, 1),
           title="Fine-tuned (orange) per block")


def draw_usage_epochs(ax: Axes, history: pd.DataFrame) -> None:
    """Per-block usage on the validation set after every epoch that was validated."""
    history = history.dropna(subset=["usage"])
    per_epoch = np.array(history["usage"].tolist())
    for l in range(per_epoch.shape[1]):
        ax.plot(history["epoch"], per_epoch[:, l], marker=".", label=f"block {l + 1}")
    ax.set(xlabel="epoch", ylabel="fraction of validation images", ylim=(-0.03, 1.03),
           title="Fine-tuned per block, during training")
    ax.legend(fontsize=7, ncol=2)


def plot_routing_matrix(routes: torch.Tensor, y: torch.Tensor,
                        class_names: Sequence[str] | None = None) -> Figure:
    """Test images × blocks: the copy each image went through, images sorted by class and,
    within a class, by route. Classes are separated by white lines."""
    fig = Figure(figsize=(11, 0.45 * routes.shape[1] + 1.6))
    ax = fig.subplots()
    draw_routing_matrix(ax, routes, y, class_labels(class_names, int(y.max()) + 1))
    _legend(ax, loc="upper center", bbox_to_anchor=(0.5, -0.32), ncol=2, fontsize=8,
            frameon=False)
    fig.tight_layout()
    return fig


def plot_usage(routes: torch.Tensor, y: torch.Tensor, history: pd.DataFrame | None = None,
               class_names: Sequence[str] | None = None) -> Figure:
    """Usage (fraction of images fine-tuning each block): per block, per class × block, and
    per block over the training epochs (on the validation set) when ``history`` is given."""
    names = class_labels(class_names, int(y.max()) + 1)
    panels = 3 if history is not None and "usage" in history else 2
    fig = Figure(figsize=(4.2 * panels, 3.4))
    axes = fig.subplots(1, panels, gridspec_kw={"width_ratios": [1, 1.3, 1.4][:panels]})
    draw_block_usage(axes[0], routes)
    sns.heatmap(class_usage(routes, y, len(names)).numpy(), ax=axes[1], vmin=0, vmax=1,
                cmap="Oranges", annot=True, fmt=".1f", annot_kws={"fontsize": 7},
                xticklabels=[f"{l + 1}" for l in range(routes.shape[1])], yticklabels=names,
                cbar_kws={"label": "fraction fine-tuned"})
    axes[1].set(xlabel="block", ylabel="true class", title="Fine-tuned, per class")
    axes[1].tick_params(axis="y", rotation=0)
    if panels == 3:
        draw_usage_epochs(axes[2], history)
    fig.tight_layout()
    return fig


def plot_class_usage_epochs(history: pd.DataFrame,
                            class_names: Sequence[str] | None = None) -> Figure:
    """One heatmap per block: classes × epochs, the fraction of each class's validation images
    that fine-tuned the block after each epoch."""
    by_class = np.array(history["usage_by_class"].tolist())  # epochs × classes × blocks
    epochs, num_classes, num_blocks = by_class.shape
    names = class_labels(class_names, num_classes)
    fig = Figure(figsize=(3.0 * num_blocks + 1, 0.22 * num_classes + 1.6))
    axes = fig.subplots(1, num_blocks, sharey=True, squeeze=False)[0]
    epoch_labels = [str(e) if (e - 1) % 5 == 0 else "" for e in history["epoch"]]
    for l, ax in enumerate(axes):
        sns.heatmap(by_class[:, :, l].T, ax=ax, vmin=0, vmax=1, cmap="Oranges",
                    cbar=l == num_blocks - 1, yticklabels=names, xticklabels=epoch_labels,
                    cbar_kws={"label": "fraction fine-tuned"} if l == num_blocks - 1 else None)
        ax.set(xlabel="epoch", title=f"block {l + 1}", ylabel="true class" if l == 0 else "")
        ax.tick_params(axis="y", rotation=0)
        ax.tick_params(axis="x", rotation=0)
    fig.suptitle("Usage per class and block, epoch by epoch (validation set)")
    fig.tight_layout()
    return fig


def draw_route(ax: Axes, route: Sequence[float], p_finetune: Sequence[float] | None = None, *,
               title: str = "") -> None:
    """Draw one route: two rows of boxes (frozen below, fine-tuned above) per block, the used
    copy coloured, and the path from the stem to the head through them."""
    num_blocks = len(route)
    ax.set_xlim(-0.9, num_blocks + 0.2)
    ax.set_ylim(-0.6 if p_finetune is not None else -0.15, 1.9)
    ax.set_axis_off()
    xs, ys = [-0.6], [0.5]
    for l, used in enumerate(route):
        for row, color, label in ((0, FROZEN_COLOR, "frozen"), (1, TUNED_COLOR, "tuned")):
            active = int(round(float(used))) == row
            ax.add_patch(FancyBboxPatch((l + 0.1, row + 0.05), 0.7, 0.5,
                                        boxstyle="round,pad=0.02", lw=1.5 if active else 0.8,
                                        fc=color if active else "white", ec="0.3"))
            ax.text(l + 0.45, row + 0.3, label, ha="center", va="center", fontsize=7)
        xs.append(l + 0.45)
        ys.append(int(round(float(used))) + 0.3)
        if p_finetune is not None:
            ax.text(l + 0.45, -0.35, f"p={float(p_finetune[l]):.2f}", ha="center", fontsize=7)
        ax.text(l + 0.45, 1.75, f"block {l + 1}", ha="center", fontsize=8)
    xs.append(num_blocks + 0.05)
    ys.append(0.5)
    ax.plot(xs, ys, color="black", lw=1.2, marker="o", ms=3, zorder=0)
    ax.text(-0.6, 0.5, "stem ", ha="right", va="center", fontsize=8)
    ax.text(num_blocks + 0.1, 0.5, " head", ha="left", va="center", fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)


def plot_route_gallery(images: torch.Tensor, routes: torch.Tensor, y: torch.Tensor,
                       class_names: Sequence[str] | None = None, *, top: int = 5,
                       per_route: int = 8) -> Figure:
    """The ``top`` most frequent routes, each with ``per_route`` of its images."""
    names = class_labels(class_names, int(y.max()) + 1)
    table = route_table(routes, y, names).head(top)
    labels = route_names(routes)
    fig = Figure(figsize=(1.0 * per_route + 2.6, 1.15 * len(table) + 0.5))
    axes = fig.subplots(len(table), per_route + 1, squeeze=False,
                        gridspec_kw={"width_ratios": [2.6] + [1] * per_route})
    for row, (route, count) in enumerate(table["images"].items()):
        members = [i for i, name in enumerate(labels) if name == route]
        axes[row, 0].set_axis_off()
        tuned = [str(l + 1) for l, c in enumerate(route) if c == "1"]
        axes[row, 0].text(0, 0.5, f"route {route}\nfine-tunes blocks "
                                  f"{', '.join(tuned) or 'none'}\n{count} images",
                          va="center", fontsize=8)
        for col in range(per_route):
            ax = axes[row, col + 1]
            ax.set_axis_off()
            if col < len(members):
                i = members[col]
                draw_image(ax, images[i])
                ax.set_title(names[int(y[i])], fontsize=7, pad=1)
    fig.suptitle("The most frequent routes and some of their test images (1 = fine-tuned)",
                 fontsize=10)
    fig.tight_layout()
    return fig


def plot_example(evaluation: Evaluation, images: torch.Tensor, index: int,
                 class_names: Sequence[str] | None = None, *, same_route: int = 8) -> Figure:
    """One test image: the image, its route through the blocks with the policy's
    probabilities, its class probabilities, and other images that took the same route."""
    y, routes = evaluation.y, evaluation.decisions["route"]
    names = class_labels(class_names, evaluation.logits.shape[1])
    probs = evaluation.logits[index].softmax(dim=0)
    pred = int(probs.argmax())
    fig = Figure(figsize=(12, 4.4))
    outer = fig.add_gridspec(2, 1, height_ratios=[2.3, 1])
    ax_img, ax_route, ax_prob = (fig.add_subplot(cell) for cell in
                                 outer[0].subgridspec(1, 3, width_ratios=[1.3, 5, 1.7]))
    draw_image(ax_img, images[index])
    verdict = "right" if pred == int(y[index]) else "wrong"
    ax_img.set_title(f"test image {index}\ntrue '{names[int(y[index])]}', predicted "
                     f"'{names[pred]}'\n{probs[pred]:.0%} confident ({verdict})", fontsize=9)
    p = evaluation.decisions.get("p_finetune")
    draw_route(ax_route, routes[index].tolist(),
               p[index].tolist() if p is not None else None,
               title=f"its route {route_names(routes[index:index + 1])[0]} (1 = fine-tuned; "
                     "p = the policy's probability of fine-tuning)")
    ax_prob.barh(names, probs.numpy(), color=["tab:green" if c == int(y[index]) else "0.6"
                                              for c in range(len(names))])
    ax_prob.invert_yaxis()
    ax_prob.set(xlim=(0, 1), xlabel="probability", title="Class probabilities (green: true)")
    ax_prob.tick_params(axis="y", labelsize=7)
    same = [i for i in torch.nonzero((routes == routes[index]).all(dim=1)).flatten().tolist()
            if i != index]
    shown = same[:same_route]
    for col, cell in enumerate(outer[1].subgridspec(1, same_route)):
        ax = fig.add_subplot(cell)
        ax.set_axis_off()
        if col < len(shown):
            draw_image(ax, images[shown[col]])
            ax.set_title(names[int(y[shown[col]])], fontsize=7, pad=1)
    fig.text(0.01, 0.31, f"{len(same)} other test images ({len(same) / max(1, len(y) - 1):.0%})"
                         f" took the same route; {len(shown)} of them, with their true class:",
             fontsize=9)
    fig.tight_layout()
    return fig


def dashboard_view(result: RunResult) -> Figure:
    """Dashboard view of a finished ``spottune`` run (last seed): the routing matrix on the test
    split, usage per block, and usage per block during training. For a method without routes
    (fine-tuning, for comparison) it shows the training curves."""
    evaluation = evaluate(result.model, result.task.test)
    if "route" not in evaluation.decisions:
        return plot_history(result.histories, [f"seed {s}" for s in result.seeds])
    routes, y = evaluation.decisions["route"], evaluation.y
    distinct = len(torch.unique(routes, dim=0))
    fig = Figure(figsize=(11, 5.6))
    grid = fig.add_gridspec(2, 2, height_ratios=[1, 1.6])
    draw_routing_matrix(fig.add_subplot(grid[0, :]), routes, y, result.task.classes)
    draw_block_usage(fig.add_subplot(grid[1, 0]), routes)
    draw_usage_epochs(fig.add_subplot(grid[1, 1]), result.histories[-1].frame())
    fig.suptitle(f"{result.method}: test accuracy {result.mean:.1%}; {distinct} distinct "
                 f"routes over {len(y)} test images (last seed)", fontsize=11)
    fig.tight_layout()
    return fig
