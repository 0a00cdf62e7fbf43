"""Views of what PTU (arXiv 1804.08613) decided: its gates ``(z, r)`` per channel and layer.

The inputs are plain tensors and lists: ``evaluation.decisions`` of a PTU model holds ``"z"``
and ``"r"`` (``(N, ΣC)`` for the CNN form, every channel of every unit; ``(N, T, H)`` for the
recurrent form, every hidden unit at every time step), and the model's ``epoch_record`` puts
each channel's mean ``z`` and ``r`` over the validation set into the history (``z_channel``,
``r_channel``) once per epoch. ``layer_names`` and ``layer_channels`` (attributes of both PTU
models) say which channels belong to which layer. Every function returns a matplotlib
``Figure`` made without pyplot.

The gate plane: ``(z, r) = (1, 0)`` shares the source layer, ``(0, 1)`` fine-tunes it,
``(1, 1)`` adds both, ``(0, 0)`` switches the channel off; the anti-diagonal ``z + r = 1``
mixes the two without changing the scale.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from tlgates.train import evaluate
from tlgates.plotting import class_labels, draw_image

if TYPE_CHECKING:
    from tlgates.experiment import RunResult

CORNERS = {"share": (1.0, 0.0), "fine-tune": (0.0, 1.0), "both": (1.0, 1.0),
           "neither": (0.0, 0.0)}


def channel_means(gates: torch.Tensor) -> np.ndarray:
    """Each channel's mean gate over examples (and time steps): ``(N, C)`` or ``(N, T, C)`` →
    ``(C,)``; NaN (steps past a sequence's end) are left out."""
    dims = tuple(range(gates.dim() - 1))
    return gates.float().nanmean(dim=dims).numpy()


def split_layers(values: Sequence[float] | np.ndarray,
                 layer_channels: Sequence[int]) -> list[np.ndarray]:
    """Cut a vector of ``ΣC`` per-channel values into one array per layer."""
    values = np.asarray(values, dtype=float)
    if values.shape[-1] != sum(layer_channels):
        raise ValueError(f"expected {sum(layer_channels)} channels (layers of "
                         f"{list(layer_channels)}), got {values.shape[-1]}")
    return np.split(values, np.cumsum(layer_channels)[:-1], axis=-1)


def _layer_colors(n: int) -> list:
    return sns.color_palette("viridis", n) if n > 1 else ["tab:blue"]


def draw_gate_plane(ax: Axes, *, labels: bool = True) -> None:
    """The unit square of ``(z, r)``: its corners named, the anti-diagonal ``z + r = 1``."""
    ax.plot([0, 1], [1, 0], ls="--", color="0.6", lw=1, zorder=1)
    ax.set(xlim=(-0.08, 1.08), ylim=(-0.08, 1.08), xlabel="z (weight of the source layer)",
           ylabel="r (weight of the target copy)", aspect="equal")
    ax.set_xticks([0, 0.5, 1])
    ax.set_yticks([0, 0.5, 1])
    if not labels:
        return
    for name, (z, r) in CORNERS.items():
        ax.scatter([z], [r], marker="s", s=30, color="black", zorder=4)
        ax.annotate(name, (z, r), xytext=(-4 if z else 4, -10 if r else 6),
                    textcoords="offset points", ha="right" if z else "left", fontsize=8,
                    fontweight="bold", zorder=6,
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none",
                          "alpha": 0.8})


def plot_ptu_idea(z_inits: Sequence[float] = (0.1, 0.5, 0.9)) -> Figure:
    """The gate plane before any training: the four corners, and where the gates start for
    a few values of ``z_init`` (on ``z + r = 1``, where the network equals the source one)."""
    fig = Figure(figsize=(4.4, 4.2))
    ax = fig.subplots()
    draw_gate_plane(ax)
    for z0 in z_inits:
        ax.scatter([z0], [1 - z0], marker="*", s=160, color="tab:orange", zorder=5)
        ax.annotate(f"start, z_init = {z0:g}", (z0, 1 - z0), xytext=(8, 4),
                    textcoords="offset points", fontsize=8, color="tab:orange")
    ax.annotate("z + r = 1:\na mix, same scale", (0.3, 0.3), fontsize=8, color="0.4",
                ha="center")
    ax.set_title("The gate plane of one channel")
    fig.tight_layout()
    return fig


def plot_gate_plane(z: Sequence[float] | np.ndarray, r: Sequence[float] | np.ndarray,
                    layer_names: Sequence[str], layer_channels: Sequence[int], *,
                    z_path: np.ndarray | None = None, r_path: np.ndarray | None = None,
                    z_init: float | None = None, title: str = "") -> Figure:
    """Every channel as a point ``(z, r)``, one panel per layer (at most 5 per row).

    Args:
        z, r: the per-channel gates, ``ΣC`` values each (means over examples).
        layer_names, layer_channels: the layers, in order.
        z_path, r_path: optional ``(epochs, ΣC)`` arrays: each channel's path so far (thin
            lines ending at the point).
        z_init: optional start of every gate, ``(z_init, 1 − z_init)``, drawn as a star.
    """
    n = len(layer_names)
    ncols = min(n, 5)
    nrows = -(-n // ncols)
    fig = Figure(figsize=(2.7 * ncols + 0.3, 2.9 * nrows + (0.4 if title else 0)))
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    zs, rs = split_layers(z, layer_channels), split_layers(r, layer_channels)
    z_paths = split_layers(z_path, layer_channels) if z_path is not None else [None] * n
    r_paths = split_layers(r_path, layer_channels) if r_path is not None else [None] * n
    for i, (ax, name, color) in enumerate(zip(axes, layer_names, _layer_colors(n))):
        draw_gate_plane(ax, labels=True)
        if z_paths[i] is not None and len(z_paths[i]) > 1:
            ax.plot(z_paths[i], r_paths[i], color=color, alpha=0.15, lw=0.6, zorder=2)
        if z_init is not None:
            ax.scatter([z_init], [1 - z_init], marker="*", s=90, color="tab:orange",
                       zorder=5)
        ax.scatter(zs[i], rs[i], s=12, color=color, edgecolor="black", linewidth=0.3,
                   zorder=3)
        ax.set_title(f"{name} ({layer_channels[i]} ch.)", fontsize=9)
        if i % ncols:
            ax.set_ylabel("")
        if i < len(layer_names) - ncols:
            ax.set_xlabel("")
    for ax in axes[n:]:
        ax.set_axis_off()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def history_gates(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The per-channel gates of every recorded epoch: two ``(epochs, ΣC)`` arrays."""
    if "z_channel" not in frame:
        raise ValueError("the history has no gate records (z_channel): was it trained with "
                         "a validation set, and is it a PTU model's history?")
    return np.array(frame["z_channel"].tolist()), np.array(frame["r_channel"].tolist())


def plot_gate_plane_epoch(frame: pd.DataFrame, epoch: int, layer_names: Sequence[str],
                          layer_channels: Sequence[int], *,
                          z_init: float | None = None) -> Figure:
    """The gate plane after ``epoch`` (1-based), each channel's path since epoch 1 drawn."""
    z_all, r_all = history_gates(frame)
    if not 1 <= epoch <= len(z_all):
        raise ValueError(f"epoch must be in [1, {len(z_all)}], got {epoch}")
    acc = frame["val_acc"].iloc[epoch - 1] if "val_acc" in frame else float("nan")
    return plot_gate_plane(z_all[epoch - 1], r_all[epoch - 1], layer_names, layer_channels,
                           z_path=z_all[:epoch], r_path=r_all[:epoch], z_init=z_init,
                           title=f"Per-channel mean gates (validation set) after epoch "
                                 f"{epoch} of {len(z_all)}; validation accuracy {acc:.1%}")


def layer_table(z: Sequence[float] | np.ndarray, r: Sequence[float] | np.ndarray,
                layer_names: Sequence[str], layer_channels: Sequence[int]) -> pd.DataFrame:
    """Per layer: mean ``z`` (how much it shares), mean ``r`` (how much it adapts), ``z − r``,
    and the fraction of channels nearer each corner."""
    rows = []
    for name, lz, lr in zip(layer_names, split_layers(z, layer_channels),
                            split_layers(r, layer_channels)):
        corners = np.array(list(CORNERS.values()))
        dist = (lz[:, None] - corners[:, 0]) ** 2 + (lr[:, None] - corners[:, 1]) ** 2
        nearest = np.bincount(dist.argmin(1), minlength=4) / len(lz)
        rows.append({"layer": name, "z (shares)": lz.mean(), "r (adapts)": lr.mean(),
                     "z − r": (lz - lr).mean(),
                     **{f"near {c}": f for c, f in zip(CORNERS, nearest)}})
    return pd.DataFrame(rows).set_index("layer")


def plot_layer_gates(z: Sequence[float] | np.ndarray, r: Sequence[float] | np.ndarray,
                     layer_names: Sequence[str], layer_channels: Sequence[int], *,
                     frozen_layers: int | None = None, title: str = "") -> Figure:
    """Left: per layer, mean ``z`` and mean ``r`` (bars) with every channel (dots). Right:
    ``z − r`` per layer (1 = share, −1 = fine-tune; the 10–90 % range over channels) against
    the rule of thumb "share the first ``frozen_layers`` layers, fine-tune the rest" (default:
    the first half)."""
    n = len(layer_names)
    frozen_layers = n // 2 if frozen_layers is None else frozen_layers
    zs, rs = split_layers(z, layer_channels), split_layers(r, layer_channels)
    fig = Figure(figsize=(max(8.0, 1.3 * n + 4), 3.3))
    ax_bars, ax_diff = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.4, 1]})
    x = np.arange(n)
    width = 0.38
    rng = np.random.default_rng(0)
    for offset, values, label, color in ((-width / 2, zs, "z (shares)", "tab:blue"),
                                         (width / 2, rs, "r (adapts)", "tab:red")):
        ax_bars.bar(x + offset, [v.mean() for v in values], width, color=color, alpha=0.45,
                    label=label)
        for i, v in enumerate(values):
            ax_bars.scatter(x[i] + offset + rng.uniform(-0.1, 0.1, len(v)), v, s=4,
                            color=color, zorder=3)
    ax_bars.set_xticks(x, layer_names, rotation=30 if n > 6 else 0)
    ax_bars.set(ylim=(0, 1.18), ylabel="gate value", title="How much each layer shares / adapts")
    ax_bars.set_yticks([0, 0.25, 0.5, 0.75, 1])
    ax_bars.legend(fontsize=8, loc="upper center", ncol=2)
    diffs = [a - b for a, b in zip(zs, rs)]
    ax_diff.fill_between(x, [np.quantile(d, 0.1) for d in diffs],
                         [np.quantile(d, 0.9) for d in diffs], alpha=0.25, color="tab:purple",
                         label="10–90 % of channels")
    ax_diff.plot(x, [d.mean() for d in diffs], "o-", color="tab:purple", label="PTU (mean)")
    rule = [1.0 if i < frozen_layers else -1.0 for i in range(n)]
    ax_diff.step(x, rule, where="mid", color="0.3", ls="--",
                 label=f"rule of thumb: share {frozen_layers}, tune the rest")
    ax_diff.axhline(0, color="0.8", lw=0.8)
    ax_diff.set_xticks(x, layer_names, rotation=30 if n > 6 else 0)
    ax_diff.set(ylim=(-1.1, 1.1), ylabel="z − r   (share ↑, fine-tune ↓)",
                title="Sharing against depth")
    ax_diff.legend(fontsize=7, loc="lower left")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_layer_gates_over_epochs(frame: pd.DataFrame, layer_names: Sequence[str],
                                 layer_channels: Sequence[int]) -> Figure:
    """Per layer, the mean ``z`` (solid) and mean ``r`` (dashed) over the training epochs."""
    z_all, r_all = history_gates(frame)
    epochs = frame["epoch"].to_numpy()
    fig = Figure(figsize=(8, 3.0))
    ax = fig.subplots()
    for name, color, lz, lr in zip(layer_names, _layer_colors(len(layer_names)),
                                   split_layers(z_all, layer_channels),
                                   split_layers(r_all, layer_channels)):
        ax.plot(epochs, lz.mean(1), color=color, label=f"{name}: z")
        ax.plot(epochs, lr.mean(1), color=color, ls="--", label=f"{name}: r")
    ax.set(xlabel="epoch", ylabel="mean gate (validation)", ylim=(0, 1),
           title="Mean z (solid, shares) and r (dashed, adapts) per layer during training")
    ax.legend(fontsize=7, ncol=2, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return fig


def class_layer_gates(gates: torch.Tensor, y: torch.Tensor, layer_channels: Sequence[int],
                      num_classes: int) -> np.ndarray:
    """Mean gate per class and layer: ``(num_classes, layers)`` (time steps averaged)."""
    g = gates.float()
    if g.dim() == 3:  # recurrent: (N, T, H) → mean over time steps
        g = g.nanmean(dim=1)
    per_layer = np.stack([part.mean(1) for part in split_layers(g.numpy(), layer_channels)], 1)
    y = y.numpy()
    return np.stack([per_layer[y == c].mean(0) for c in range(num_classes)])


def plot_class_gates(z: torch.Tensor, r: torch.Tensor, y: torch.Tensor,
                     layer_names: Sequence[str], layer_channels: Sequence[int],
                     class_names: Sequence[str] | None = None, *, title: str = "") -> Figure:
    """Classes × layers: the mean ``z`` and ``r`` of each class, as the difference from the
    layer's mean over all examples (red: this class shares / adapts more than the others)."""
    num_classes = len(class_names) if class_names is not None else int(y.max()) + 1
    names = class_labels(class_names, num_classes)
    fig = Figure(figsize=(3.2 + 1.2 * len(layer_names), 0.32 * num_classes + 1.6))
    axes = fig.subplots(1, 2)
    for ax, gates, label in zip(axes, (z, r), ("z (shares)", "r (adapts)")):
        table = class_layer_gates(gates, y, layer_channels, num_classes)
        overall = class_layer_gates(gates, torch.zeros_like(y), layer_channels, 1)[0]
        values = table - overall
        bound = float(np.abs(values).max()) or 1e-3
        sns.heatmap(values, ax=ax, cmap="RdBu_r", vmin=-bound, vmax=bound, annot=table,
                    fmt=".2f", annot_kws={"fontsize": 6}, xticklabels=layer_names,
                    yticklabels=names, cbar_kws={"label": "class mean − overall mean"})
        ax.set(xlabel="layer", ylabel="true class", title=f"{label} per class (value shown)")
        ax.tick_params(axis="y", rotation=0)
        ax.tick_params(axis="x", rotation=30)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_gates_over_time(z: torch.Tensor, r: torch.Tensor, *, title: str = "") -> Figure:
    """Recurrent form: mean ``z`` and ``r`` over hidden units at each time step (image row),
    averaged over examples, with the 10–90 % range over examples."""
    fig = Figure(figsize=(7, 3.0))
    ax = fig.subplots()
    for gates, label, color in ((z, "z (shares)", "tab:blue"), (r, "r (adapts)", "tab:red")):
        per_example = gates.float().nanmean(dim=2).numpy()  # (N, T)
        steps = np.arange(1, per_example.shape[1] + 1)
        ax.fill_between(steps, np.nanquantile(per_example, 0.1, axis=0),
                        np.nanquantile(per_example, 0.9, axis=0), color=color, alpha=0.2)
        ax.plot(steps, np.nanmean(per_example, axis=0), color=color, label=label)
    ax.set(xlabel="time step (image row read)", ylabel="mean gate over hidden units",
           ylim=(0, 1), title=title or "LSTM gates over time (mean and 10–90 % of examples)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_rnn_example(image: torch.Tensor, z: torch.Tensor, r: torch.Tensor, *,
                     label: str = "", title: str = "") -> Figure:
    """One image read row by row: the image, ``z − r`` of every hidden unit at every row
    (rows aligned with the image's), and the mean ``z`` and ``r`` of each row."""
    fig = Figure(figsize=(10, 3.3))
    ax_img, ax_map, ax_rows = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1, 2.2, 1.3]})
    draw_image(ax_img, image)
    ax_img.set_axis_on()  # its rows are the time steps
    ax_img.set(title=f"input{f' ({label})' if label else ''}", ylabel="row (time step)",
               xticks=[])
    diff = (z - r).float().numpy()  # (T, H)
    sns.heatmap(diff, ax=ax_map, cmap="RdBu_r", vmin=-1, vmax=1, xticklabels=False,
                yticklabels=False, cbar_kws={"label": "z − r  (share ↑, fine-tune ↓)"})
    ax_map.set(xlabel="hidden unit", ylabel="row (time step)", title="z − r per unit and row")
    rows = np.arange(diff.shape[0])
    ax_rows.plot(z.float().mean(1).numpy(), rows, color="tab:blue", label="z (shares)")
    ax_rows.plot(r.float().mean(1).numpy(), rows, color="tab:red", label="r (adapts)")
    ax_rows.set(xlim=(0, 1), ylim=(rows[-1] + 0.5, -0.5), xlabel="mean gate",
                title="per row", yticks=[])
    ax_rows.legend(fontsize=7, loc="lower right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_transfer_results(frame: pd.DataFrame, *, title: str = "") -> Figure:
    """Test accuracy per network and transfer strategy: bars (mean ± std over seeds) and one
    dot per seed. ``frame`` has columns ``network``, ``strategy`` and ``accuracy`` (0–1)."""
    data = frame.assign(accuracy=100 * frame["accuracy"])
    fig = Figure(figsize=(6.5, 3.4))
    ax = fig.subplots()
    sns.barplot(data=data, x="network", y="accuracy", hue="strategy", errorbar="sd",
                capsize=0.15, alpha=0.7, ax=ax)
    sns.stripplot(data=data, x="network", y="accuracy", hue="strategy", dodge=True,
                  palette="dark:black", size=3.5, legend=False, ax=ax)
    low = float(np.floor(data["accuracy"].min() / 10) * 10)
    ax.set(ylim=(max(0.0, low - 10), 100), xlabel="", ylabel="test accuracy (%)",
           title=title or f"Test accuracy (mean ± std over {data['seed'].nunique()} seeds; "
                          "dots: seeds)")
    ax.legend(title="", fontsize=8, loc="upper right", ncol=3)
    fig.tight_layout()
    return fig


def dashboard_view(result: RunResult) -> Figure:
    """Dashboard view: the gate plane of the last seed's model on its test split (or a note
    when the model has no gates, as the recurrent baselines)."""
    if result.model is None or result.task is None:
        raise ValueError("the run has no trained model (was it stopped before one seed ended?)")
    evaluation = evaluate(result.model, result.task.test)
    if "z" not in evaluation.decisions:
        fig = Figure(figsize=(6, 1.2))
        fig.text(0.5, 0.5, f"No gates in this model ({type(result.model).__name__}): "
                           f"test accuracy {evaluation.accuracy:.1%}", ha="center", va="center")
        return fig
    model = result.model
    return plot_gate_plane(
        channel_means(evaluation.decisions["z"]), channel_means(evaluation.decisions["r"]),
        model.layer_names, model.layer_channels, z_init=result.params.get("z_init"),
        title=f"{result.method}: per-channel mean gates on the test split (last seed, "
              f"accuracy {evaluation.accuracy:.1%})")
