"""Views of what GTN (arXiv 1810.12521) decided: its feature gates, per class and per example.

The inputs are plain tensors from :func:`tlgates.train.evaluate`: ``evaluation.decisions``
holds ``"gate"`` (N×D, the gate ``g`` of each example) and ``"feature"`` (N×D, the pooled
feature ``f``). Every function returns a matplotlib ``Figure`` made without pyplot.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.figure import Figure

from tlgates.methods.gtn import GatedTransferNetwork
from tlgates.train import Evaluation, evaluate
from tlgates.methods.base import per_class_mean
from tlgates.plotting import class_labels, draw_image

if TYPE_CHECKING:
    from tlgates.experiment import RunResult


def class_mean_gates(gates: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Mean gate of every class and channel: ``(num_classes, D)``."""
    return per_class_mean(gates, y, num_classes)


def gate_variance_shares(gates: torch.Tensor, y: torch.Tensor,
                         num_classes: int) -> dict[str, float]:
    """How much of the gates' variance is per channel, per class and per example (sums to 1).

    With ``m_d`` the mean gate of channel d, ``c_{k,d}`` its mean over class k and ``ḡ`` the
    mean of all gates: ``Var(g) = mean_d (m_d − ḡ)² + mean_n,d (c_{y_n,d} − m_d)²
    + mean_n,d (g_{n,d} − c_{y_n,d})²`` (the cross terms vanish). A gate that is a fixed
    re-weighting of the channels is all "channel"; a gate that reads the image is "example".
    """
    gates = gates.float()
    class_means = class_mean_gates(gates, y, num_classes)[y]
    channel_means = gates.mean(dim=0)
    parts = torch.stack([((channel_means - gates.mean()) ** 2).mean(),
                         ((class_means - channel_means) ** 2).mean(),
                         ((gates - class_means) ** 2).mean()])
    shares = parts / parts.sum().clamp(min=torch.finfo(parts.dtype).tiny)
    return dict(zip(("channel", "class", "example"), shares.tolist()))


def switched_off_channels(gates: torch.Tensor, y: torch.Tensor, cls: int,
                          k: int = 3) -> pd.DataFrame:
    """The ``k`` channels that class ``cls`` closes most *relative to the other classes*.

    Ranked by ``mean gate over cls − mean gate over the other classes`` (most negative first),
    so a channel closed for every class (a feature useless to the whole task) does not hide the
    class-specific decisions.
    """
    mine = gates[y == cls].mean(dim=0)
    others = gates[y != cls].mean(dim=0)
    order = torch.argsort(mine - others)[:k]
    return pd.DataFrame({"channel": order.tolist(), "gate (class)": mine[order].tolist(),
                         "gate (other classes)": others[order].tolist()})


def plot_gate_distribution(gates: torch.Tensor, *, title: str = "") -> Figure:
    """Left: histogram of every gate value. Right: each channel's mean gate, sorted, with the
    10–90 % range over examples (how much the gate varies from image to image)."""
    g = gates.float().numpy()
    fig = Figure(figsize=(9, 3.0))
    ax_hist, ax_chan = fig.subplots(1, 2)
    ax_hist.hist(g.ravel(), bins=50, range=(0, 1), color="tab:blue")
    ax_hist.set(xlabel="gate value g", ylabel="count (examples × channels)",
                title="All gate values", xlim=(0, 1))
    order = np.argsort(-g.mean(axis=0))
    mean, low, high = (g.mean(axis=0)[order], np.quantile(g, 0.1, axis=0)[order],
                       np.quantile(g, 0.9, axis=0)[order])
    rank = np.arange(len(order))
    ax_chan.fill_between(rank, low, high, alpha=0.3, label="10–90 % of examples")
    ax_chan.plot(rank, mean, color="tab:blue", label="mean over examples")
    ax_chan.set(xlabel="channel (sorted by mean gate)", ylabel="gate value g", ylim=(0, 1),
                title="Gate per channel")
    ax_chan.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_class_gate_heatmap(gates: torch.Tensor, y: torch.Tensor,
                            class_names: Sequence[str] | None = None, *,
                            relative: bool = False, title: str = "") -> Figure:
    """Classes × channels heatmap of the mean gate, channels sorted by their overall mean.

    With ``relative=True`` each cell shows the class mean minus the channel's mean over all
    examples (blue: this class closes the channel more than the others do).
    """
    num_classes = len(class_names) if class_names is not None else int(y.max()) + 1
    means = class_mean_gates(gates, y, num_classes)
    order = torch.argsort(-gates.float().mean(dim=0))
    means = means[:, order]
    fig = Figure(figsize=(10, 0.3 * num_classes + 1.4))
    ax = fig.subplots()
    if relative:
        values = (means - gates.float().mean(dim=0)[order]).numpy()
        bound = float(np.abs(values).max()) or 1.0
        style = {"cmap": "RdBu_r", "vmin": -bound, "vmax": bound,
                 "cbar_kws": {"label": "class mean − overall mean"}}
    else:
        values = means.numpy()
        style = {"cmap": "viridis", "vmin": 0.0, "vmax": 1.0,
                 "cbar_kws": {"label": "mean gate"}}
    sns.heatmap(values, ax=ax, xticklabels=False,
                yticklabels=list(class_names) if class_names is not None else "auto", **style)
    ax.set(xlabel=f"channel ({means.shape[1]}, sorted by mean gate over all examples)",
           ylabel="true class",
           title=title or ("Mean gate per class and channel" + (" (relative)" if relative
                                                                else "")))
    ax.tick_params(axis="y", rotation=0)
    fig.tight_layout()
    return fig


def plot_switched_off(evaluation: Evaluation, images: torch.Tensor, cls: int, *, k: int = 3,
                      n_images: int = 6, class_names: Sequence[str] | None = None) -> Figure:
    """The ``k`` channels class ``cls`` switches off most (see :func:`switched_off_channels`),
    each with the ``n_images`` images whose feature ``f_c`` is largest (what the channel
    detects), titled with their class and their gate on that channel."""
    gates, features, y = (evaluation.decisions["gate"], evaluation.decisions["feature"],
                          evaluation.y)
    names = class_labels(class_names, int(y.max()) + 1)
    table = switched_off_channels(gates, y, cls, k)
    fig = Figure(figsize=(1.25 * (n_images + 2), 1.5 * k + 0.6))
    axes = fig.subplots(k, n_images + 1, squeeze=False,
                        gridspec_kw={"width_ratios": [2.5] + [1] * n_images})
    for row, (channel, mine, others) in enumerate(table.itertuples(index=False)):
        text_ax = axes[row, 0]
        text_ax.set_axis_off()
        text_ax.text(0.0, 0.5, f"channel {channel}\nmean gate {mine:.2f} for '{names[cls]}'\n"
                     f"vs {others:.2f} for other classes", va="center", fontsize=9)
        top = torch.argsort(features[:, channel], descending=True)[:n_images]
        for col, i in enumerate(top.tolist(), start=1):
            ax = axes[row, col]
            draw_image(ax, images[i])
            ax.set_title(f"'{names[int(y[i])]}' g={gates[i, channel]:.2f}", fontsize=8, pad=2)
    fig.suptitle(f"Channels that class '{names[cls]}' switches off most, and the images that "
                 "excite them most", fontsize=10)
    fig.tight_layout()
    return fig


@torch.no_grad()
def plot_example(model: GatedTransferNetwork, evaluation: Evaluation, images: torch.Tensor,
                 index: int, class_names: Sequence[str] | None = None) -> Figure:
    """One example: the image, its gate vector against its class's mean gate, and its class
    probabilities with the gates and without them (``g = 1``, same weights)."""
    if "gate" not in evaluation.decisions:
        raise ValueError("this model has no gate (built with gate=False)")
    gates, features, y = (evaluation.decisions["gate"], evaluation.decisions["feature"],
                          evaluation.y)
    num_classes = evaluation.logits.shape[1]
    names = class_labels(class_names, num_classes)
    label = int(y[index])
    class_mean = gates[y == label].mean(dim=0)
    order = torch.argsort(-class_mean)
    model.eval()
    device = next(model.parameters()).device
    f = features[index:index + 1].to(device)
    with_gate = model.classify(f, gates[index:index + 1].to(device)).softmax(1)[0].cpu()
    without = model.classify(f).softmax(1)[0].cpu()
    fig = Figure(figsize=(12, 2.9))
    ax_img, ax_gate, ax_prob = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1, 3.2, 2.2]})
    draw_image(ax_img, images[index])
    ax_img.set_title(f"test image {index}\ntrue class '{names[label]}'", fontsize=9)
    rank = np.arange(len(order))
    ax_gate.plot(rank, class_mean[order].numpy(), color="black", lw=1.5,
                 label=f"mean over class '{names[label]}'")
    ax_gate.scatter(rank, gates[index, order].numpy(), s=6, color="tab:orange", alpha=0.8,
                    label="this image", zorder=3)
    ax_gate.set(xlabel="channel (sorted by the class's mean gate)", ylabel="gate value g",
                title="Gate vector of this image (zoomed to its range)")
    ax_gate.legend(fontsize=8, loc="best")
    width = 0.4
    ax_prob.bar(np.arange(num_classes) - width / 2, with_gate.numpy(), width,
                label=f"with gates → '{names[int(with_gate.argmax())]}'")
    ax_prob.bar(np.arange(num_classes) + width / 2, without.numpy(), width,
                label=f"gates set to 1 → '{names[int(without.argmax())]}'")
    ax_prob.set_xticks(range(num_classes), names)
    ax_prob.set(xlabel="class", ylabel="probability", ylim=(0, 1.45), title="Prediction")
    ax_prob.set_yticks([0, 0.25, 0.5, 0.75, 1])
    ax_prob.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def plot_ablation(frame: pd.DataFrame, order: Sequence[str] | None = None, *,
                  baseline: tuple[str, float] | None = None, title: str = "") -> Figure:
    """Test accuracy of the ablation variants: one dot per seed, mean ± std, and the first
    variant's mean (fine-tuning) as a dashed reference line.

    ``frame`` has one row per variant and seed, with columns ``method``, ``seed`` and
    ``accuracy`` (a fraction). ``baseline`` = (label, mean accuracy) adds a dotted line.
    """
    data = frame.assign(accuracy=100 * frame["accuracy"])
    order = list(order) if order is not None else list(dict.fromkeys(data["method"]))
    fig = Figure(figsize=(6, 3.4))
    ax = fig.subplots()
    sns.stripplot(data=data, x="method", y="accuracy", order=order, ax=ax, color="0.55",
                  size=5, jitter=0.08, label="one seed")
    stats = data.groupby("method")["accuracy"].agg(["mean", "std"]).reindex(order)
    ax.errorbar(range(len(order)), stats["mean"], yerr=stats["std"].fillna(0), fmt="o",
                color="tab:red", capsize=6, markersize=8, label="mean ± std")
    ax.axhline(stats["mean"].iloc[0], ls="--", color="0.4", lw=1,
               label=f"{order[0]} mean")
    if baseline is not None:
        ax.axhline(100 * baseline[1], ls=":", color="tab:blue", lw=1.5, label=baseline[0])
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.legend(unique.values(), unique.keys(), fontsize=8)
    ax.set(xlabel="", ylabel="test accuracy (%)",
           title=title or f"Ablation (mean ± std over {data['seed'].nunique()} seeds)")
    fig.tight_layout()
    return fig


def plot_gate_epochs(history_frame: pd.DataFrame) -> Figure:
    """How the per-channel mean gate (on the validation set) moved during training."""
    values = np.array(history_frame["gate_channel_mean"].tolist())
    order = np.argsort(-values[-1])
    fig = Figure(figsize=(9, 2.8))
    ax = fig.subplots()
    sns.heatmap(values[:, order].T, ax=ax, cmap="viridis", vmin=0, vmax=1, yticklabels=False,
                xticklabels=history_frame["epoch"].tolist(),
                cbar_kws={"label": "mean gate (validation)"})
    ax.set(xlabel="epoch", ylabel="channel (sorted by final gate)",
           title="Mean gate per channel over training")
    ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    return fig


def dashboard_view(result: RunResult) -> Figure:
    """Dashboard view: the class × channel gate heatmap of the last seed's model on its test
    split (or a note when the variant has no gate)."""
    if result.model is None or result.task is None:
        raise ValueError("the run has no trained model (was it stopped before one seed ended?)")
    evaluation = evaluate(result.model, result.task.test)
    names = result.task.classes
    if "gate" not in evaluation.decisions:
        fig = Figure(figsize=(6, 1.2))
        fig.text(0.5, 0.5, f"No gate in this variant: test accuracy {evaluation.accuracy:.1%}",
                 ha="center", va="center")
        return fig
    return plot_class_gate_heatmap(
        evaluation.decisions["gate"], evaluation.y, names,
        title=f"Mean gate per class and channel (test split, last seed, accuracy "
              f"{evaluation.accuracy:.1%})")
