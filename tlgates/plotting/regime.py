"""The regime map: where, by target and labels per class, each method gains over a baseline.

Both views take the table of :func:`tlgates.stats.paired_gains` (one row per target, labels per
class and method: the gain in points, its interval and its verdict) and return a matplotlib
``Figure`` made without pyplot.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle


def _targets(gains: pd.DataFrame, targets: Sequence[str] | None) -> list[str]:
    return list(targets) if targets is not None else list(dict.fromkeys(gains["target"]))


def plot_regime_map(gains: pd.DataFrame, *, methods: Sequence[str] | None = None,
                    targets: Sequence[str] | None = None, baseline: str = "fine-tuning",
                    limit: float = 20.0, title: str = "") -> Figure:
    """A heatmap per target: methods (rows) × labels per class (columns), coloured by the
    mean gain over the baseline, paired by seed (blue better, red worse, clipped at
    ±``limit`` points). Each cell prints its gain; a black frame marks the cells whose
    interval excludes 0, and only those support a claim."""
    methods = list(methods) if methods is not None else sorted(set(gains["method"]))
    targets = _targets(gains, targets)
    fig = Figure(figsize=(2.3 * len(targets) + 1.2, 0.34 * len(methods) + 1.6))
    axes = fig.subplots(1, len(targets), sharey=True, squeeze=False)[0]
    for i, (ax, target) in enumerate(zip(axes, targets)):
        table = gains[gains["target"] == target]
        values = table.pivot(index="method", columns="shots", values="gain").reindex(methods)
        verdicts = table.pivot(index="method", columns="shots", values="verdict").reindex(
            methods)
        sns.heatmap(values, ax=ax, cmap="RdBu", vmin=-limit, vmax=limit, center=0,
                    annot=True, fmt="+.1f", annot_kws={"fontsize": 7}, linewidths=0.5,
                    linecolor="white", cbar=i == len(targets) - 1,
                    cbar_kws={"label": f"gain over {baseline} (points)"})
        for r, c in zip(*np.nonzero((verdicts != "noise").to_numpy())):
            ax.add_patch(Rectangle((c, r), 1, 1, fill=False, edgecolor="black", lw=1.5))
        ax.set(title=target, xlabel="labels per class", ylabel="" if i else "method")
        ax.tick_params(axis="y", rotation=0)
    fig.suptitle(title or f"Gain over {baseline}, paired by seed (framed: the 95 % interval "
                 "excludes 0)", fontsize=10)
    fig.tight_layout()
    return fig


def plot_gain_lines(gains: pd.DataFrame, methods: Sequence[str], *,
                    targets: Sequence[str] | None = None, baseline: str = "fine-tuning",
                    title: str = "") -> Figure:
    """A panel per target: each method's gain over the baseline against labels per class
    (log axis), with its 95 % interval as a band; the dashed line is the baseline."""
    targets = _targets(gains, targets)
    fig = Figure(figsize=(3.2 * len(targets), 3.3))
    axes = fig.subplots(1, len(targets), sharey=True, squeeze=False)[0]
    colours = dict(zip(methods, sns.color_palette("tab10", len(methods))))
    for i, (ax, target) in enumerate(zip(axes, targets)):
        for method in methods:
            rows = gains[(gains["target"] == target) & (gains["method"] == method)]
            rows = rows.sort_values("shots")
            ax.plot(rows["shots"], rows["gain"], marker="o", ms=3, color=colours[method],
                    label=method)
            ax.fill_between(rows["shots"], rows["low"], rows["high"], alpha=0.15,
                            color=colours[method], lw=0)
        ax.axhline(0, color="0.3", lw=0.8, ls="--")
        shots = sorted(set(gains["shots"]))
        ax.set_xscale("log")
        ax.set_xticks(shots, [str(k) for k in shots])
        ax.minorticks_off()
        ax.set(title=target, xlabel="labels per class",
               ylabel=f"gain over {baseline} (points)" if i == 0 else "")
    axes[-1].legend(fontsize=7, loc="best")
    fig.suptitle(title or f"Gain over {baseline} with its 95 % interval, paired by seed",
                 fontsize=10)
    fig.tight_layout()
    return fig
